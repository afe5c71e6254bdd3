/* Announces itself and then halts with interrupts off: the VM stays up until killed. */
#include "guest.h"

void guest_main(const uint8_t *zp)
{
    (void)zp;
    puts("SPINNING\n");
    for (;;) __asm__ volatile("cli; hlt");
}
