/* Two vCPUs: the BSP starts the AP with INIT + SIPI into a real-mode trampoline at 0x10000 that
   switches straight to long mode with the VMM's boot GDT (0x500) and page tables (0x9000). */
#include "guest.h"

#define TRAMPOLINE 0x10000
#define LAPIC 0xfee00000ULL

volatile uint32_t ap_alive;
static uint8_t ap_stack[8192] __attribute__((aligned(16), used));

__attribute__((used)) void ap_main(void)
{
    uint32_t a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    ap_alive = (b >> 24) + 1;
    for (;;) __asm__ volatile("cli; hlt");
}

extern const uint8_t tramp_start[], tramp_end[];
__asm__(
    ".section .rodata\n"
    ".code16\n"
    ".global tramp_start, tramp_end\n"
    "tramp_start:\n"
    "    cli\n"
    "    mov %cs, %ax\n"
    "    mov %ax, %ds\n"
    "    lgdtl (gdt_ptr - tramp_start)\n"
    "    mov %cr4, %eax\n"
    "    or $0x20, %eax\n"                 /* PAE */
    "    mov %eax, %cr4\n"
    "    mov $0x9000, %eax\n"
    "    mov %eax, %cr3\n"
    "    mov $0xc0000080, %ecx\n"          /* EFER.LME */
    "    rdmsr\n"
    "    or $0x100, %eax\n"
    "    wrmsr\n"
    "    mov %cr0, %eax\n"
    "    or $0x80000001, %eax\n"           /* PG | PE */
    "    mov %eax, %cr0\n"
    "    ljmpl $0x08, $(0x10000 + tramp_long - tramp_start)\n"
    ".code64\n"
    "tramp_long:\n"
    "    mov $0x10, %ax\n"
    "    mov %ax, %ds\n"
    "    mov %ax, %es\n"
    "    mov %ax, %ss\n"
    "    movabs $ap_stack + 8192, %rsp\n"
    "    movabs $ap_main, %rax\n"
    "    jmp *%rax\n"
    ".balign 8\n"
    "gdt_ptr:\n"
    "    .word 31\n"
    "    .long 0x500\n"
    "tramp_end:\n"
    ".text\n");

static void icr(uint32_t dest, uint32_t low)
{
    mmio_write32(LAPIC + 0x310, dest << 24);
    mmio_write32(LAPIC + 0x300, low);
    for (int i = 0; i < 100000 && (mmio_read32(LAPIC + 0x300) & (1 << 12)); i++) cpu_relax();
}

void guest_main(const uint8_t *zp)
{
    (void)zp;
    uint32_t a, b, c, d;
    cpuid(1, 0, &a, &b, &c, &d);
    puts("BSP APIC "); put_dec(b >> 24); puts(" LOGICAL "); put_dec((b >> 16) & 0xff); puts("\n");
    CHECK((b >> 24) == 0, "BSP APIC ID is not 0");
    memcpy((void *)TRAMPOLINE, tramp_start, tramp_end - tramp_start);
    icr(1, 0x4500);                             /* INIT */
    icr(1, 0x4600 | (TRAMPOLINE >> 12));        /* SIPI */
    for (uint64_t i = 0; i < 200000000ULL && !ap_alive; i++) cpu_relax();
    if (!ap_alive) {
        icr(1, 0x4600 | (TRAMPOLINE >> 12));    /* second SIPI, as the MP spec says */
        for (uint64_t i = 0; i < 200000000ULL && !ap_alive; i++) cpu_relax();
    }
    CHECK(ap_alive, "the AP never ran");
    puts("AP APIC "); put_dec(ap_alive - 1); puts(" ALIVE\n");
    CHECK(ap_alive == 2, "the AP's APIC ID is not 1");
    pass();
}
