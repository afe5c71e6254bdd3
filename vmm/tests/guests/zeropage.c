/* The zero page and e820 map as the guest sees them; the host compares them with what it
   configured. */
#include "guest.h"

void guest_main(const uint8_t *zp)
{
    CHECK(zp == (const uint8_t *)0x7000, "RSI is not the zero page 0x7000");
    CHECK(zp_u16(zp, 0x1fe) == 0xaa55, "boot_flag");
    CHECK(zp_u32(zp, 0x202) == 0x53726448, "header magic HdrS");
    CHECK(zp_u8(zp, 0x210) == 0xff, "type_of_loader");
    uint8_t n = zp_u8(zp, 0x1e8);
    CHECK(n > 0 && n <= 128, "e820_entries");
    puts("E820 COUNT "); put_dec(n); puts("\n");
    for (unsigned i = 0; i < n; i++) {
        unsigned off = 0x2d0 + i * 20;
        puts("E820 "); put_hex(zp_u64(zp, off));
        puts(" "); put_hex(zp_u64(zp, off + 8));
        puts(" "); put_dec(zp_u32(zp, off + 16)); puts("\n");
    }
    const char *cmdline = (const char *)(uint64_t)zp_u32(zp, 0x228);
    uint32_t len = zp_u32(zp, 0x238);
    puts("CMDLINE ");
    for (uint32_t i = 0; i < len && cmdline[i]; i++) serial_putc(cmdline[i]);
    puts("\n");
    CHECK(cmdline[len] == 0, "command line not NUL-terminated at cmdline_size");
    pass();
}
