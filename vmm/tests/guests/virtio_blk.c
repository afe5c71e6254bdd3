/* virtio-blk: window 0 is a read-write disk, window 1 a read-only one; both start with
   sector s filled with the byte (s * 7 + 1). Reads are checked here, writes on the host. */
#include "virtio.h"

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define F_RO (1ull << 5)
#define F_FLUSH (1ull << 9)

struct req_hdr { uint32_t type; uint32_t reserved; uint64_t sector; };

static struct vq q0, q1;
static struct req_hdr hdr;
static uint8_t data[1024] __attribute__((aligned(512)));
static uint8_t status;

static uint8_t pattern(uint64_t sector) { return (uint8_t)(sector * 7 + 1); }

static uint8_t blk_req(struct vq *q, uint32_t type, uint64_t sector, uint32_t len, int device_writes, uint32_t *used_len)
{
    hdr.type = type;
    hdr.reserved = 0;
    hdr.sector = sector;
    status = 0xff;
    struct vbuf b[3];
    unsigned n = 0;
    b[n++] = (struct vbuf){ &hdr, sizeof(hdr), 0 };
    if (len) b[n++] = (struct vbuf){ data, len, device_writes };
    b[n++] = (struct vbuf){ &status, 1, 1 };
    uint16_t head = vq_submit(q, b, n);
    vq_kick(q);
    uint32_t id, ul;
    vq_wait(q, &id, &ul, "blk: request not completed");
    CHECK(id == head, "blk: used id");
    if (used_len) *used_len = ul;
    return *(volatile uint8_t *)&status;
}

void guest_main(const uint8_t *zp)
{
    (void)zp;
    uint64_t rw = virtio_window(0), ro = virtio_window(1);
    uint64_t f = virtio_setup(rw, 2, F_FLUSH | F_RO, &q0, 1);
    CHECK(!(f & F_RO), "rw disk offers RO");
    CHECK(f & F_FLUSH, "rw disk offers FLUSH");
    uint64_t cap = virtio_config64(rw, 0);
    puts("BLK CAPACITY "); put_dec(cap); puts("\n");
    CHECK(cap == 64, "capacity");

    uint32_t ul;
    CHECK(blk_req(&q0, T_IN, 1, 512, 1, &ul) == 0, "read sector 1");
    CHECK(ul == 513, "read used length");
    for (unsigned i = 0; i < 512; i++) CHECK(data[i] == pattern(1), "sector 1 content");

    for (unsigned i = 0; i < 1024; i++) data[i] = (uint8_t)(0xc0 + (i % 61));
    CHECK(blk_req(&q0, T_OUT, 2, 1024, 0, 0) == 0, "write sectors 2-3");
    CHECK(blk_req(&q0, T_FLUSH, 0, 0, 0, 0) == 0, "flush");
    memset(data, 0, sizeof(data));
    CHECK(blk_req(&q0, T_IN, 2, 1024, 1, 0) == 0, "read back sectors 2-3");
    for (unsigned i = 0; i < 1024; i++) CHECK(data[i] == (uint8_t)(0xc0 + (i % 61)), "read back content");
    CHECK(blk_req(&q0, T_IN, 63, 1024, 1, 0) == 1, "read past the end not refused");
    memset(data, 0, sizeof(data));
    CHECK(blk_req(&q0, T_GET_ID, 0, 20, 1, 0) == 0, "get id");
    puts("BLK ID ");
    for (unsigned i = 0; i < 20 && data[i]; i++) serial_putc((char)data[i]);
    puts("\n");

    f = virtio_setup(ro, 2, F_FLUSH | F_RO, &q1, 1);
    CHECK(f & F_RO, "read-only disk without VIRTIO_BLK_F_RO");
    for (unsigned i = 0; i < 512; i++) data[i] = 0xee;
    uint8_t s = blk_req(&q1, T_OUT, 0, 512, 0, 0);
    puts("BLK RO WRITE STATUS "); put_dec(s); puts("\n");
    CHECK(s == 1, "write to the read-only disk not refused with IOERR");
    CHECK(blk_req(&q1, T_IN, 0, 512, 1, 0) == 0, "read the read-only disk");
    for (unsigned i = 0; i < 512; i++) CHECK(data[i] == pattern(0), "read-only disk content");
    pass();
}
