/* The guest finds the RSDP through the zero page, checks every checksum, walks the XSDT and
   reports what the MADT and DSDT describe. */
#include "guest.h"

static uint8_t sum(const uint8_t *p, uint32_t n) { uint8_t s = 0; while (n--) s += *p++; return s; }
static uint32_t u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

void guest_main(const uint8_t *zp)
{
    const uint8_t *rsdp = (const uint8_t *)zp_u64(zp, 0x70);
    CHECK(rsdp != 0, "no acpi_rsdp_addr in the zero page");
    CHECK(memcmp(rsdp, "RSD PTR ", 8) == 0, "RSDP signature");
    CHECK(sum(rsdp, 20) == 0 && sum(rsdp, 36) == 0, "RSDP checksum");
    const uint8_t *xsdt = (const uint8_t *)u64(rsdp + 24);
    CHECK(memcmp(xsdt, "XSDT", 4) == 0 && sum(xsdt, u32(xsdt + 4)) == 0, "XSDT");
    uint32_t n = (u32(xsdt + 4) - 36) / 8;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *t = (const uint8_t *)u64(xsdt + 36 + 8 * i);
        CHECK(sum(t, u32(t + 4)) == 0, "table checksum");
        if (memcmp(t, "APIC", 4) == 0) {
            uint32_t lapics = 0;
            for (uint32_t off = 44; off + 2 <= u32(t + 4) && t[off + 1] >= 2; off += t[off + 1])
                if (t[off] == 0) lapics++;
            puts("MADT LAPICS "); put_dec(lapics); puts("\n");
        } else if (memcmp(t, "FACP", 4) == 0) {
            const uint8_t *dsdt = (const uint8_t *)u64(t + 140);
            CHECK(memcmp(dsdt, "DSDT", 4) == 0 && sum(dsdt, u32(dsdt + 4)) == 0, "DSDT");
            uint32_t devs = 0;
            for (uint32_t off = 36; off + 8 <= u32(dsdt + 4); off++)
                if (memcmp(dsdt + off, "LNRO0005", 8) == 0) devs++;
            puts("DSDT VIRTIO "); put_dec(devs); puts("\n");
            puts("FADT FLAGS "); put_hex(u32(t + 112)); puts("\n");
        }
    }
    pass();
}
