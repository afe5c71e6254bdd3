/* The VM lifecycle test's guest: says it runs on the serial console (COM1), then prints a
   numbered tick about every half second of TSC time (500M cycles), forever. Time, not an
   iteration count: under PVM's software KVM the loop may be emulated and very slow. It has no drivers and no agent: it
   shows that a VM domain's VMM runs, that its console reaches the domain log, and that
   freezing the VMM's cgroup stops it. Freestanding, no libc. */

#define COM1 0x3f8

static inline void outb(unsigned short port, unsigned char v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static void puts(const char *s)
{
    while (*s)
        outb(COM1, (unsigned char)*s++);
}

static void put_dec(unsigned long n)
{
    char buf[24];
    int i = 0;
    do {
        buf[i++] = (char)('0' + n % 10);
        n /= 10;
    } while (n && i < (int)sizeof buf);
    while (i)
        outb(COM1, (unsigned char)buf[--i]);
}

static inline unsigned long rdtsc(void)
{
    unsigned int lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((unsigned long)hi << 32) | lo;
}

__attribute__((section(".text.start"), noreturn)) void _start(void)
{
    puts("BULKHEAD-TEST-GUEST running\n");
    for (unsigned long tick = 1;; tick++) {
        unsigned long start = rdtsc();
        while (rdtsc() - start < 500000000UL)
            ;
        puts("BULKHEAD-TEST-GUEST tick ");
        put_dec(tick);
        puts("\n");
    }
}
