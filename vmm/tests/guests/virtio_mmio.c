/* virtio-mmio discovery through the shared driver header (virtio.h): see virtio_guests.rs. */
/* virtio-mmio discovery: every window the command line declares, and the windows in order,
   answer with the virtio magic, version 2 and a device id; the window after the last device
   does not. The host compares the printed ids, addresses and IRQs with the spec. */
#include "virtio.h"

static uint64_t parse_hex(const char **p)
{
    uint64_t v = 0;
    const char *s = *p;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s += 2;
    for (;; s++) {
        char c = *s;
        if (c >= '0' && c <= '9') v = v * 16 + (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v = v * 16 + (uint64_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v = v * 16 + (uint64_t)(c - 'A' + 10);
        else break;
    }
    *p = s;
    return v;
}

static uint64_t parse_dec(const char **p)
{
    uint64_t v = 0;
    while (**p >= '0' && **p <= '9') { v = v * 10 + (uint64_t)(**p - '0'); (*p)++; }
    return v;
}

void guest_main(const uint8_t *zp)
{
    /* virtio_mmio.device=4K@0xADDR:IRQ entries of the command line. */
    const char *cmd = (const char *)(uint64_t)zp_u32(zp, 0x228);
    uint32_t len = zp_u32(zp, 0x238);
    static const char key[] = "virtio_mmio.device=4K@";
    unsigned declared = 0;
    for (uint32_t i = 0; i + sizeof(key) - 1 < len; i++) {
        if (memcmp(cmd + i, key, sizeof(key) - 1) != 0) continue;
        const char *p = cmd + i + sizeof(key) - 1;
        uint64_t addr = parse_hex(&p);
        CHECK(*p == ':', "cmdline entry without :IRQ");
        p++;
        uint64_t irq = parse_dec(&p);
        CHECK(vr(addr, VM_MAGIC) == VIRTIO_MAGIC, "declared window without virtio magic");
        puts("CMDLINE-DEV "); put_hex(addr); puts(" "); put_dec(irq); puts(" ");
        put_dec(vr(addr, VM_DEVICE_ID)); puts("\n");
        declared++;
    }
    unsigned n = 0;
    for (; n < 19; n++) {
        uint64_t b = virtio_window(n);
        uint32_t magic = vr(b, VM_MAGIC);
        if (magic != VIRTIO_MAGIC) break;
        CHECK(vr(b, VM_VERSION) == 2, "version 2");
        uint32_t id = vr(b, VM_DEVICE_ID);
        CHECK(id != 0, "device id 0");
        uint64_t f = virtio_device_features(b);
        CHECK(f & F_VERSION_1, "VERSION_1");
        vw(b, VM_QUEUE_SEL, 0);
        uint32_t qmax = vr(b, VM_QUEUE_NUM_MAX);
        CHECK(qmax > 0, "queue 0 exists");
        puts("VIRTIO "); put_dec(n); puts(" "); put_hex(b); puts(" "); put_dec(id);
        puts(" "); put_hex(vr(b, VM_VENDOR_ID)); puts(" "); put_dec(qmax); puts("\n");
    }
    CHECK(n == declared, "windows found != command line entries");
    puts("VIRTIO COUNT "); put_dec(n); puts("\n");
    pass();
}
