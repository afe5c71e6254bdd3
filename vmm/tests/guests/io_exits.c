/* Port I/O and MMIO exits: a real device (the 16550's scratch register) round-trips, and
   accesses that hit no device read as all-ones and do not stop the VM. */
#include "guest.h"

void guest_main(const uint8_t *zp)
{
    (void)zp;
    /* PIO to a device: COM1 scratch register (offset 7). */
    outb(COM1 + 7, 0x5a);
    CHECK(inb(COM1 + 7) == 0x5a, "serial scratch register did not read back");
    outb(COM1 + 7, 0xa5);
    CHECK(inb(COM1 + 7) == 0xa5, "serial scratch register did not read back (2)");

    /* PIO to nothing. */
    CHECK(inb(0x1234) == 0xff, "unknown port inb");
    CHECK(inw(0x1234) == 0xffff, "unknown port inw");
    CHECK(inl(0x1234) == 0xffffffff, "unknown port inl");
    outl(0x1234, 0xdeadbeef);

    /* MMIO to nothing: the virtio window of a VM without devices, and the top of the hole. */
    CHECK(mmio_read32(0xd0000000) == 0xffffffff, "unknown MMIO read32");
    CHECK(mmio_read8(0xd0000ff3) == 0xff, "unknown MMIO read8");
    CHECK(mmio_read16(0xd0000ffe) == 0xffff, "unknown MMIO read16");
    CHECK(mmio_read64(0xd0001000) == 0xffffffffffffffffULL, "unknown MMIO read64");
    mmio_write32(0xd0000070, 0x12345678);
    mmio_write64(0xe0000000, 1);
    CHECK(mmio_read32(0xd0000070) == 0xffffffff, "unknown MMIO kept a write");
    puts("IO OK\n");
    pass();
}
