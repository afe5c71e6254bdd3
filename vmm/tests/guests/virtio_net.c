/* virtio-net: the guest sends a broadcast frame (ethertype 0x88b5, "bulkhead guest frame")
   through the tap, then waits for the host's frame ("bulkhead host frame") among whatever else
   the host stack sends. */
#include "virtio.h"

#define F_MAC (1ull << 5)
#define HDR 12
#define RXN 8
#define RXLEN 2048

static struct vq qs[2];
static uint8_t rxbuf[RXN][RXLEN];
static uint16_t rxhead[RXN];
static uint8_t tx[HDR + 64];

static void rx_give(unsigned i)
{
    struct vbuf b = { rxbuf[i], RXLEN, 1 };
    rxhead[i] = vq_submit(&qs[0], &b, 1);
}

void guest_main(const uint8_t *zp)
{
    (void)zp;
    uint64_t base = virtio_window(0);
    uint64_t f = virtio_setup(base, 1, F_MAC, qs, 2);
    CHECK(f & F_MAC, "net: no MAC feature");
    uint8_t mac[6];
    for (unsigned i = 0; i < 6; i++) mac[i] = mmio_read8(base + VM_CONFIG + i);
    puts("NET MAC ");
    for (unsigned i = 0; i < 6; i++) { put_hex_byte(mac[i]); if (i < 5) serial_putc(':'); }
    puts("\n");
    for (unsigned i = 0; i < RXN; i++) rx_give(i);
    vq_kick(&qs[0]);

    static const char gmsg[] = "bulkhead guest frame";
    memset(tx, 0, sizeof(tx));
    uint8_t *e = tx + HDR;
    memset(e, 0xff, 6);
    memcpy(e + 6, mac, 6);
    e[12] = 0x88; e[13] = 0xb5;
    memcpy(e + 14, gmsg, sizeof(gmsg) - 1);
    uint32_t flen = 14 + sizeof(gmsg) - 1;
    struct vbuf t = { tx, HDR + flen, 0 };
    vq_submit(&qs[1], &t, 1);
    vq_kick(&qs[1]);
    vq_wait(&qs[1], 0, 0, "net: tx not completed");
    puts("NET TX OK\n");

    static const char hmsg[] = "bulkhead host frame";
    for (unsigned n = 0; n < 256; n++) {
        uint32_t id, len;
        vq_wait(&qs[0], &id, &len, "net: no frame from the host");
        unsigned i = 0;
        while (i < RXN && rxhead[i] != id) i++;
        CHECK(i < RXN, "net: unknown rx buffer");
        CHECK(len >= HDR && len <= RXLEN, "net: rx length");
        const uint8_t *p = rxbuf[i];
        uint16_t nbuf = (uint16_t)(p[10] | (p[11] << 8));
        CHECK(nbuf == 1, "net: num_buffers");
        const uint8_t *fr = p + HDR;
        int ours = len >= HDR + 14 + sizeof(hmsg) - 1 && fr[12] == 0x88 && fr[13] == 0xb5 &&
                   memcmp(fr, mac, 6) == 0 && memcmp(fr + 14, hmsg, sizeof(hmsg) - 1) == 0;
        rx_give(i);
        vq_kick(&qs[0]);
        if (ours) {
            puts("NET RX OK\n");
            pass();
        }
    }
    fail("net: the host's frame never came");
}
