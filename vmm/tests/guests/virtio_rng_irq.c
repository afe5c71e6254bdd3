/* virtio-rng end to end through the monitor's wiring: QueueNotify (a KVM ioeventfd), the
   device worker fills the buffer, and the interrupt arrives through the KVM irqfd on GSI 5,
   the in-kernel IOAPIC (pin 5 -> vector 0x30) and the local APIC into the guest's IDT. */
#include "guest.h"

#define VIRTIO 0xd0000000ULL
#define IOAPIC 0xfec00000ULL
#define LAPIC 0xfee00000ULL
#define VECTOR 0x30

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
static struct desc descs[8] __attribute__((aligned(16)));
static volatile uint16_t avail[2 + 8 + 1] __attribute__((aligned(2)));
static volatile uint32_t used[1 + 2 * 8 + 1] __attribute__((aligned(4)));
static volatile uint8_t buf[64];

static uint64_t idt[256 * 2] __attribute__((aligned(16)));
volatile uint32_t irq_count;

extern void irq_stub(void);
__asm__(
    ".text\n"
    ".global irq_stub\n"
    "irq_stub:\n"
    "    push %rax\n"
    "    lock incl irq_count(%rip)\n"
    "    movl $0, %eax\n"
    "    movl %eax, 0xfee000b0\n"          /* LAPIC EOI */
    "    pop %rax\n"
    "    iretq\n");

static void ioapic_write(uint32_t reg, uint32_t v) { mmio_write32(IOAPIC, reg); mmio_write32(IOAPIC + 0x10, v); }

void guest_main(const uint8_t *zp)
{
    (void)zp;
    /* IDT entry for VECTOR: 64-bit interrupt gate, CS 0x08. */
    uint64_t h = (uint64_t)irq_stub;
    idt[VECTOR * 2] = (h & 0xffff) | (0x08ULL << 16) | (0x8eULL << 40) | (((h >> 16) & 0xffff) << 48);
    idt[VECTOR * 2 + 1] = h >> 32;
    struct __attribute__((packed)) { uint16_t limit; uint64_t base; } idtr = { sizeof(idt) - 1, (uint64_t)idt };
    __asm__ volatile("lidt %0" : : "m"(idtr));
    outb(0x21, 0xff);                                  /* mask both 8259s: the PIT ticks on IRQ0 */
    outb(0xa1, 0xff);
    mmio_write32(LAPIC + 0x350, 1 << 16);              /* mask LINT0 (ExtINT from the 8259) */
    mmio_write32(LAPIC + 0xf0, 0x1ff);                 /* APIC software enable, spurious 0xff */
    mmio_write32(LAPIC + 0x80, 0);                     /* TPR */
    ioapic_write(0x10 + 2 * 5 + 1, 0);                 /* destination APIC 0 */
    ioapic_write(0x10 + 2 * 5, VECTOR);                /* fixed, physical, edge, high, unmasked */

    CHECK(mmio_read32(VIRTIO) == 0x74726976 && mmio_read32(VIRTIO + 8) == 4, "no virtio-rng at window 0");
    mmio_write32(VIRTIO + 0x70, 0);
    mmio_write32(VIRTIO + 0x70, 1 | 2);
    mmio_write32(VIRTIO + 0x14, 1);
    CHECK(mmio_read32(VIRTIO + 0x10) & 1, "VERSION_1 not offered");
    mmio_write32(VIRTIO + 0x24, 1); mmio_write32(VIRTIO + 0x20, 1);
    mmio_write32(VIRTIO + 0x24, 0); mmio_write32(VIRTIO + 0x20, 0);
    mmio_write32(VIRTIO + 0x70, 1 | 2 | 8);
    CHECK(mmio_read32(VIRTIO + 0x70) & 8, "FEATURES_OK refused");
    mmio_write32(VIRTIO + 0x30, 0);
    CHECK(mmio_read32(VIRTIO + 0x34) >= 8, "queue too small");
    mmio_write32(VIRTIO + 0x38, 8);
    mmio_write32(VIRTIO + 0x80, (uint32_t)(uint64_t)descs); mmio_write32(VIRTIO + 0x84, 0);
    mmio_write32(VIRTIO + 0x90, (uint32_t)(uint64_t)avail); mmio_write32(VIRTIO + 0x94, 0);
    mmio_write32(VIRTIO + 0xa0, (uint32_t)(uint64_t)used); mmio_write32(VIRTIO + 0xa4, 0);
    mmio_write32(VIRTIO + 0x44, 1);
    mmio_write32(VIRTIO + 0x70, 1 | 2 | 8 | 4);

    descs[0].addr = (uint64_t)buf; descs[0].len = sizeof(buf); descs[0].flags = 2; descs[0].next = 0;
    avail[2] = 0;
    barrier();
    avail[1] = 1;
    barrier();
    puts("NOTIFY\n");
    __asm__ volatile("sti");
    mmio_write32(VIRTIO + 0x50, 0);                    /* QueueNotify: queue 0 */
    for (uint64_t i = 0; i < 2000000000ULL && !irq_count; i++) __asm__ volatile("hlt");
    __asm__ volatile("cli");
    CHECK((used[0] >> 16) == 1, "used ring index did not advance");
    uint32_t len = used[2];
    puts("USED LEN "); put_dec(len); puts("\n");
    puts("IRQS "); put_dec(irq_count); puts("\n");
    CHECK(irq_count >= 1, "no interrupt arrived");
    CHECK(mmio_read32(VIRTIO + 0x60) & 1, "InterruptStatus used-ring bit not set");
    mmio_write32(VIRTIO + 0x64, 1);
    CHECK((mmio_read32(VIRTIO + 0x60) & 1) == 0, "InterruptACK did not clear the bit");
    int nonzero = 0;
    for (unsigned i = 0; i < sizeof(buf); i++) nonzero |= buf[i];
    CHECK(nonzero, "the buffer is all zero");
    pass();
}
