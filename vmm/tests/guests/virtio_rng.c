/* virtio-rng: two buffers filled by the device, printed for the host to check. */
#include "virtio.h"

static struct vq q;
static uint8_t a[32], b[32];

static void print(const char *tag, const uint8_t *p, unsigned n)
{
    puts(tag);
    for (unsigned i = 0; i < n; i++) put_hex_byte(p[i]);
    puts("\n");
}

void guest_main(const uint8_t *zp)
{
    (void)zp;
    virtio_setup(virtio_window(0), 4, 0, &q, 1);
    struct vbuf ba = { a, sizeof(a), 1 }, bb = { b, sizeof(b), 1 };
    uint16_t ha = vq_submit(&q, &ba, 1);
    uint16_t hb = vq_submit(&q, &bb, 1);
    vq_kick(&q);
    uint32_t id, len;
    vq_wait(&q, &id, &len, "rng: first buffer not returned");
    CHECK(id == ha && len == sizeof(a), "rng: first used element");
    vq_wait(&q, &id, &len, "rng: second buffer not returned");
    CHECK(id == hb && len == sizeof(b), "rng: second used element");
    unsigned zero = 0;
    for (unsigned i = 0; i < sizeof(a); i++) zero += (a[i] == 0);
    CHECK(zero < 8, "rng: mostly zero bytes");
    CHECK(memcmp(a, b, sizeof(a)) != 0, "rng: two buffers identical");
    print("RNG A ", a, sizeof(a));
    print("RNG B ", b, sizeof(b));
    pass();
}
