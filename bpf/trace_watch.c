// SPDX-License-Identifier: GPL-2.0
/*
 * netpath trace, socket_queue for UDP in sampled builds (SOCKQ_WATCH:
 * sampled, no breakdown, no filter finer than the namespace; the default
 * of netpath trace and of netpath export).
 *
 * The FIFO of trace_sock.c pairs every datagram with its read, so each
 * enqueue and each read pays a hash lookup on the socket and atomics on
 * cache lines the softirq's CPU and the reader's CPU pass back and forth.
 * Here the sampling decision is made once (at netif_receive_skb, or at the
 * wakeup when that stage is not traced): a picked datagram (1 in
 * 2^SAMPLE_SHIFT) is written into its socket's watch slot at its wakeup,
 * when the slot is free; an unpicked one costs the pick. A read looks at
 * one slot (an array element, no hash) and goes on unless the slot watches
 * its socket, so the slots' lines stay shared and clean in both caches.
 *
 * Which read took the watched datagram: __skb_unlink() clears skb->next as
 * the datagram leaves the socket's queue (sk_receive_queue, or UDP's
 * reader_queue, which keeps its links when the kernel splices the receive
 * queue onto it), and every queued skb has a non-NULL next (the following
 * skb or the queue head). The first read of that socket that finds next
 * cleared times it: the one that took it, as reads take datagrams in
 * order. A slot is freed by the read that times it (compare-and-swap: two
 * readers of one socket time it once). The exact count of socket_queue is
 * every UDP read of an IP socket (sock_recv_length), taken at the read.
 *
 * A slot whose datagram will never be read (the socket closed and purged
 * its queue, the datagram was dropped at the read) is taken back after
 * WATCH_TTL_NS, by another socket at once, by its own socket only once the
 * datagram is off the queue: a datagram still queued keeps its slot however
 * long its reader takes, so the slowest waits are timed too.
 */
#include "netpath.h"

#if SOCKQ_WATCH
#define WATCH_SLOTS	256	/* a power of two: sockets hash to a slot */
#define WATCH_TTL_NS	1000000000ULL
#define WATCH_BUSY	1	/* sk while a CPU fills the slot: no kernel address */

struct np_sock_watch {
	u64 sk;		/* 0: free */
	u64 skb;	/* the datagram timed: the queue's tail at its wakeup */
	u64 t_enq;
	u32 ifindex;
	u32 netns;
	u64 pad[4];	/* a cache line each */
};
BPF_ARRAY(sock_watch, struct np_sock_watch, WATCH_SLOTS);
BPF_PERCPU_ARRAY(watch_addr, u64, 1);

/*
 * The slot of a socket: a hash of its address. A tp_btf program's sk is a
 * typed pointer, on which the verifier allows no shift or multiply; the
 * same bits stored to and loaded from a map value are a plain number.
 */
static __always_inline struct np_sock_watch *np_watch_of(void *sk)
{
	int zero = 0;
	u64 *a = watch_addr.lookup(&zero), addr;
	u32 idx;

	if (!a)
		return NULL;
	*(volatile u64 *)a = (u64)sk;
	addr = *(volatile u64 *)a;
	idx = ((u32)(addr >> 6) * 0x9e3779b1u) >> 24;
	return sock_watch.lookup(&idx);
}

/* may a picked datagram of sk take this slot from `old`? */
static __always_inline int np_watch_free(struct np_sock_watch *w, u64 old, u64 sk, u64 now)
{
	if (!old)
		return 1;
	if (old == WATCH_BUSY || now - w->t_enq < WATCH_TTL_NS)
		return 0;
	return old != sk || np_skb_unlinked(w->skb);
}

/* sk_data_ready (trace_sock.c), a picked UDP datagram: watch it, when its slot is free */
static __always_inline void np_watch_arm(void *sk, void *skb, u64 now, u32 ifindex, u32 netns)
{
	u64 skey = (u64)sk, old;
	struct np_sock_watch *w = np_watch_of(sk);

	if (!w)
		return;
	old = *(volatile u64 *)&w->sk;
	if (!np_watch_free(w, old, skey, now))
		return;
	if (__sync_val_compare_and_swap(&w->sk, old, WATCH_BUSY) != old)
		return;	/* another CPU's datagram took it */
	w->skb = (u64)skb;
	w->t_enq = now;
	w->ifindex = ifindex;
	w->netns = netns;
	__sync_val_compare_and_swap(&w->sk, WATCH_BUSY, skey);	/* publish: after the payload */
	/* a reader took it before the publish, and its read went by unseen: no read would time it right */
	if (np_skb_unlinked((u64)skb))
		__sync_val_compare_and_swap(&w->sk, skey, 0);
}

/* a UDP read of an IP socket that passes the namespace filter: socket_queue's exact count */
static __always_inline int np_watch_udp_read(void *sk)
{
	u16 family = 0, proto = 0;

	NP_LOAD(family, sk, OFF_SK_FAMILY);
	if (family != NP_AF_INET && family != NP_AF_INET6)
		return 0;
	NP_LOAD(proto, sk, OFF_SK_PROTOCOL);
	if (proto != NP_IPPROTO_UDP && proto != NP_IPPROTO_UDPLITE)
		return 0;
	return np_sk_in_netns(sk);
}

/* sock_recv_length (trace_read.c): count the read; time it when it took its socket's watched datagram */
static __always_inline void np_watch_read(struct np_cpu_state *c, void *sk)
{
	u64 skey = (u64)sk, t_enq;
	u32 ifindex, netns;
	struct np_sock_watch *w;

	if (!np_watch_udp_read(sk))
		return;
	np_seen_always(c, STAGE_SOCKET_QUEUE);
	w = np_watch_of(sk);
	if (!w || *(volatile u64 *)&w->sk != skey)
		return;
	if (!np_skb_unlinked(w->skb))
		return;	/* still queued: this read took an older datagram */
	t_enq = w->t_enq;
	ifindex = w->ifindex;
	netns = w->netns;
	if (__sync_val_compare_and_swap(&w->sk, skey, 0) != skey)
		return;	/* another reader of the socket timed it */
	np_record(STAGE_SOCKET_QUEUE, NP_PKT_NOW() - t_enq, ifindex, netns);
}
#endif
