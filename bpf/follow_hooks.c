// SPDX-License-Identifier: GPL-2.0
/*
 * netpath follow, the hooks (after follow_table.c): follow_hook is every
 * tracepoint's one path (look the skb up, start or clone it at an entry
 * hook, send the hop, forget the packet at its fate); then one handler per
 * contract.FOLLOW_HOOKS tracepoint, compiled in by HOOK_<id>, that only says
 * which argument is the skb and what the tracepoint adds.
 */

static __always_inline void follow_hook(u16 hook, int entry, struct follow_ctx *c)
{
	int zero = 0;
	struct follow_stats *st = follow_stats.lookup(&zero);
	struct follow_state *s;
	struct follow_hop h = {};
	struct np_flow f = {};
	u64 key = (u64)c->skb, now, head;

	if (!st || !key || hook >= FH_MAX)
		return;
	st->v[FSTAT_MAX + hook] += 1;
	s = followed.lookup(&key);
	if (!s && !entry)
		return;
	head = follow_read(hook, c, &h, &f);
	if (s && !c->gone && follow_reused(hook, s, &h, &f, c->skb, entry)) {
		follow_untracked(key, s, hook, st);
		s = NULL;
	}
	now = bpf_ktime_get_ns();
	if (!s) {
		if (!entry)
			return;
		s = follow_clone(key, head, &f, st);
		if (!s && follow_matches(&h, &f))
			s = follow_start(key, head, now, &f, st);
		if (!s)
			return;
	}
	if (!h.netns) {	/* no device here (a queued datagram's dev is dev_scratch): still where it was */
		h.netns = s->netns;
		h.netns_cookie = s->cookie;
	}
	h.id = s->id;
	h.clone_of = s->clone_of;
	h.skb = key;
	h.hook = hook;
	h.offset_ns = now - s->first_ns;
	follow_fill(&h, &f, c);
	if (hook < FH_FIRST_KPROBE)	/* function hops sit inside the tracepoints' order (follow_reused) */
		s->last_hook = hook;
	s->netns = h.netns;
	s->cookie = h.netns_cookie;
	s->ifindex = h.ifindex;
	if (s->hops < FOLLOW_MAX_HOPS || c->fate) {
		s->hops += 1;
		follow_send(&h, st);
	} else {
		st->v[FSTAT_HOPS_CUT] += 1;
	}
	if (c->fate)
		follow_forget(key, s);
}

#ifdef HOOK_FH_DEV_QUEUE
RAW_TRACEPOINT_PROBE(net_dev_queue)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[0] };

	follow_hook(FH_DEV_QUEUE, 1, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_QDISC_ENQUEUE
RAW_TRACEPOINT_PROBE(qdisc_enqueue)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[2] };

	follow_hook(FH_QDISC_ENQUEUE, 0, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_QDISC_DEQUEUE
RAW_TRACEPOINT_PROBE(qdisc_dequeue)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[3] };

	follow_hook(FH_QDISC_DEQUEUE, 0, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_START_XMIT
RAW_TRACEPOINT_PROBE(net_dev_start_xmit)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[0], .dev = (void *)ctx->args[1] };

	follow_hook(FH_START_XMIT, 1, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_NETIF_RX
RAW_TRACEPOINT_PROBE(netif_rx)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[0] };

	follow_hook(FH_NETIF_RX, 1, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_XMIT
/* the driver has the skb now (veth has passed it on): only its address and the tracepoint's own fields */
RAW_TRACEPOINT_PROBE(net_dev_xmit)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[0], .rc = (s32)ctx->args[1],
				.dev = (void *)ctx->args[2], .len = (u32)ctx->args[3], .gone = 1 };

	follow_hook(FH_XMIT, 0, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_GRO
RAW_TRACEPOINT_PROBE(napi_gro_receive_entry)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[0] };
	int zero = 0;
	u64 *cur = follow_gro.lookup(&zero);

	if (cur)
		*cur = (u64)c.skb;
	follow_hook(FH_GRO, 1, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_GRO_EXIT
/* merged into a packet GRO holds: this skb ends here (its bytes go on in the other one) */
RAW_TRACEPOINT_PROBE(napi_gro_receive_exit)
{
	int zero = 0, ret = (int)ctx->args[0];
	u64 *cur = follow_gro.lookup(&zero);
	struct follow_ctx c = { .rc = ret, .gone = 1, .fate = FATE_GRO_MERGED };

	if (!cur || !*cur)
		return 0;
	c.skb = (void *)*cur;
	*cur = 0;
	if (ret == 0 || ret == FOLLOW_GRO_MERGED_FREE)
		follow_hook(FH_GRO_EXIT, 0, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_RECEIVE
RAW_TRACEPOINT_PROBE(netif_receive_skb)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[0] };
	int zero = 0;
	u64 *cur = follow_cur.lookup(&zero);

	if (cur)
		*cur = (u64)c.skb;
	follow_hook(FH_RECEIVE, 1, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_RCVQ_FULL
RAW_TRACEPOINT_PROBE(sock_rcvqueue_full)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[1] };

	follow_hook(FH_RCVQ_FULL, 0, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_UDP_FAIL
RAW_TRACEPOINT_PROBE(udp_fail_queue_rcv_skb)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[2], .rc = (s32)ctx->args[0] };

	follow_hook(FH_UDP_FAIL, 0, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_DATA_READY
#define FOLLOW_AF_INET	2
#define FOLLOW_AF_INET6	10
#define FOLLOW_TCP_LISTEN	10
/*
 * Queued on a socket: delivered to it (UDP copies a linear datagram to the
 * reader and frees it with no tracepoint, so this is the last sight of it).
 * The skb is the queue's tail, else (TCP coalesced it into the tail) the one
 * this CPU's receive path is carrying.
 */
RAW_TRACEPOINT_PROBE(sk_data_ready)
{
	struct follow_ctx c = { .sk = (void *)ctx->args[0], .fate = FATE_DELIVERED };
	u64 tail = 0, *cur;
	u16 family = 0;
	u8 state = 0;
	int zero = 0;

	NP_READ(family, c.sk, OFF_SK_FAMILY);
	if (family != FOLLOW_AF_INET && family != FOLLOW_AF_INET6)
		return 0;
	NP_READ(tail, c.sk, OFF_SK_RCVQ_PREV);
	NP_READ(state, c.sk, OFF_SK_STATE);
	if (tail && tail != (u64)c.sk + OFF_SK_RCVQ && followed.lookup(&tail)) {
		c.skb = (void *)tail;
	} else if (state != FOLLOW_TCP_LISTEN) {	/* a listener wakes for a connection, not for data */
		cur = follow_cur.lookup(&zero);
		if (!cur || !*cur)
			return 0;
		c.skb = (void *)*cur;
	} else {
		return 0;
	}
	follow_hook(FH_DATA_READY, 0, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_COPY
/* a process reads it: delivered, to that process */
RAW_TRACEPOINT_PROBE(skb_copy_datagram_iovec)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[0], .fate = FATE_DELIVERED };

	follow_hook(FH_COPY, 0, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_CONSUME
/* freed, not dropped: by a read (before sk_data_ready existed, UDP's last sight), an answer, or a driver */
RAW_TRACEPOINT_PROBE(consume_skb)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[0], .stack = 1, .ctx = ctx, .fate = FATE_CONSUMED };

#if CONSUME_HAS_LOCATION	/* Linux 6.3+ */
	c.location = ctx->args[1];
#endif
	follow_hook(FH_CONSUME, 0, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_KFREE
RAW_TRACEPOINT_PROBE(kfree_skb)
{
	struct follow_ctx c = { .skb = (void *)ctx->args[0], .location = ctx->args[1], .fate = FATE_DROPPED };

#if TP_HAS_REASON
	c.reason = (u32)ctx->args[2];
#endif
	follow_hook(FH_KFREE, 0, &c);
	return 0;
}
#endif

#ifdef HOOK_FH_SLAB_FREE
/*
 * The sk_buff itself goes back to its slab: freed by a path with no skb
 * tracepoint (__kfree_skb: TCP's pure ACKs, coalesced segments). Every slab
 * free in the kernel runs this, so it is one lookup and nothing else.
 */
RAW_TRACEPOINT_PROBE(kmem_cache_free)
{
	u64 ptr = ctx->args[1];
	struct follow_ctx c = { .skb = (void *)ptr, .location = ctx->args[0], .gone = 1, .stack = 1,
				.fate = FATE_FREED, .ctx = ctx };

	if (!followed.lookup(&ptr))
		return 0;
	follow_hook(FH_SLAB_FREE, 0, &c);
	return 0;
}
#endif
