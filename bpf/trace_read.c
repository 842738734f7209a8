// SPDX-License-Identifier: GPL-2.0
/*
 * netpath trace, the application's read (the socket_queue stage): the first
 * skb_copy_datagram_iovec of a TCP skb, or sock_recv_length popping the
 * socket's FIFO for UDP (consume_skb after the copy where that tracepoint is
 * missing), with --per-socket rows (BY_OWNER) and --slower events. Placed
 * after trace_sock.c, which stamps the enqueue this unit reads.
 */
#include "netpath.h"

#define NP_MSG_PEEK	2

static __always_inline void np_emit_slow(void *ctx, struct np_cpu_state *c, void *skb, u64 *t, u32 ifindex,
					 u32 netns, u64 now, u64 queued)
{
#if SLOWER_NS > 0
	u64 total = t[CP_CORE] ? t[CP_ENQ] - t[CP_CORE] : 0;
	struct np_slow_event e = {};
	struct np_flow flow = {};

	if (queued <= SLOWER_NS && total <= SLOWER_NS)
		return;
	e.ts_ns = now;
	if (t[CP_HANDOFF] && t[CP_CORE])
		e.stage_ns[SLOW_NETIF_RECEIVE_SKB] = t[CP_CORE] - t[CP_HANDOFF];
	if (t[CP_CORE] && t[CP_IPRCV])
		e.stage_ns[SLOW_IP_RCV] = t[CP_IPRCV] - t[CP_CORE];
	if (t[CP_IPRCV] && t[CP_LOCAL])
		e.stage_ns[SLOW_IP_LOCAL_DELIVER] = t[CP_LOCAL] - t[CP_IPRCV];
	if (t[CP_LOCAL])
		e.stage_ns[SLOW_TRANSPORT] = t[CP_ENQ] - t[CP_LOCAL];
	e.stage_ns[SLOW_STACK_TOTAL] = total;
	e.stage_ns[SLOW_SOCKET_QUEUE] = queued;
	e.cpu = bpf_get_smp_processor_id();
	e.pid = bpf_get_current_pid_tgid() >> 32;
	e.ifindex = ifindex;
	e.netns = netns;
	if (np_parse_flow(skb, &flow) == 0) {
		e.family = flow.family;
		e.l4proto = flow.l4proto;
		__builtin_memcpy(e.saddr, flow.saddr, sizeof(e.saddr));
		__builtin_memcpy(e.daddr, flow.daddr, sizeof(e.daddr));
		e.sport = flow.sport;
		e.dport = flow.dport;
	}
	bpf_get_current_comm(&e.comm, sizeof(e.comm));
	slow.perf_submit(ctx, &e, sizeof(e));
	np_hit_c(c, H_SLOW);
#endif
}

/* The application reads a followed skb: record socket_queue once. */
#if BY_OWNER
/* socket_queue per reader: the reading process (tgid) and its cgroup v2, known here in its own context */
BPF_PERCPU_HASH(owner_hist, struct np_owner_key, u64, OWNER_ROWS);

static __always_inline void np_record_owner(struct np_cpu_state *c, u64 delta)
{
	struct np_owner_key k = {};
	u64 zero = 0, *v;

	k.cgroup = bpf_get_current_cgroup_id();
	k.tgid = bpf_get_current_pid_tgid() >> 32;
	k.slot = np_slot(delta);
	v = owner_hist.lookup_or_try_init(&k, &zero);
	if (!v) {
		np_hit_c(c, H_LOST_SAMPLES);
		return;
	}
	*v += 1;
	k.slot = MAX_SLOT;
	v = owner_hist.lookup_or_try_init(&k, &zero);
	if (v && *v < delta)
		*v = delta;
	k.slot = SUM_SLOT;
	v = owner_hist.lookup_or_try_init(&k, &zero);
	if (v)
		*v += delta;
}
#endif

/* time a read (counted already, or by np_read) */
static __always_inline void np_read_time(void *ctx, struct np_cpu_state *c, void *skb, u64 *t, u32 ifindex,
					 u32 netns)
{
	u64 now, queued;

	if (t[CP_ENQ] == NP_UNTIMED)
		return;	/* counted, not sampled */
	now = NP_PKT_NOW();
	queued = now - t[CP_ENQ];
	np_record(STAGE_SOCKET_QUEUE, queued, ifindex, netns);
#if BY_OWNER
	np_record_owner(c, queued);
#endif
	np_emit_slow(ctx, c, skb, t, ifindex, netns, now, queued);
}

static __always_inline void np_read(void *ctx, struct np_cpu_state *c, void *skb, u64 *t, u32 ifindex,
				    u32 netns)
{
	np_seen_always(c, STAGE_SOCKET_QUEUE);	/* Stage.seen_always: its count in every build */
	np_read_time(ctx, c, skb, t, ifindex, netns);
}

/*
 * first copy to user space (TCP), or the free after a linear UDP copy; one
 * not stamped yet is marked NP_ENQ_EARLY, so a wakeup racing on another CPU
 * does not stamp what was read and counts it as missed_enqueue instead
 */
static __always_inline void np_read_skb(void *ctx, struct np_cpu_state *c, u64 key, struct np_skb_state *st)
{
	u64 enq = st->t[CP_ENQ];

	if (!enq)
		enq = __sync_val_compare_and_swap(&st->t[CP_ENQ], 0, NP_ENQ_EARLY);
	if (enq && enq != NP_ENQ_EARLY && !(st->done & (1 << STAGE_SOCKET_QUEUE))) {
		if (SOCKQ_AT_WAKEUP && st->udp)
			np_read_time(ctx, c, (void *)key, st->t, st->ifindex, st->netns);	/* counted at its wakeup */
		else
			np_read(ctx, c, (void *)key, st->t, st->ifindex, st->netns);
	}
	skbs.delete(&key);
}

RAW_TRACEPOINT_PROBE(skb_copy_datagram_iovec)
{
	u64 key = ctx->args[0];
	struct np_cpu_state *c = np_enter(H_COPY);
	struct np_skb_state *st = skbs.lookup(&key);

	if (!st || (UDP_BY_RING && st->udp))
		return 0;	/* UDP reads are counted at sock_recv_length */
	np_read_skb(ctx, c, key, st);
	return 0;
}

#ifdef HAS_SKB_CONSUME_SKB
RAW_TRACEPOINT_PROBE(consume_skb)
{
	u64 key = ctx->args[0];
	struct np_cpu_state *c = np_enter(H_CONSUME);
	struct np_skb_state *st;

#if USE_PEND
	np_pend_forget(c, key);
#endif
	st = skbs.lookup(&key);	/* lockless; most freed skbs were never followed */

	if (!st)
		return 0;
	if (UDP_BY_RING)
		skbs.delete(&key);	/* freed: forget it (a UDP free may come long after the read) */
	else
		np_read_skb(ctx, c, key, st);
	return 0;
}
#endif

#if UDP_BY_RING
/* a read whose slot a newer datagram took: counted (untimed) when a followed one was lost that way */
static __always_inline void np_read_overwritten(void *ctx, struct np_cpu_state *c, struct np_sk_fifo *fifo)
{
	u64 t[CP_MAX] = {};

	np_hit_c(c, H_RING_OVERRUN);	/* not timed: more than RING datagrams were queued */
	if (fifo->lost <= 0)
		return;
	if (__sync_fetch_and_add(&fifo->lost, -1) <= 0) {
		__sync_fetch_and_add(&fifo->lost, 1);	/* another reader took the last one */
		return;
	}
	t[CP_ENQ] = NP_UNTIMED;
	np_read(ctx, c, NULL, t, 0, 0);
}

/*
 * the read of seq: its published slot (claimed READ, so no writer rewrote
 * what was read), a slot not yet published (marked EARLY: its writer counts
 * the read), or one a newer datagram took (counted from `lost`)
 */
static __always_inline void np_fifo_pop(void *ctx, struct np_cpu_state *c, struct np_sk_fifo *fifo,
					struct np_ring_slot *slot, u64 seq)
{
	u64 want = NP_TAG(seq, TAG_WRITTEN), tag;
	u32 ifindex = 0, netns = 0;
	u64 t[CP_MAX] = {};
	void *skb = NULL;

#pragma unroll
	for (int i = 0; i < 3; i++) {
		tag = *(volatile u64 *)&slot->tag;
		if (NP_TAG_SEQ1(tag) > seq + 1)
			break;	/* a newer datagram's */
		if (tag == want) {
			/* all of it before the claim: once READ, a writer may take the slot */
#if SLOWER_NS > 0
			__builtin_memcpy(t, slot->t, sizeof(t));
			skb = (void *)slot->skb;
#endif
			t[CP_ENQ] = slot->t_enq;
#if NEED_WHERE
			ifindex = slot->ifindex;
			netns = slot->netns;
#endif
			if (__sync_val_compare_and_swap(&slot->tag, want, NP_TAG(seq, TAG_READ)) != want)
				continue;	/* a writer took it while it was read: what was read may be the newer one's */
			if (t[CP_ENQ])	/* else not followed */
				np_read(ctx, c, skb, t, ifindex, netns);
			return;
		}
		/* older, or BUSY with seq: not published yet, its writer counts this read */
		if (np_slot_swap(fifo, slot, tag, NP_TAG(seq, TAG_EARLY)))
			return;
	}
	np_read_overwritten(ctx, c, fifo);
}

NP_BTF_PROBE(sock_recv_length)
{
	int ret = (int)ctx->args[1], flags = (int)ctx->args[2];
	u64 skey = ctx->args[0], seq;
	struct np_sk_fifo *fifo;
	struct np_cpu_state *c = np_enter(H_RECV_LENGTH);

	if (ret < 0 || (flags & NP_MSG_PEEK))
		return 0;
	fifo = fifos.lookup(&skey);
	if (!fifo)
		return 0;	/* not UDP, or no datagram of it followed */
	if (fifo->head >= fifo->tail) {
		if (fifo->followed)	/* another socket's reads are not the trace's to account */
			np_hit_c(c, H_READ_UNSEEN);	/* enqueued before the trace, or its wakeup was missed */
		return 0;
	}
	seq = __sync_fetch_and_add(&fifo->head, 1);
	np_fifo_pop(ctx, c, fifo, &fifo->slot[seq & (RING - 1)], seq);
	return 0;
}
#endif

#if SOCKQ_WATCH
/* UDP watched (sampled builds): every UDP read counted, the watched one timed (trace_watch.c) */
NP_BTF_PROBE(sock_recv_length)
{
	int ret = (int)ctx->args[1], flags = (int)ctx->args[2];
	struct np_cpu_state *c = np_enter(H_RECV_LENGTH);

	if (ret >= 0 && !(flags & NP_MSG_PEEK))
		np_watch_read(c, (void *)ctx->args[0]);
	return 0;
}
#endif
