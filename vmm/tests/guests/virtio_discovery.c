/* virtio-mmio discovery: every window with the virtio magic, its version and device id, and
   the DSDT's LNRO0005 count. */
#include "guest.h"

static uint8_t sum(const uint8_t *p, uint32_t n) { uint8_t s = 0; while (n--) s += *p++; return s; }
static uint32_t u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

void guest_main(const uint8_t *zp)
{
    for (unsigned i = 0; i < 20; i++) {
        uint64_t base = 0xd0000000ULL + i * 0x1000;
        uint32_t magic = mmio_read32(base);
        if (magic != 0x74726976) continue;           /* "virt" */
        puts("VIRTIO "); put_dec(i);
        puts(" version "); put_dec(mmio_read32(base + 4));
        puts(" device "); put_dec(mmio_read32(base + 8));
        puts(" vendor "); put_hex(mmio_read32(base + 12));
        puts("\n");
    }
    const uint8_t *rsdp = (const uint8_t *)zp_u64(zp, 0x70);
    const uint8_t *xsdt = (const uint8_t *)u64(rsdp + 24);
    const uint8_t *fadt = (const uint8_t *)u64(xsdt + 36);
    CHECK(memcmp(fadt, "FACP", 4) == 0, "first XSDT entry is not the FADT");
    const uint8_t *dsdt = (const uint8_t *)u64(fadt + 140);
    CHECK(sum(dsdt, u32(dsdt + 4)) == 0, "DSDT checksum");
    uint32_t devs = 0;
    for (uint32_t off = 36; off + 8 <= u32(dsdt + 4); off++)
        if (memcmp(dsdt + off, "LNRO0005", 8) == 0) devs++;
    puts("DSDT VIRTIO "); put_dec(devs); puts("\n");
    const char *cmdline = (const char *)(uint64_t)zp_u32(zp, 0x228);
    puts("CMDLINE "); puts(cmdline); puts("\n");
    pass();
}
