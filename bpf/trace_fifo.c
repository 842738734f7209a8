// SPDX-License-Identifier: GPL-2.0
/*
 * netpath trace, UDP's per-socket FIFO (UDP_BY_RING): where every datagram
 * needs its own state from its enqueue (trace_sock.c pushes) to its read
 * (trace_read.c pops at sock:sock_recv_length). Placed after trace_common.c
 * and before those two.
 */
#include "netpath.h"

/* SOCKQ_WATCH: UDP's socket_queue is trace_watch.c's, with no FIFO */
#if defined(USE_SOCKQ) && defined(HAS_SOCK_SOCK_RECV_LENGTH) && !SOCKQ_WATCH
#define UDP_BY_RING 1
#else
#define UDP_BY_RING 0
#endif

/*
 * UDP reads copy linear skbs without skb:skb_copy_datagram_iovec and may
 * free them later on another CPU, so a UDP read is sock:sock_recv_length
 * popping the oldest skb this socket had enqueued (datagrams are FIFO):
 * per socket a ring of (sequence tag, enqueue time[, iface][, skb and its
 * checkpoints for --slower]). t_enq == 0: a datagram the trace does not
 * follow.
 *
 * Exact under load (two CPUs enqueuing while a reader on a third drains,
 * often more than RING datagrams behind): a slot's tag is the one arbiter
 * of who accounts for the datagram in it, changed only by compare-and-swap:
 *  - the writer claims the slot (BUSY) before it touches the payload and
 *    publishes it (WRITTEN) last; the reader reads a WRITTEN payload and
 *    then claims it (READ), so a payload it counts was not rewritten;
 *  - a writer that takes the slot of an unread followed datagram adds one
 *    to `lost` before the tag changes; the read that then finds its slot
 *    taken takes one back and is counted in socket_queue, untimed
 *    (ring_overrun says how many);
 *  - a read that comes before its writer has published the slot (the
 *    reader can dequeue a datagram before sk_data_ready's program has run)
 *    marks it EARLY, and the writer then counts that read itself;
 *  - a socket's FIFO is created with BPF_NOEXIST, so two CPUs creating it at
 *    once both use the one that won (an update would replace the first
 *    CPU's, with its datagram in it);
 *  - a socket none of whose datagrams passed the filters has a FIFO too
 *    (its slots keep reads in step) but its reads are not the trace's: a
 *    read is accounted (unseen_read) only on a socket with a followed one.
 */
/* RING (slots per socket, a power of two) comes from netpath as a -D number */

/* a slot's tag: (sequence number + 1) << 2 | state; 0: never written */
#define TAG_WRITTEN	0	/* published, unread */
#define TAG_BUSY	1	/* its writer is filling it */
#define TAG_EARLY	2	/* read before published: its writer counts the read */
#define TAG_READ	3
#define NP_TAG(seq, state)	((((seq) + 1) << 2) | (state))
#define NP_TAG_SEQ1(tag)	((tag) >> 2)	/* sequence number + 1 */
#define NP_TAG_STATE(tag)	((tag) & 3)

struct np_ring_slot {
	u64 tag;
	u64 t_enq;
#if NEED_WHERE
	u32 ifindex;
	u32 netns;
#endif
#if SLOWER_NS > 0
	u64 skb;
	u64 t[CP_MAX];	/* every checkpoint, for the slow-packet event */
#endif
};

/*
 * head and lost are the reader's (another CPU, usually), tail the enqueuing
 * softirq's: a cache line each, so neither write takes the other's line away.
 */
struct np_sk_fifo {
	u64 head;
	s64 lost;	/* followed datagrams whose slot a newer one took before their read */
	u64 head_pad[6];
	u64 tail;
	u64 followed;	/* set once a datagram of this socket was followed: its reads are ours to account */
	u64 tail_pad[6];
	struct np_ring_slot slot[RING];
};
#if UDP_BY_RING
BPF_TABLE("lru_hash", u64, struct np_sk_fifo, fifos, 4096);
BPF_PERCPU_ARRAY(fifo_zero, struct np_sk_fifo, 1);	/* never written: a new socket's ring */
#endif

#if UDP_BY_RING
/* an unread followed datagram's slot changes hands: its read takes it back from `lost` */
static __always_inline int np_tag_unread(struct np_ring_slot *slot, u64 tag)
{
	return tag && NP_TAG_STATE(tag) == TAG_WRITTEN && slot->t_enq;
}

/*
 * tag old -> new. An unread followed datagram's slot changing hands puts a
 * token in `lost` before the tag changes, so the read that then finds its
 * slot taken finds the token too (taken back if the swap fails).
 */
static __always_inline int np_slot_swap(struct np_sk_fifo *fifo, struct np_ring_slot *slot, u64 old, u64 new)
{
	int unread = np_tag_unread(slot, old);

	if (unread)
		__sync_fetch_and_add(&fifo->lost, 1);
	if (__sync_val_compare_and_swap(&slot->tag, old, new) == old)
		return 1;
	if (unread)
		__sync_fetch_and_add(&fifo->lost, -1);
	return 0;
}

/* take slot for seq (BUSY); 0: its reader came first (EARLY), or a newer writer */
static __always_inline int np_slot_claim(struct np_sk_fifo *fifo, struct np_ring_slot *slot, u64 seq)
{
	u64 old;

#pragma unroll
	for (int i = 0; i < 3; i++) {
		old = *(volatile u64 *)&slot->tag;
		if (NP_TAG_SEQ1(old) >= seq + 1)
			return 0;
		if (np_slot_swap(fifo, slot, old, NP_TAG(seq, TAG_BUSY)))
			return 1;
	}
	return 0;	/* a reader kept marking it: left to np_fifo_unpublished */
}

/*
 * seq's datagram was not published: its reader came first (count that read
 * here, timed up to now, which bounds its wait; no owner, this is not the
 * reader's context), or a newer datagram took the slot (its read takes it
 * back from `lost`).
 */
static __always_inline void np_fifo_unpublished(struct np_cpu_state *c, struct np_sk_fifo *fifo,
						struct np_ring_slot *slot, u64 seq, u64 *t, u32 ifindex, u32 netns)
{
	if (!t)
		return;	/* not followed: not the trace's to count */
	if (*(volatile u64 *)&slot->tag != NP_TAG(seq, TAG_EARLY)) {
		__sync_fetch_and_add(&fifo->lost, 1);
		return;
	}
	np_seen_always(c, STAGE_SOCKET_QUEUE);
	if (t[CP_ENQ] != NP_UNTIMED)
		np_record(STAGE_SOCKET_QUEUE, NP_PKT_NOW() - t[CP_ENQ], ifindex, netns);
}

/* every datagram goes in its socket's FIFO, followed (t[CP_ENQ] set) or not, so reads stay in step */
static __always_inline void np_fifo_push(struct np_cpu_state *c, u64 skey, u64 key, u64 *t, u32 ifindex,
					 u32 netns)
{
	int zero = 0;
	struct np_sk_fifo *fifo, *init;
	struct np_ring_slot *slot;
	u64 seq;

	fifo = fifos.lookup(&skey);
	if (!fifo) {
		init = fifo_zero.lookup(&zero);
		if (!init)
			return;
		fifos.insert(&skey, init);	/* BPF_NOEXIST: another CPU's, if it was first */
		fifo = fifos.lookup(&skey);
		if (!fifo)
			return;
	}
	if (t && !fifo->followed)
		fifo->followed = 1;
	/* two CPUs may enqueue on one socket at once: each takes its own sequence number */
	seq = __sync_fetch_and_add(&fifo->tail, 1);
	slot = &fifo->slot[seq & (RING - 1)];
	if (!np_slot_claim(fifo, slot, seq)) {
		np_fifo_unpublished(c, fifo, slot, seq, t, ifindex, netns);
		return;
	}
	slot->t_enq = t ? t[CP_ENQ] : 0;
#if NEED_WHERE
	slot->ifindex = ifindex;
	slot->netns = netns;
#endif
#if SLOWER_NS > 0
	slot->skb = key;
	if (t)
		__builtin_memcpy(slot->t, t, sizeof(slot->t));
#endif
	if (__sync_val_compare_and_swap(&slot->tag, NP_TAG(seq, TAG_BUSY), NP_TAG(seq, TAG_WRITTEN)) !=
	    NP_TAG(seq, TAG_BUSY))
		np_fifo_unpublished(c, fifo, slot, seq, t, ifindex, netns);
}
#endif
