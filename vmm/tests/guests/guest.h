/* Shared header for the tiny test guests of bulkhead-vmm (contract A, session 4).
 *
 * A guest is one C file that includes this header and defines
 *     void guest_main(const uint8_t *zero_page);
 * It is compiled freestanding by vmm/tests/common/mod.rs (build_guest) with guest.ld, and
 * entered in 64-bit mode with the boot page tables identity-mapping the first 4 GiB.
 * Its first instruction writes to I/O port 0x80 (the boot timer the benchmark reads).
 * pass() / fail(msg) print BULKHEAD-GUEST PASS / BULKHEAD-GUEST FAIL <msg> on COM1 and reset the
 * VM through the i8042 (0xFE to port 0x64), which ends the bulkhead-vmm process with status 0.
 */
#ifndef BULKHEAD_GUEST_H
#define BULKHEAD_GUEST_H

#include <stdint.h>
#include <stddef.h>

/* ---- port and memory-mapped I/O ---- */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline uint8_t mmio_read8(uint64_t a) { return *(volatile uint8_t *)a; }
static inline uint16_t mmio_read16(uint64_t a) { return *(volatile uint16_t *)a; }
static inline uint32_t mmio_read32(uint64_t a) { return *(volatile uint32_t *)a; }
static inline uint64_t mmio_read64(uint64_t a) { return *(volatile uint64_t *)a; }
static inline void mmio_write8(uint64_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static inline void mmio_write16(uint64_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void mmio_write32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline void mmio_write64(uint64_t a, uint64_t v) { *(volatile uint64_t *)a = v; }

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

static inline void cpuid(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

/* gcc may emit calls to these even when freestanding. */
void *memset(void *d, int c, size_t n) { uint8_t *p = d; while (n--) *p++ = (uint8_t)c; return d; }
void *memcpy(void *d, const void *s, size_t n) { uint8_t *p = d; const uint8_t *q = s; while (n--) *p++ = *q++; return d; }
int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *p = a, *q = b;
    for (; n; n--, p++, q++) if (*p != *q) return *p - *q;
    return 0;
}

/* ---- COM1 (16550 at 0x3f8) ---- */
#define COM1 0x3f8
static inline void serial_putc(char c)
{
    for (int i = 0; i < 100000 && !(inb(COM1 + 5) & 0x20); i++) cpu_relax();
    outb(COM1, (uint8_t)c);
}
static inline void puts(const char *s) { while (*s) serial_putc(*s++); }
static inline void put_hex(uint64_t v)
{
    puts("0x");
    int started = 0;
    for (int i = 60; i >= 0; i -= 4) {
        int d = (v >> i) & 0xf;
        if (d || started || i == 0) { serial_putc("0123456789abcdef"[d]); started = 1; }
    }
}
static inline void put_dec(uint64_t v)
{
    char buf[21]; int n = 0;
    do { buf[n++] = '0' + v % 10; v /= 10; } while (v);
    while (n) serial_putc(buf[--n]);
}

/* ---- ending the VM ---- */
static inline __attribute__((noreturn)) void reset(void)
{
    outb(0x64, 0xfe);
    for (;;) __asm__ volatile("cli; hlt");
}
static inline __attribute__((noreturn)) void pass(void) { puts("BULKHEAD-GUEST PASS\n"); reset(); }
static inline __attribute__((noreturn)) void fail(const char *msg)
{
    puts("BULKHEAD-GUEST FAIL "); puts(msg); puts("\n"); reset();
}
#define CHECK(cond, msg) do { if (!(cond)) fail(msg); } while (0)

/* ---- zero page (struct boot_params) accessors ---- */
static inline uint8_t zp_u8(const uint8_t *zp, unsigned off) { return zp[off]; }
static inline uint16_t zp_u16(const uint8_t *zp, unsigned off) { uint16_t v; memcpy(&v, zp + off, 2); return v; }
static inline uint32_t zp_u32(const uint8_t *zp, unsigned off) { uint32_t v; memcpy(&v, zp + off, 4); return v; }
static inline uint64_t zp_u64(const uint8_t *zp, unsigned off) { uint64_t v; memcpy(&v, zp + off, 8); return v; }

/* ---- entry ---- */
void guest_main(const uint8_t *zero_page);

static uint8_t guest_stack[16384] __attribute__((aligned(16), used));

__asm__(
    ".section .text.start, \"ax\"\n"
    ".global _start\n"
    "_start:\n"
    "    outb %al, $0x80\n"              /* first instruction: the boot timer */
    "    lea guest_stack+16384(%rip), %rsp\n"
    "    mov %rsi, %rdi\n"
    "    call guest_main\n"
    "    lea returned_msg(%rip), %rdi\n"
    "    call guest_returned\n"
    "1:  cli\n"
    "    hlt\n"
    "    jmp 1b\n"
    ".section .rodata\n"
    "returned_msg: .asciz \"guest_main returned\"\n"
    ".text\n");

__attribute__((used, noreturn)) void guest_returned(const char *msg) { fail(msg); }

#endif
