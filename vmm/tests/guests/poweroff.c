/* ACPI power-off: SLP_TYP 5 | SLP_EN to the FADT's sleep control register (port 0x600). */
#include "guest.h"

void guest_main(const uint8_t *zp)
{
    (void)zp;
    puts("POWERING OFF\n");
    outb(0x600, (5 << 2) | (1 << 5));
    puts("STILL RUNNING AFTER POWEROFF\n");
    for (;;) __asm__ volatile("pause");
}
