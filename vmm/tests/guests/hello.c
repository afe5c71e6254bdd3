/* Serial output: prints a line and passes. */
#include "guest.h"

void guest_main(const uint8_t *zp)
{
    (void)zp;
    puts("hello from the guest\n");
    pass();
}
