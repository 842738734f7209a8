// SPDX-License-Identifier: GPL-2.0
/*
 * netpath trace, the skb's enqueue on its socket (sk_data_ready, or kprobe
 * sock_def_readable): the stack_total stage ends here and socket_queue
 * starts (its read side is trace_read.c). A TCP skb keeps its per-skb entry
 * to the read; a UDP datagram moves to its socket's FIFO (trace_fifo.c) or
 * watch slot (trace_watch.c). Placed after those and trace_skb.c, whose
 * per-CPU slot and per-skb map it reads.
 */
#include "netpath.h"

/*
 * RX_TSTAMP: the slot's skb address can be a new skb's after a free nobody
 * saw; the receive timestamp tells them apart (when the slot has one).
 */
static __always_inline int np_cur_is(struct np_cpu_state *c, u64 key)
{
#if RX_TSTAMP
	u64 ts;

	if (!c->cur.t[CP_HANDOFF])
		return (c->cur.flags & CUR_TIMED) != 0;	/* untimed and unstamped: nothing to tell them apart */
	ts = np_skb_tstamp((void *)key);
	return ts && ts + TAI_OFFSET_NS == c->cur.t[CP_HANDOFF];
#else
	return 1;
#endif
}

/* NP_QUEUE_HOPS links at most: is skb queued ahead of tail on the same list? */
#define NP_QUEUE_HOPS	4
static __always_inline int np_queued_before(u64 skb, u64 tail)
{
	u64 next = skb;

#pragma unroll
	for (int i = 0; i < NP_QUEUE_HOPS; i++) {
		if (bpf_probe_read_kernel(&next, sizeof(next), (void *)(next + OFF_SKB_NEXT)) || !next)
			return 0;
		if (next == tail)
			return 1;
	}
	return 0;
}

/* family, the receive queue's tail and (when used) the netns of a socket; 0 when read */
static __always_inline int np_sk_fields(void *sk, u16 *family, void **skb, void **net)
{
#if TP_BTF
	NP_LOAD(*family, sk, OFF_SK_FAMILY);
	NP_LOAD(*skb, sk, OFF_SK_RCVQ_PREV);
#if NEED_WHERE
	NP_LOAD(*net, sk, OFF_SK_NET);
#endif
#elif defined(SK_SPAN_OFF)
	/* family, netns and the receive queue's tail: one read */
	u8 span[SK_SPAN_LEN];

	if (bpf_probe_read_kernel(span, sizeof(span), (char *)sk + SK_SPAN_OFF))
		return -1;
	NP_SPAN_GET(*family, span, SK_SPAN_OFF, OFF_SK_FAMILY);
	NP_SPAN_GET(*skb, span, SK_SPAN_OFF, OFF_SK_RCVQ_PREV);
	NP_SPAN_GET(*net, span, SK_SPAN_OFF, OFF_SK_NET);
#else
	NP_READ(*family, sk, OFF_SK_FAMILY);
	NP_READ(*skb, sk, OFF_SK_RCVQ_PREV);
#endif
	return 0;
}

/* this CPU follows an skb that sk_data_ready has not seen yet */
static __always_inline int np_cur_waiting(struct np_cpu_state *c)
{
	return c && (c->cur.flags & CUR_TRACKED) && !(c->cur.flags & CUR_ENQUEUED);
}

/* the followed skb will not be seen enqueued: stack_total and socket_queue lose it, the health counts say so */
static __always_inline void np_cur_missed(struct np_cpu_state *c)
{
	c->cur.flags |= CUR_ENQUEUED;
	np_hit_c(c, H_ENQ_MISSED);
}

/* a reader took skb before this wakeup could stamp it: missed_enqueue, as when the queue is found empty */
static __always_inline void np_read_first(struct np_cpu_state *c, u64 key)
{
	if (c && c->cur.skb == key)
		c->cur.flags |= CUR_ENQUEUED;
	np_hit_c(c, H_ENQ_MISSED);
}

/*
 * Since 6.18 UDP queues datagrams through per-NUMA producer lists: the CPU
 * that finds the list empty moves every CPU's datagrams to the socket and
 * wakes it once for each (net/ipv4/udp.c __udp_enqueue_schedule_skb, from
 * "udp: remove busylock and add per NUMA queues"), so a wakeup can come
 * on a CPU whose own datagram already had its wakeup. With the queue not
 * empty the tail is counted as the trace did not follow it (unseen_enqueue);
 * with the queue already read, the datagram it was for is missed_enqueue,
 * on a socket the trace follows. Its own CPU never sees a wakeup for it, so
 * every datagram is still counted once.
 */
static __always_inline void np_batched_missed(struct np_cpu_state *c, void *sk)
{
#if UDP_BY_RING
	u64 skey = (u64)sk;
	struct np_sk_fifo *fifo;

	if (!c || !(c->cur.flags & CUR_ENQUEUED))
		return;	/* this CPU's datagram was not the trace's: neither is this one */
	fifo = fifos.lookup(&skey);
	if (fifo && fifo->followed)
		np_hit_c(c, H_ENQ_MISSED);
#endif
}

/* the enqueue time: read once, and only when this enqueue is timed (0: not read yet) */
static __always_inline u64 np_enq_now(struct np_cpu_state *c)
{
#ifdef HAS_NET_NETIF_RECEIVE_SKB
	/* a followed skb that is timed, or none: this enqueue is timed */
	u64 now = !c || (c->cur.flags & CUR_TIMED) || !(c->cur.flags & CUR_TRACKED) ? NP_PKT_NOW() : 0;
#else
	/*
	 * socket_queue without netif_receive_skb (netpath export's default): no
	 * skb is followed up to here, so np_on_data_ready samples each enqueue
	 * itself (np_pick) and an untimed one reads no clock.
	 */
	u64 now = 0;
#endif

#if RX_TSTAMP
	/*
	 * Nothing forgets a freed skb here (no kfree_skb/consume_skb hooks): a
	 * followed skb that was dropped leaves this CPU's slot set. A datagram is
	 * enqueued microseconds after netif_receive_skb, so an older slot is not
	 * followed any more (its address may be another skb's by now). An untimed
	 * slot has no time: its receive timestamp alone tells (np_cur_is).
	 */
	if (np_cur_waiting(c) && (c->cur.flags & CUR_TIMED) && now - c->cur.t[CP_CORE] >= NESTED_NS)
		c->cur.flags = 0;
#endif
	return now;
}

/*
 * Fast path: the skb this CPU's netif_receive_skb is following, no map
 * lookup. The per-CPU slot's checkpoints go to the socket's FIFO (UDP) or to
 * the skb's entry (TCP: read at skb_copy_datagram_iovec).
 */
static __always_inline void np_enq_cur(struct np_cpu_state *c, void *sk, u64 key, u64 now, u32 udp)
{
	struct np_skb_state *st, fresh = {};

	if (c->cur.flags & CUR_ENQUEUED)
		return;	/* already stamped (spurious wakeup) */
	c->cur.flags |= CUR_ENQUEUED;
	c->cur.t[CP_ENQ] = now ? now : NP_UNTIMED;
#ifdef USE_STACK_TOTAL
	np_seen(c, STAGE_STACK_TOTAL);
	if (now && c->cur.t[CP_CORE])
		np_record(STAGE_STACK_TOTAL, now - c->cur.t[CP_CORE], c->cur.ifindex, c->cur.netns);
#endif
#if UDP_BY_RING || SOCKQ_WATCH
	if (udp) {
		/* the FIFO slot or the watch slot carries it from here: the per-skb entry is done */
		if (c->cur.flags & CUR_IN_MAP)
			skbs.delete(&key);
#if UDP_BY_RING
		np_fifo_push(c, (u64)sk, key, c->cur.t, c->cur.ifindex, c->cur.netns);
#else
		if (now)	/* picked at netif_receive_skb: watched to its read */
			np_watch_arm(sk, (void *)key, now, c->cur.ifindex, c->cur.netns);
#endif
		return;
	}
#endif
	/* TCP: stamp the entry (coalescing finds it stamped) */
#if RX_TSTAMP
	st = NULL;	/* nothing keeps an entry up to here: one left by a freed skb is stale */
#else
	st = skbs.lookup(&key);
#endif
	if (st) {
		st->t[CP_ENQ] = now;
		st->udp = udp;
		st->done |= 1 << STAGE_STACK_TOTAL;
		return;
	}
	__builtin_memcpy(fresh.t, c->cur.t, sizeof(fresh.t));
	fresh.ifindex = c->cur.ifindex;
	fresh.netns = c->cur.netns;
	fresh.udp = udp;
	fresh.done = (1 << STAGE_NETIF_RECEIVE_SKB) | (1 << STAGE_STACK_TOTAL);
	if (skbs.update(&key, &fresh))
		np_hit_c(c, H_LOST_SKBS);
}

/* an skb with an entry in the per-skb map (a kprobe build, or not this CPU's): stamp it */
static __always_inline void np_enq_entry(struct np_cpu_state *c, struct np_skb_state *st, void *sk, u64 key,
					u64 now, u32 udp)
{
	u64 was = st->t[CP_ENQ];

	/*
	 * 0 -> now once, by compare-and-swap: a reader on another CPU can
	 * dequeue, copy and free the skb between its enqueue and this program
	 * (6.1 counts a UDP read at that free), and marks it NP_ENQ_EARLY
	 * first. A UDP FIFO (UDP_BY_RING) accounts that read itself.
	 */
	if (!was)
		was = __sync_val_compare_and_swap(&st->t[CP_ENQ], 0, now);
	if (was == NP_ENQ_EARLY && !(UDP_BY_RING && udp)) {
		np_read_first(c, key);
		return;
	}
	if (was && was != NP_ENQ_EARLY)
		return;	/* already stamped (TCP coalescing, spurious wakeup) */
	st->t[CP_ENQ] = now;
	st->udp = udp;
#ifdef USE_STACK_TOTAL
	if (st->t[CP_CORE] && now != NP_UNTIMED) {
		st->done |= 1 << STAGE_STACK_TOTAL;
		np_record(STAGE_STACK_TOTAL, now - st->t[CP_CORE], st->ifindex, st->netns);
	}
#endif
#if UDP_BY_RING
	if (udp) {
		struct np_skb_state copy = *st;

		skbs.delete(&key);
		np_fifo_push(c, (u64)sk, key, copy.t, copy.ifindex, copy.netns);
	}
#endif
}

#ifdef USE_SOCKQ
/* does an skb not seen on the way in pass the filters? Fills its device from skb_iif and the socket's netns */
static __always_inline int np_enq_passes(void *sk, void *skb, void *net, struct np_skb_state *fresh)
{
#if NEED_WHERE
	NP_READ(fresh->ifindex, skb, OFF_SKB_SKB_IIF);
#if !defined(SK_SPAN_OFF) && !TP_BTF
	NP_READ(net, sk, OFF_SK_NET);
#endif
	if (net)
		NP_READ(fresh->netns, net, OFF_NET_NS_INUM);
#ifdef FILTER_NETNS
	if (fresh->netns != FILTER_NETNS || !np_net_passes(net))
		return 0;	/* a socket of another namespace: never ours */
#endif
	if (!np_passes_where(fresh->netns, fresh->ifindex))
		return 0;
#endif
#if NEED_FLOW
	{
		struct np_flow flow = {};

		if (!np_flow_matches(&flow, np_parse_flow(skb, &flow)))
			return 0;
	}
#endif
	return 1;
}

/* an skb not seen on the way in: the socket side still measures it (stack_total cannot) */
static __always_inline int np_enq_unseen(struct np_cpu_state *c, void *sk, void *skb, void *net, u64 key, u64 now,
					 u32 udp)
{
	struct np_skb_state fresh = {};

	if (!np_enq_passes(sk, skb, net, &fresh))
		return 0;
	np_hit_c(c, H_ENQ_UNSEEN);
	fresh.t[CP_ENQ] = now;
	fresh.udp = udp;
#if UDP_BY_RING
	if (udp) {
		np_fifo_push(c, (u64)sk, key, fresh.t, fresh.ifindex, fresh.netns);
		return 1;
	}
#endif
	if (skbs.update(&key, &fresh))
		np_hit_c(c, H_LOST_SKBS);
	return 1;
}
#endif

#if SOCKQ_WATCH
/*
 * A UDP datagram this CPU did not follow (all of them without
 * netif_receive_skb, netpath export's default): the sampling decision, and
 * a picked one watched (trace_watch.c).
 */
static __always_inline void np_watch_enqueue(struct np_cpu_state *c, void *sk, void *skb, void *net)
{
	struct np_skb_state where = {};

#ifdef HAS_NET_NETIF_RECEIVE_SKB
	if (!np_enq_passes(sk, skb, net, &where))
		return;
	np_hit_c(c, H_ENQ_UNSEEN);	/* netif_receive_skb follows every skb: this one it missed */
	if (!np_pick(c))
		return;
#else
	if (!np_pick(c) || !np_enq_passes(sk, skb, net, &where))
		return;
#endif
	np_watch_arm(sk, skb, NP_PKT_NOW(), where.ifindex, where.netns);
}
#endif

#if SOCKQ_AT_WAKEUP
/*
 * UDP's socket_queue alone, sampled, by namespace, on a kernel without
 * sock:sock_recv_length (6.1). No hook there tells a UDP read: a linear
 * datagram is copied without skb:skb_copy_datagram_iovec, and consume_skb
 * is any skb's free. Counting at a stamped datagram's free misses those a
 * running reader takes before their wakeup (found in VM runs: 199 of 200).
 * The kernel wakes a UDP socket once for every datagram it queues (6.1
 * net/ipv4/udp.c __udp_enqueue_schedule_skb: sk_data_ready right after
 * __skb_queue_tail, unless the socket is dead), so the wakeup counts it.
 * A picked one stamps the queue's tail and is timed at its free
 * (np_read_skb), unless a reader took it before the stamp was in the map:
 * its free may have gone by, and the entry would time the next skb at its
 * address. The count's atomic add orders the stamp before that check.
 */
static __always_inline void np_wakeup_count(struct np_cpu_state *c, void *sk, void *tail)
{
	struct np_skb_state fresh = {};
	u64 key = (u64)tail;
	int stamped = 0;

	if (!np_sk_in_netns(sk))
		return;
	if (tail && tail != (void *)((char *)sk + OFF_SK_RCVQ) && np_pick(c)) {
		fresh.t[CP_ENQ] = NP_PKT_NOW();
		fresh.udp = 1;
		stamped = !skbs.update(&key, &fresh);
		if (!stamped)
			np_hit_c(c, H_LOST_SKBS);
	}
	np_seen_always(c, STAGE_SOCKET_QUEUE);
	if (stamped && np_skb_unlinked(key))
		skbs.delete(&key);	/* counted, not timed */
}
#endif

/*
 * The skb this wakeup is for: the queue's tail, or for UDP the one this CPU
 * follows a few links before it (UDP wakes the socket once per datagram,
 * right after this CPU enqueued it; the tail may already be another CPU's
 * newer datagram). 0: ours is not queued, a reader took it before this wakeup.
 */
static __always_inline u64 np_enq_key(struct np_cpu_state *c, void *skb, u32 udp)
{
	u64 key = (u64)skb;

	if (udp && np_cur_waiting(c) && c->cur.skb != key) {
		if (!np_queued_before(c->cur.skb, key)) {
			np_cur_missed(c);
			return 0;
		}
		key = c->cur.skb;
	}
	return key;
}

static __always_inline int np_on_data_ready(struct np_cpu_state *c, void *sk)
{
	void *skb = NULL, *net = NULL;
	u64 key, now;
	struct np_skb_state *st;
	u16 sk_proto = 0, family = 0;
	u32 udp;

	if (np_sk_fields(sk, &family, &skb, &net))
		return 0;
	if (family != NP_AF_INET && family != NP_AF_INET6)
		return 0;	/* unix, netlink, ...: not the IP receive path */
#if SOCKQ_AT_WAKEUP
	NP_LOAD(sk_proto, sk, OFF_SK_PROTOCOL);
	if (sk_proto == NP_IPPROTO_UDP || sk_proto == NP_IPPROTO_UDPLITE) {
		np_wakeup_count(c, sk, skb);
		return 0;
	}
#endif
	now = np_enq_now(c);
	if (!skb || skb == (void *)((char *)sk + OFF_SK_RCVQ)) {
		/* empty queue: a reader on another CPU took the datagram between its enqueue and this wakeup */
		if (np_cur_waiting(c))
			np_cur_missed(c);
		else
			np_batched_missed(c, sk);
		return 0;
	}
	NP_LOAD(sk_proto, sk, OFF_SK_PROTOCOL);
	udp = sk_proto == NP_IPPROTO_UDP || sk_proto == NP_IPPROTO_UDPLITE;
	key = np_enq_key(c, skb, udp);
	if (!key)
		return 0;
#if !KP_CHECKPOINTS
	if (c && c->cur.skb == key && (c->cur.flags & CUR_TRACKED) && np_cur_is(c, key)) {
		np_enq_cur(c, sk, key, now, udp);
		return 0;
	}
#endif
#if SOCKQ_WATCH
	if (udp) {
		np_watch_enqueue(c, sk, skb, net);
		return 0;
	}
#endif
	if (!now)	/* not the skb this CPU follows: sampled on its own */
		now = np_pick(c) ? NP_PKT_NOW() : NP_UNTIMED;
#ifdef HAS_NET_NETIF_RECEIVE_SKB
	st = skbs.lookup(&key);
#else
	st = udp ? NULL : skbs.lookup(&key);	/* nothing before the socket keeps a datagram's entry */
#endif
	if (st) {
		np_enq_entry(c, st, sk, key, now, udp);
		return 0;
	}
#if !UDP_BY_RING
	/* this CPU's datagram had an entry and has none now: its read freed it before this wakeup */
	if (udp && c && c->cur.skb == key &&
	    (c->cur.flags & (CUR_TRACKED | CUR_IN_MAP | CUR_ENQUEUED)) == (CUR_TRACKED | CUR_IN_MAP)) {
		np_read_first(c, key);
		return 0;
	}
#endif
#ifdef USE_SOCKQ
	if (np_enq_unseen(c, sk, skb, net, key, now, udp))
		return 0;
#endif
#if UDP_BY_RING
	if (udp)
		np_fifo_push(c, (u64)sk, key, NULL, 0, 0);	/* not followed: its slot keeps reads in step */
#endif
	return 0;
}

#ifdef USE_KP_DATA_READY
int kp_sock_def_readable(void *ctx)
{
	return np_on_data_ready(np_enter(H_KP_DATA_READY), (void *)KP_ARG0(ctx));
}
#else
NP_BTF_PROBE(sk_data_ready)
{
	return np_on_data_ready(np_enter(H_DATA_READY), (void *)ctx->args[0]);
}
#endif
