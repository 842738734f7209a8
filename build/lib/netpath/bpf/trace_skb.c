// SPDX-License-Identifier: GPL-2.0
/*
 * netpath trace, the skb path: GRO run time, the driver hand-off (netif_rx,
 * napi_gro_receive_entry, netif_receive_skb_[list_]entry) and the skb's entry
 * into the protocol stack (net:netif_receive_skb, the netif_receive_skb
 * stage). From here on an skb is followed: in the hand-off table (USE_PEND),
 * the per-skb map and this CPU's slot (np_cpu_state.cur). Placed after
 * trace_common.c (and trace_irq.c); trace_kprobe.c and trace_sock.c use what
 * this unit defines. Without a per-packet stage (TRACK_SKBS=0) only GRO is
 * here.
 */

#if TRACK_SKBS && !RX_TSTAMP
#define USE_PEND 1
/*
 * Driver hand-off -> netif_receive_skb without a hash insert: a direct-mapped
 * table indexed by the skb address, shared by all CPUs (RPS may move the skb).
 * A slot held by another skb younger than PEND_STALE_NS sends this one to the
 * per-skb map instead. Writers store the tag last, readers check it, so a slot
 * torn by two CPUs at once reads as a miss.
 */
#define PEND_SLOTS	8192
#define PEND_STALE_NS	1000000000ULL
struct np_pend {
	u64 skb;
	u64 t;
	u32 ifindex;
	u32 netns;
	u64 tag;
};
BPF_ARRAY(pend, struct np_pend, PEND_SLOTS);

static __always_inline u32 np_pend_idx(u64 key)
{
	return ((key >> 8) ^ (key >> 21)) & (PEND_SLOTS - 1);
}
#else
#define USE_PEND 0
#endif

/* --- per-skb checkpoints --- */
#if TRACK_SKBS
/* hand-off checkpoint of an skb that passed the filters: the table, else the per-skb map */
static __always_inline void np_track_handoff(struct np_cpu_state *c, u64 key, struct np_skb_state *st)
{
#if USE_PEND
	u32 idx = np_pend_idx(key);
	struct np_pend *p = pend.lookup(&idx);

	if (p && (!p->skb || p->skb == key || st->t[CP_HANDOFF] - p->t > PEND_STALE_NS)) {
		p->skb = 0;
		asm volatile("" ::: "memory");
		p->t = st->t[CP_HANDOFF];
		p->ifindex = st->ifindex;
		p->netns = st->netns;
		p->tag = key ^ st->t[CP_HANDOFF] ^ ((u64)st->ifindex << 32 | st->netns);
		asm volatile("" ::: "memory");
		p->skb = key;
		return;
	}
#endif
	if (skbs.update(&key, st))
		np_hit_c(c, H_LOST_SKBS);
}

static __always_inline void np_handoff(struct np_cpu_state *c, void *skb)
{
	struct np_skb_state st = {};

	if (!np_rx_skb_passes(skb, &st.ifindex, &st.netns))
		return;
	st.t[CP_HANDOFF] = bpf_ktime_get_ns();
	np_track_handoff(c, (u64)skb, &st);
}

#if USE_PEND
/* takes the skb's hand-off out of the table: 1 when it was there */
static __always_inline int np_pend_take(u64 key, struct np_skb_state *st)
{
	u32 idx = np_pend_idx(key);
	struct np_pend *p = pend.lookup(&idx);
	u64 t, tag;
	u32 ifindex, netns;

	if (!p || p->skb != key)
		return 0;
	t = p->t;
	ifindex = p->ifindex;
	netns = p->netns;
	tag = p->tag;
	p->skb = 0;
	if (tag != (key ^ t ^ ((u64)ifindex << 32 | netns)))
		return 0;
	st->t[CP_HANDOFF] = t;
	st->ifindex = ifindex;
	st->netns = netns;
	return 1;
}

/* a freed skb leaves the table */
static __always_inline void np_pend_forget(struct np_cpu_state *c, u64 key)
{
	u32 idx = np_pend_idx(key);
	struct np_pend *p = pend.lookup(&idx);

	if (p && p->skb == key)
		p->skb = 0;
	if (c && c->cur.skb == key)
		c->cur.skb = 0;
}

/* IPv4/IPv6 UDP at skb->data (before the stack sets network_header) */
static __always_inline int np_rx_is_udp(void *skb)
{
	unsigned char *head = NULL, *data = NULL;
	u16 proto = 0;
	u8 l4 = 0;
#ifdef SKB_RX_SPAN_OFF
	u8 span[SKB_RX_SPAN_LEN];

	if (bpf_probe_read_kernel(span, sizeof(span), (char *)skb + SKB_RX_SPAN_OFF))
		return 0;
	NP_SPAN_GET(proto, span, SKB_RX_SPAN_OFF, OFF_SKB_PROTOCOL);
	NP_SPAN_GET(data, span, SKB_RX_SPAN_OFF, OFF_SKB_DATA);
#else
	NP_READ(proto, skb, OFF_SKB_PROTOCOL);
	NP_READ(data, skb, OFF_SKB_DATA);
#endif
	proto = np_ntohs(proto);
	if (proto == NP_ETH_P_IP)
		NP_READ(l4, data, 9);	/* iphdr.protocol */
	else if (proto == NP_ETH_P_IPV6)
		NP_READ(l4, data, 6);	/* ipv6hdr.nexthdr */
	return l4 == NP_IPPROTO_UDP || l4 == NP_IPPROTO_UDPLITE;
}
#endif
#endif

#ifdef USE_GRO
RAW_TRACEPOINT_PROBE(napi_gro_receive_entry)
{
	void *skb = (void *)ctx->args[0];
	struct np_cpu_state *c = np_enter(H_GRO_ENTRY);
	u32 ifindex = 0, netns = 0;
	int match;

	match = np_rx_skb_passes(skb, &ifindex, &netns);
	if (c) {
		c->gro_match = match;
		c->gro_ifindex = ifindex;
		c->gro_netns = netns;
		c->gro_start = bpf_ktime_get_ns();
	}
#if TRACK_SKBS && defined(HAS_NET_NAPI_GRO_RECEIVE_ENTRY) && !RX_TSTAMP
	if (match) {
		struct np_skb_state st = {};

		st.ifindex = ifindex;
		st.netns = netns;
		st.t[CP_HANDOFF] = c ? c->gro_start : bpf_ktime_get_ns();
		np_track_handoff(c, (u64)skb, &st);
	}
#endif
	return 0;
}

RAW_TRACEPOINT_PROBE(napi_gro_receive_exit)
{
	struct np_cpu_state *c = np_enter(H_GRO_EXIT);

	if (!c || !c->gro_start)
		return 0;
	if (c->gro_match)
		np_record(STAGE_GRO, bpf_ktime_get_ns() - c->gro_start, c->gro_ifindex, c->gro_netns);
	c->gro_start = 0;
	return 0;
}
#elif TRACK_SKBS && defined(HAS_NET_NAPI_GRO_RECEIVE_ENTRY) && !RX_TSTAMP
RAW_TRACEPOINT_PROBE(napi_gro_receive_entry)
{
	np_handoff(np_enter(H_GRO_ENTRY), (void *)ctx->args[0]);
	return 0;
}
#endif

#if TRACK_SKBS
#ifdef HAS_NET_NETIF_RX
RAW_TRACEPOINT_PROBE(netif_rx)
{
	np_handoff(np_enter(H_NETIF_RX), (void *)ctx->args[0]);
	return 0;
}
#endif

#ifdef HAS_NET_NETIF_RECEIVE_SKB_ENTRY
RAW_TRACEPOINT_PROBE(netif_receive_skb_entry)
{
	np_handoff(np_enter(H_NRS_ENTRY), (void *)ctx->args[0]);
	return 0;
}
#endif

#ifdef HAS_NET_NETIF_RECEIVE_SKB_LIST_ENTRY
RAW_TRACEPOINT_PROBE(netif_receive_skb_list_entry)
{
	np_handoff(np_enter(H_NRS_LIST_ENTRY), (void *)ctx->args[0]);
	return 0;
}
#endif

/* the skb enters __netif_receive_skb_core on this CPU: remember it for sk_data_ready */
static __always_inline void np_set_cur(struct np_cpu_state *c, u64 key, struct np_skb_state *st, u32 flags)
{
	if (!c)
		return;
	c->cur.skb = key;
	__builtin_memcpy(c->cur.t, st->t, sizeof(c->cur.t));
	c->cur.ifindex = st->ifindex;
	c->cur.netns = st->netns;
	c->cur.flags = CUR_TRACKED | CUR_TIMED | flags;	/* built unsampled: every skb is timed */
}

#if RX_TSTAMP
static __always_inline u64 np_skb_tstamp(void *skb)
{
	u64 ts = 0;

	NP_READ(ts, skb, OFF_SKB_TSTAMP);
	return ts;
}

/*
 * __netif_receive_skb_core with the kernel's receive timestamp: the hand-off
 * time is skb->tstamp, so nothing was kept for this skb before it got here.
 * This CPU's slot follows it on to sk_data_ready.
 */
NP_BTF_PROBE(netif_receive_skb)
{
	void *skb = (void *)ctx->args[0];
	u64 key = (u64)skb, now = 0, ts;
	struct np_cpu_state *c = np_enter(H_NRS);
	u32 ifindex = 0, netns = 0, timed;

	if (!c)
		return 0;
	NP_LOAD(ts, skb, OFF_SKB_TSTAMP);
	if (ts)
		ts += TAI_OFFSET_NS;
	/*
	 * Another round of the same skb (vlan, bridge) carries the same stamp;
	 * a new skb at a reused address does not. Keep the first round.
	 */
	if (c->cur.skb == key && ts && c->cur.t[CP_HANDOFF] == ts && (c->cur.flags & CUR_TRACKED) &&
	    !(c->cur.flags & CUR_ENQUEUED))
		return 0;
	if (!np_rx_skb_passes(skb, &ifindex, &netns)) {
		c->cur.skb = 0;
		return 0;
	}
	timed = np_pick(c);
#ifdef USE_CORE
	np_seen(c, STAGE_NETIF_RECEIVE_SKB);
#endif
	if (timed)
		now = NP_PKT_NOW();
	if (!ts || (timed && (now < ts || now - ts >= TSTAMP_MAX_NS))) {
		ts = 0;
		c->ctr.hits[H_UNSTAMPED] += 1;	/* no receive timestamp of this hop: not timed */
	} else if (timed) {
#ifdef USE_CORE
		np_record(STAGE_NETIF_RECEIVE_SKB, now - ts, ifindex, netns);
#endif
	}
	c->cur.skb = key;
	c->cur.t[CP_HANDOFF] = ts;
	c->cur.t[CP_CORE] = now;
	c->cur.t[CP_ENQ] = 0;
	c->cur.ifindex = ifindex;
	c->cur.netns = netns;
	c->cur.flags = CUR_TRACKED | (timed ? CUR_TIMED : 0);
	return 0;
}
#else
/* __netif_receive_skb_core: the skb enters the protocol stack */
RAW_TRACEPOINT_PROBE(netif_receive_skb)
{
	void *skb = (void *)ctx->args[0];
	u64 key = (u64)skb, now = bpf_ktime_get_ns();
	struct np_skb_state *st, fresh = {};
	struct np_cpu_state *c = np_enter(H_NRS);

#if USE_PEND
	if (np_pend_take(key, &fresh)) {
		fresh.t[CP_CORE] = now;
#ifdef USE_CORE
		fresh.done |= 1 << STAGE_NETIF_RECEIVE_SKB;
		np_record(STAGE_NETIF_RECEIVE_SKB, now - fresh.t[CP_HANDOFF], fresh.ifindex, fresh.netns);
#endif
		np_set_cur(c, key, &fresh, 0);
		/*
		 * Only this CPU's slot follows it now. A UDP datagram reaches its socket
		 * from here, in this softirq; anything else may wait in a socket backlog
		 * (TCP with the socket owned by the reader): that keeps a per-skb entry.
		 */
		if (KP_CHECKPOINTS || !np_rx_is_udp(skb)) {
			if (skbs.update(&key, &fresh))
				np_hit_c(c, H_LOST_SKBS);
			else if (c)
				c->cur.flags |= CUR_IN_MAP;
		}
		return 0;
	}
#endif
	st = skbs.lookup(&key);
	if (st) {
		if (st->t[CP_CORE])
			return 0;	/* another round (vlan, bridge): keep the first */
		st->t[CP_CORE] = now;
#ifdef USE_CORE
		if (st->t[CP_HANDOFF] && !(st->done & (1 << STAGE_NETIF_RECEIVE_SKB))) {
			st->done |= 1 << STAGE_NETIF_RECEIVE_SKB;
			np_record(STAGE_NETIF_RECEIVE_SKB, now - st->t[CP_HANDOFF], st->ifindex, st->netns);
		}
#endif
		np_set_cur(c, key, st, CUR_IN_MAP);
		return 0;
	}
#if USE_PEND
	/* a UDP skb from the hand-off table has no entry: its next round is known by this CPU's slot */
	if (c && c->cur.skb == key && (c->cur.flags & (CUR_TRACKED | CUR_IN_MAP | CUR_ENQUEUED)) == CUR_TRACKED &&
	    now - c->cur.t[CP_CORE] < NESTED_NS)
		return 0;	/* another round (vlan, bridge): keep the first */
#endif
	if (!np_rx_skb_passes(skb, &fresh.ifindex, &fresh.netns)) {
		if (c)
			c->cur.skb = 0;
		return 0;
	}
	fresh.t[CP_CORE] = now;
	if (skbs.update(&key, &fresh))
		np_hit_c(c, H_LOST_SKBS);
	np_set_cur(c, key, &fresh, CUR_IN_MAP);
	return 0;
}
#endif /* RX_TSTAMP */

#ifdef HAS_SKB_KFREE_SKB
/* a dropped skb: forget it so a reused address starts clean */
RAW_TRACEPOINT_PROBE(kfree_skb)
{
	u64 key = ctx->args[0];
	struct np_cpu_state *c = np_enter(H_KFREE);

#if USE_PEND
	np_pend_forget(c, key);
#endif
	if (skbs.lookup(&key))	/* lockless; delete takes the bucket lock */
		skbs.delete(&key);
	return 0;
}
#endif
#endif /* TRACK_SKBS */
