/* virtio-vsock: the guest connects to host port 1234 (the host's unix socket <uds>_1234),
   sends "ping from guest\n" and expects "pong from host\n"; then the host connects to guest
   port 5000 through <uds> with "CONNECT 5000\n", sends "hello guest\n" and gets
   "echo: hello guest\n" back. */
#include "virtio.h"

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7

struct vsock_hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

#define RXN 4
#define RXLEN 4096
static struct vq qs[3];
static uint8_t rxbuf[RXN][RXLEN];
static uint16_t rxhead[RXN];
static struct vsock_hdr txhdr;
static uint8_t txdata[256];
static uint64_t cid;
static uint32_t fwd; /* bytes consumed on the current connection */

static void rx_give(unsigned i)
{
    struct vbuf b = { rxbuf[i], RXLEN, 1 };
    rxhead[i] = vq_submit(&qs[0], &b, 1);
}

static void send(uint16_t op, uint32_t sport, uint32_t dport, uint32_t flags, const void *p, uint32_t n)
{
    txhdr = (struct vsock_hdr){ cid, 2, sport, dport, n, 1, op, flags, 65536, fwd };
    memcpy(txdata, p, n);
    struct vbuf b[2] = { { &txhdr, sizeof(txhdr), 0 }, { txdata, n, 0 } };
    vq_submit(&qs[1], b, n ? 2 : 1);
    vq_kick(&qs[1]);
    vq_wait(&qs[1], 0, 0, "vsock: tx not completed");
}

/* Next packet from the device (credit updates skipped); payload copied to out. */
static struct vsock_hdr recv(uint8_t *out, uint32_t *n)
{
    for (;;) {
        uint32_t id, len;
        vq_wait(&qs[0], &id, &len, "vsock: no packet from the device");
        unsigned i = 0;
        while (i < RXN && rxhead[i] != id) i++;
        CHECK(i < RXN, "vsock: unknown rx buffer");
        CHECK(len >= sizeof(struct vsock_hdr), "vsock: short packet");
        struct vsock_hdr h;
        memcpy(&h, rxbuf[i], sizeof(h));
        CHECK(h.len == len - sizeof(h), "vsock: length mismatch");
        CHECK(h.src_cid == 2 && h.dst_cid == cid, "vsock: CIDs");
        if (out && h.len) memcpy(out, rxbuf[i] + sizeof(h), h.len);
        if (n) *n = h.len;
        rx_give(i);
        vq_kick(&qs[0]);
        if (h.op == OP_CREDIT_UPDATE) continue;
        return h;
    }
}

static void expect_data(uint32_t sport, uint32_t dport, const char *want)
{
    uint32_t wl = 0;
    while (want[wl]) wl++;
    static uint8_t got[256];
    uint32_t have = 0;
    while (have < wl) {
        uint8_t buf[RXLEN];
        uint32_t n;
        struct vsock_hdr h = recv(buf, &n);
        CHECK(h.op == OP_RW, "vsock: expected data");
        CHECK(h.src_port == dport && h.dst_port == sport, "vsock: data ports");
        CHECK(have + n <= wl, "vsock: more data than expected");
        memcpy(got + have, buf, n);
        have += n;
        fwd += n;
    }
    CHECK(memcmp(got, want, wl) == 0, "vsock: data content");
}

void guest_main(const uint8_t *zp)
{
    (void)zp;
    uint64_t base = virtio_window(0);
    virtio_setup(base, 19, 0, qs, 3);
    cid = virtio_config64(base, 0);
    puts("VSOCK CID "); put_dec(cid); puts("\n");
    for (unsigned i = 0; i < RXN; i++) rx_give(i);
    vq_kick(&qs[0]);

    /* Guest -> host. */
    fwd = 0;
    send(OP_REQUEST, 4000, 1234, 0, 0, 0);
    struct vsock_hdr h = recv(0, 0);
    CHECK(h.op == OP_RESPONSE, "vsock: connection to host port 1234 refused");
    CHECK(h.src_port == 1234 && h.dst_port == 4000, "vsock: response ports");
    send(OP_RW, 4000, 1234, 0, "ping from guest\n", 16);
    expect_data(4000, 1234, "pong from host\n");
    send(OP_SHUTDOWN, 4000, 1234, 3, 0, 0);
    h = recv(0, 0);
    CHECK(h.op == OP_RST, "vsock: no RST after shutdown");
    puts("VSOCK GUEST-TO-HOST OK\n");

    /* Host -> guest. */
    fwd = 0;
    h = recv(0, 0);
    CHECK(h.op == OP_REQUEST && h.dst_port == 5000, "vsock: expected a connection request to port 5000");
    uint32_t hp = h.src_port;
    send(OP_RESPONSE, 5000, hp, 0, 0, 0);
    expect_data(5000, hp, "hello guest\n");
    send(OP_RW, 5000, hp, 0, "echo: hello guest\n", 18);
    /* The host closes: the device shuts the connection down; the guest resets it. */
    h = recv(0, 0);
    CHECK(h.op == OP_SHUTDOWN && h.flags == 3, "vsock: expected SHUTDOWN after the host closed");
    send(OP_RST, 5000, hp, 0, 0, 0);
    puts("VSOCK HOST-TO-GUEST OK\n");

    /* Host -> guest, half-closed by the host: the guest is told SHUTDOWN SEND only (it reads
       EOF) and can still answer, as an agent sends an exit status after its input ended. */
    fwd = 0;
    h = recv(0, 0);
    CHECK(h.op == OP_REQUEST && h.dst_port == 5001, "vsock: expected a connection request to port 5001");
    hp = h.src_port;
    send(OP_RESPONSE, 5001, hp, 0, 0, 0);
    expect_data(5001, hp, "half\n");
    h = recv(0, 0);
    CHECK(h.op == OP_SHUTDOWN && h.flags == 2, "vsock: expected SHUTDOWN SEND only after the host's half-close");
    send(OP_RW, 5001, hp, 0, "after eof\n", 10);
    send(OP_SHUTDOWN, 5001, hp, 3, 0, 0);
    h = recv(0, 0);
    CHECK(h.op == OP_RST, "vsock: no RST after the guest's shutdown");
    puts("VSOCK HALF-CLOSE OK\n");
    pass();
}
