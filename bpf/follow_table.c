// SPDX-License-Identifier: GPL-2.0
/*
 * netpath follow, which skb is which packet (after follow.c): `followed`
 * maps a live skb's address to its packet; a start is bounded by --count
 * and by the table's size (both counted); a clone is found by the data
 * buffer it shares with its original (`follow_heads`); an address met
 * where its packet could not be is a new skb, and the old packet ends as
 * untracked.
 */

/*
 * 1 when the skb at this address cannot be the one followed so far: this
 * hook never comes after the last one seen on a living skb, so the packet
 * followed was freed unseen and the address belongs to a new one.
 */
static __always_inline int follow_reused(u16 hook, struct follow_state *s, struct follow_hop *h,
					 struct np_flow *f, void *skb, int entry)
{
	u16 last = s->last_hook;
	u64 sk = 0, net = 0;
	u32 ns = 0;

	if (f->l3proto && f->l3proto != s->l3proto)
		return 1;	/* a netlink or unix message now: the packet was freed unseen */
	if (f->family && s->l4proto && f->l4proto != s->l4proto)
		return 1;
	if (!entry)
		return 0;
	switch (hook) {
	case FH_GRO:	/* fresh from a driver, or from a veth peer's xmit */
		return last != FH_START_XMIT && last != FH_XMIT;
	case FH_NETIF_RX:	/* veth and loopback hand over inside their xmit */
		return last != FH_DEV_QUEUE && last != FH_QDISC_ENQUEUE && last != FH_QDISC_DEQUEUE &&
		       last != FH_START_XMIT;
	case FH_RECEIVE:	/* again only through a bridge or another upper device */
		if (last == FH_RECEIVE)
			return h->ifindex == s->ifindex && h->netns_cookie == s->cookie;
		return last != FH_NETIF_RX && last != FH_GRO && last != FH_XMIT;	/* veth: xmit returns later */
	case FH_START_XMIT:	/* after the queue (or its qdisc) */
		return last != FH_DEV_QUEUE && last != FH_QDISC_ENQUEUE && last != FH_QDISC_DEQUEUE;
	case FH_DEV_QUEUE:	/* after a receive: forwarded on, or a new skb a local socket sends here */
		if (!follow_rx_hook(last))
			return 0;
		NP_READ(sk, skb, OFF_SKB_SK);
		if (!sk)
			return 0;	/* routed: ip_rcv_core orphaned it (net/ipv4/ip_input.c) */
		/*
		 * Bridged: it may still hold its sender's socket, in the namespace
		 * it came from (veth's hand-over leaves skb->sk set on 6.18: the
		 * flood live test sees it). New only when the socket is of this
		 * namespace.
		 */
		NP_READ(net, (void *)sk, OFF_SK_NET);
		if (np_kernel_ptr(net))
			NP_READ(ns, (void *)net, OFF_NET_NS_INUM);
		return ns == h->netns;
	}
	return 0;
}

/* the next packet id, originals and clones alike */
static __always_inline u64 follow_next_id(void)
{
	int slot = FOLLOW_IDS;
	u64 *ids = follow_started.lookup(&slot);

	return ids ? __sync_fetch_and_add(ids, 1) + 1 : 0;
}

/* the original's head goes in follow_heads, so the clones made of it are found */
static __always_inline void follow_own_head(u64 key, u64 head, struct follow_state *s, struct follow_stats *st)
{
	struct follow_head o = { .id = s->id, .skb = key };
	int err;

	if (!head)
		return;
	err = follow_heads.insert(&head, &o);
	if (!err)
		s->head = head;
	else if (err != -FOLLOW_EEXIST)	/* full: its clones, if any, go unfollowed */
		st->v[FSTAT_CLONES_UNSEEN] += 1;
}

/* the packet's place in `followed`; NULL (counted) when the table is full */
static __always_inline struct follow_state *follow_insert(u64 key, struct follow_state *s, struct follow_stats *st)
{
	if (followed.insert(&key, s)) {
		st->v[FSTAT_TABLE_FULL] += 1;
		if (s->head)
			follow_heads.delete(&s->head);
		return NULL;
	}
	return followed.lookup(&key);
}

/* a place in `followed` and an id, under --count; NULL when the packet is not followed */
static __always_inline struct follow_state *follow_start(u64 key, u64 head, u64 now, struct np_flow *f,
							 struct follow_stats *st)
{
	struct follow_state s = {}, *out;
	int slot = FOLLOW_ORIGINALS;
	u64 *started = follow_started.lookup(&slot);

	if (!started || *started >= FOLLOW_MAX)
		return NULL;
	if (__sync_fetch_and_add(started, 1) >= FOLLOW_MAX)
		return NULL;	/* another CPU took the last one */
	s.id = follow_next_id();
	s.first_ns = now;
	s.l3proto = f->l3proto;
	s.l4proto = f->family ? f->l4proto : 0;
	follow_own_head(key, head, &s, st);
	out = follow_insert(key, &s, st);
	if (out)
		st->v[FSTAT_STARTED] += 1;
	return out;
}

/*
 * An skb not followed that shares a followed original's data buffer is a
 * clone of it (a bridge flooding a frame, a tap): followed on its own, past
 * the filters and --count. The original must still have that buffer: one
 * that got a new one (pskb_expand_head) leaves a stale entry, gone here.
 */
static __always_inline struct follow_state *follow_clone(u64 key, u64 head, struct np_flow *f,
							 struct follow_stats *st)
{
	struct follow_head *o = head ? follow_heads.lookup(&head) : NULL;
	struct follow_state s = {}, *orig;
	u64 orig_skb, orig_head = 0;

	if (!o)
		return NULL;
	orig_skb = o->skb;
	s.clone_of = o->id;
	orig = followed.lookup(&orig_skb);
	if (orig)
		NP_READ(orig_head, (void *)orig_skb, OFF_SKB_HEAD);
	if (!orig || orig->id != s.clone_of || orig_head != head) {
		follow_heads.delete(&head);
		return NULL;
	}
	s.id = follow_next_id();
	s.first_ns = orig->first_ns;	/* on its original's clock: its first hop says when it was cloned */
	s.l3proto = f->l3proto;
	s.l4proto = f->family ? f->l4proto : 0;
	orig = follow_insert(key, &s, st);
	if (orig)
		st->v[FSTAT_CLONES] += 1;
	return orig;
}

/* the packet at `key` ends: it leaves `followed`, and its head leaves follow_heads */
static __always_inline void follow_forget(u64 key, struct follow_state *s)
{
	u64 head = s->head;
	struct follow_head *o = head ? follow_heads.lookup(&head) : NULL;

	if (o && o->id == s->id)
		follow_heads.delete(&head);
	followed.delete(&key);
}

/* ends the packet at `s` as untracked: its address turned up where it could not go */
static __always_inline void follow_untracked(u64 key, struct follow_state *s, u16 hook, struct follow_stats *st)
{
	struct follow_hop h = {};

	h.id = s->id;
	h.clone_of = s->clone_of;
	h.skb = key;
	h.hook = hook;
	h.offset_ns = bpf_ktime_get_ns() - s->first_ns;
	h.fate = FATE_UNTRACKED;
	h.netns = s->netns;
	h.netns_cookie = s->cookie;
	h.cpu = bpf_get_smp_processor_id();
	follow_send(&h, st);
	follow_forget(key, s);
	st->v[FSTAT_UNTRACKED] += 1;
}
