/* Reset through the i8042: nothing after the reset command may run. */
#include "guest.h"

void guest_main(const uint8_t *zp)
{
    (void)zp;
    puts("RESETTING\n");
    outb(0x64, 0xfe);
    /* The vCPU must not get here in a way that reaches the console. */
    for (int i = 0; i < 1000; i++) cpu_relax();
    puts("STILL RUNNING AFTER RESET\n");
    for (;;) __asm__ volatile("pause");
}
