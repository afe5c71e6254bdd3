/* A minimal virtio-mmio (version 2) driver for the tiny test guests: discovery, feature
 * negotiation, split virtqueues polled without interrupts. Include after guest.h.
 * Device windows: VIRTIO_MMIO_BASE + i * 0x1000 (contract A), in the spec's order: disks,
 * then vsock, net, rng. */
#ifndef BULKHEAD_VIRTIO_H
#define BULKHEAD_VIRTIO_H

#include "guest.h"

#define VIRTIO_MMIO_BASE 0xd0000000ull
#define VIRTIO_MMIO_SIZE 0x1000ull

#define VM_MAGIC 0x000
#define VM_VERSION 0x004
#define VM_DEVICE_ID 0x008
#define VM_VENDOR_ID 0x00c
#define VM_DEVICE_FEATURES 0x010
#define VM_DEVICE_FEATURES_SEL 0x014
#define VM_DRIVER_FEATURES 0x020
#define VM_DRIVER_FEATURES_SEL 0x024
#define VM_QUEUE_SEL 0x030
#define VM_QUEUE_NUM_MAX 0x034
#define VM_QUEUE_NUM 0x038
#define VM_QUEUE_READY 0x044
#define VM_QUEUE_NOTIFY 0x050
#define VM_INTERRUPT_STATUS 0x060
#define VM_INTERRUPT_ACK 0x064
#define VM_STATUS 0x070
#define VM_QUEUE_DESC_LOW 0x080
#define VM_QUEUE_DESC_HIGH 0x084
#define VM_QUEUE_DRIVER_LOW 0x090
#define VM_QUEUE_DRIVER_HIGH 0x094
#define VM_QUEUE_DEVICE_LOW 0x0a0
#define VM_QUEUE_DEVICE_HIGH 0x0a4
#define VM_CONFIG 0x100

#define VIRTIO_MAGIC 0x74726976u
#define S_ACKNOWLEDGE 1u
#define S_DRIVER 2u
#define S_DRIVER_OK 4u
#define S_FEATURES_OK 8u
#define S_NEEDS_RESET 0x40u
#define F_VERSION_1 (1ull << 32)

#define VQ_SIZE 16
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2

struct vring_desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
struct vring_avail { uint16_t flags; uint16_t idx; uint16_t ring[VQ_SIZE]; uint16_t used_event; };
struct vring_used_elem { uint32_t id; uint32_t len; };
struct vring_used { uint16_t flags; uint16_t idx; struct vring_used_elem ring[VQ_SIZE]; uint16_t avail_event; };

struct vq {
    struct vring_desc desc[VQ_SIZE] __attribute__((aligned(16)));
    struct vring_avail avail __attribute__((aligned(16)));
    struct vring_used used __attribute__((aligned(16)));
    uint64_t base;
    uint32_t index;
    uint16_t next_desc;
    uint16_t used_seen;
};

struct vbuf { const void *addr; uint32_t len; int device_writes; };

static inline uint64_t virtio_window(unsigned i) { return VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE; }
static inline uint32_t vr(uint64_t base, uint32_t off) { return mmio_read32(base + off); }
static inline void vw(uint64_t base, uint32_t off, uint32_t v) { mmio_write32(base + off, v); }

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

/* Generous: ~20-60 s at usual TSC rates; the host test's own timeout is the real limit. */
#define VIRTIO_WAIT_CYCLES (60ull * 1000 * 1000 * 1000)

static inline uint32_t virtio_config32(uint64_t base, uint32_t off) { return vr(base, VM_CONFIG + off); }
static inline uint64_t virtio_config64(uint64_t base, uint32_t off)
{
    return (uint64_t)virtio_config32(base, off) | ((uint64_t)virtio_config32(base, off + 4) << 32);
}

static inline uint64_t virtio_device_features(uint64_t base)
{
    vw(base, VM_DEVICE_FEATURES_SEL, 0);
    uint64_t lo = vr(base, VM_DEVICE_FEATURES);
    vw(base, VM_DEVICE_FEATURES_SEL, 1);
    uint64_t hi = vr(base, VM_DEVICE_FEATURES);
    return (hi << 32) | lo;
}

/* Resets the device, negotiates VERSION_1 plus `want` (of what it offers), enables `nq`
 * queues of VQ_SIZE entries and sets DRIVER_OK. Returns the negotiated features. */
static __attribute__((unused)) uint64_t virtio_setup(uint64_t base, uint32_t device_id, uint64_t want, struct vq *qs, unsigned nq)
{
    CHECK(vr(base, VM_MAGIC) == VIRTIO_MAGIC, "virtio magic");
    CHECK(vr(base, VM_VERSION) == 2, "virtio-mmio version 2");
    CHECK(vr(base, VM_DEVICE_ID) == device_id, "virtio device id");
    vw(base, VM_STATUS, 0);
    CHECK(vr(base, VM_STATUS) == 0, "reset");
    vw(base, VM_STATUS, S_ACKNOWLEDGE);
    vw(base, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER);
    uint64_t dev = virtio_device_features(base);
    CHECK(dev & F_VERSION_1, "VERSION_1 offered");
    uint64_t f = dev & (want | F_VERSION_1);
    vw(base, VM_DRIVER_FEATURES_SEL, 0);
    vw(base, VM_DRIVER_FEATURES, (uint32_t)f);
    vw(base, VM_DRIVER_FEATURES_SEL, 1);
    vw(base, VM_DRIVER_FEATURES, (uint32_t)(f >> 32));
    vw(base, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    CHECK(vr(base, VM_STATUS) & S_FEATURES_OK, "FEATURES_OK accepted");
    for (unsigned q = 0; q < nq; q++) {
        struct vq *v = &qs[q];
        memset(v, 0, sizeof(*v));
        v->base = base;
        v->index = q;
        vw(base, VM_QUEUE_SEL, q);
        CHECK(vr(base, VM_QUEUE_READY) == 0, "queue not ready after reset");
        CHECK(vr(base, VM_QUEUE_NUM_MAX) >= VQ_SIZE, "queue max size");
        vw(base, VM_QUEUE_NUM, VQ_SIZE);
        uint64_t d = (uint64_t)v->desc, a = (uint64_t)&v->avail, u = (uint64_t)&v->used;
        vw(base, VM_QUEUE_DESC_LOW, (uint32_t)d);
        vw(base, VM_QUEUE_DESC_HIGH, (uint32_t)(d >> 32));
        vw(base, VM_QUEUE_DRIVER_LOW, (uint32_t)a);
        vw(base, VM_QUEUE_DRIVER_HIGH, (uint32_t)(a >> 32));
        vw(base, VM_QUEUE_DEVICE_LOW, (uint32_t)u);
        vw(base, VM_QUEUE_DEVICE_HIGH, (uint32_t)(u >> 32));
        vw(base, VM_QUEUE_READY, 1);
        CHECK(vr(base, VM_QUEUE_READY) == 1, "queue ready");
    }
    vw(base, VM_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    uint32_t s = vr(base, VM_STATUS);
    CHECK(s & S_DRIVER_OK, "DRIVER_OK accepted");
    CHECK(!(s & S_NEEDS_RESET), "device needs reset after DRIVER_OK");
    return f;
}

/* Makes a chain of `n` buffers available; returns its head. */
static __attribute__((unused)) uint16_t vq_submit(struct vq *q, const struct vbuf *b, unsigned n)
{
    uint16_t head = q->next_desc;
    for (unsigned i = 0; i < n; i++) {
        uint16_t idx = (uint16_t)((head + i) % VQ_SIZE);
        q->desc[idx].addr = (uint64_t)b[i].addr;
        q->desc[idx].len = b[i].len;
        q->desc[idx].flags = (uint16_t)((b[i].device_writes ? VRING_DESC_F_WRITE : 0) |
                                        (i + 1 < n ? VRING_DESC_F_NEXT : 0));
        q->desc[idx].next = (uint16_t)((idx + 1) % VQ_SIZE);
    }
    q->next_desc = (uint16_t)((head + n) % VQ_SIZE);
    uint16_t ai = *(volatile uint16_t *)&q->avail.idx;
    q->avail.ring[ai % VQ_SIZE] = head;
    barrier();
    *(volatile uint16_t *)&q->avail.idx = (uint16_t)(ai + 1);
    barrier();
    return head;
}

static inline void vq_kick(struct vq *q) { vw(q->base, VM_QUEUE_NOTIFY, q->index); }

/* Next used element, if any. */
static __attribute__((unused)) int vq_poll(struct vq *q, uint32_t *id, uint32_t *len)
{
    uint16_t u = *(volatile uint16_t *)&q->used.idx;
    if (u == q->used_seen)
        return 0;
    barrier();
    struct vring_used_elem e = *(volatile struct vring_used_elem *)&q->used.ring[q->used_seen % VQ_SIZE];
    q->used_seen++;
    if (id) *id = e.id;
    if (len) *len = e.len;
    /* Interrupts stay masked in these guests; acknowledge anyway. */
    vw(q->base, VM_INTERRUPT_ACK, vr(q->base, VM_INTERRUPT_STATUS));
    return 1;
}

static __attribute__((unused)) void vq_wait(struct vq *q, uint32_t *id, uint32_t *len, const char *what)
{
    uint64_t deadline = rdtsc() + VIRTIO_WAIT_CYCLES;
    while (!vq_poll(q, id, len)) {
        if (vr(q->base, VM_STATUS) & S_NEEDS_RESET)
            fail("device reports DEVICE_NEEDS_RESET");
        if (rdtsc() > deadline)
            fail(what);
        cpu_relax();
    }
}

static inline void put_hex_byte(uint8_t b)
{
    serial_putc("0123456789abcdef"[b >> 4]);
    serial_putc("0123456789abcdef"[b & 15]);
}

#endif
