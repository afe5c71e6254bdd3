/* Memory outside guest RAM: reads below the MMIO hole but above RAM (32 MiB VM), in the hole (the boot tables map only the low 4 GiB)
   are MMIO exits that read all-ones; writes there go nowhere. RAM right below
   the end still works. */
#include "guest.h"

void guest_main(const uint8_t *zp)
{
    (void)zp;
    uint64_t ram_end = 32ULL << 20;
    mmio_write32(ram_end - 4, 0x600dcafe);
    CHECK(mmio_read32(ram_end - 4) == 0x600dcafe, "last RAM word");
    uint64_t outside[] = { ram_end, ram_end + 0x1000, 0x40000000ULL, 0xbffff000ULL,
                           0xfed00000ULL, 0xd0008000ULL, 0xfffff000ULL - 0x1000 };
    for (unsigned i = 0; i < sizeof(outside) / sizeof(outside[0]); i++) {
        uint64_t a = outside[i];
        CHECK(mmio_read64(a) == ~0ULL, "read outside RAM is not all-ones");
        mmio_write64(a, 0x1122334455667788ULL);
        CHECK(mmio_read64(a) == ~0ULL, "a write outside RAM stuck");
        puts("OUTSIDE "); put_hex(a); puts(" OK\n");
    }
    pass();
}
