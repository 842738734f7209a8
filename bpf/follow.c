// SPDX-License-Identifier: GPL-2.0
/*
 * netpath follow: one skb's whole way through the host, from tracepoints.
 *
 * The entry hooks (net_dev_queue, net_dev_start_xmit, netif_rx,
 * napi_gro_receive_entry, netif_receive_skb) run the user's filters on an skb not yet followed; the
 * first that matches puts the skb's address in `followed` (a bounded hash:
 * a start that finds no room is counted, never silent) and sends the first
 * hop. Every hook then costs one lookup by address and, for a followed skb,
 * one hop into the `hops` ring: where it is (namespace cookie and inode,
 * device), its length and its headers read again, so a rewrite shows at the
 * hop it is first seen at. The hooks that end an skb's life (kfree_skb,
 * consume_skb, the read that delivers it, a GRO merge) send the fate and
 * forget the address.
 *
 * A clone shares its original's data buffer (skb->head) and no tracepoint
 * fires where it is made: a packet that starts being followed puts its head
 * in `follow_heads` (a bounded hash, its overflow counted), and an entry
 * hook that meets an skb not followed looks its head up there first (one
 * lookup): a hit whose original still has that head is followed as a clone
 * of it, whatever the filters say and past --count. The original's entry
 * goes when it ends.
 *
 * An skb freed where no tracepoint fires (TCP frees a pure ACK with
 * __kfree_skb) leaves its address behind, and the allocator hands it to the
 * next packet. A hook that cannot follow the last one seen on a live skb
 * (follow_reused) ends the old packet as untracked and starts afresh.
 *
 * Compile-time numbers: HOOK_<id> for each hook this kernel has (with the
 * argument this unit reads: CONSUME_HAS_LOCATION, TP_HAS_REASON), FOLLOW_MAX
 * (--count), FOLLOW_RING_PAGES, NP_PAGE_SIZE, the FILTER_* filters and the
 * OFF_* struct offsets. struct follow_hop and the enums come from
 * netpath/contract.py.
 */
#include "netpath.h"

#ifndef PAGE_SIZE	/* BPF_RINGBUF_OUTPUT counts in pages; the header shim has no asm/page.h value */
#define PAGE_SIZE NP_PAGE_SIZE
#endif
#define FOLLOW_RB_NO_WAKEUP	1	/* BPF_RB_NO_WAKEUP: netpath drains the ring on its own clock */
#define FOLLOW_GRO_MERGED_FREE	1	/* enum gro_result: GRO_MERGED 0, GRO_MERGED_FREE 1 */
#define FOLLOW_EEXIST		17	/* a map insert's error for a key already there (BPF_NOEXIST) */

struct follow_state {
	u64 id;
	u64 clone_of;	/* the original's id, 0 for an original */
	u64 head;	/* the data buffer this packet put in follow_heads, 0 when none */
	u64 first_ns;
	u64 cookie;	/* where the last hop was: hops with no device of their own are there too */
	u32 netns;
	u32 ifindex;
	u16 last_hook;
	u16 hops;
	u16 l3proto;	/* what it was when first seen: an skb of another kind at this address is not it */
	u8 l4proto;
	u8 pad;
};

struct follow_stats {
	u64 v[FSTAT_MAX + FH_MAX];
};

/* what a hook hands over: the skb, and what the tracepoint itself says */
struct follow_ctx {
	void *skb;
	void *dev;	/* the tracepoint's device, else skb->dev */
	void *sk;	/* sk_data_ready: the socket it was queued on */
	u64 location;
	u32 reason;
	s32 rc;
	u32 len;	/* the tracepoint's length when the skb may be gone (net_dev_xmit) */
	u8 gone;	/* the skb may be freed already: only its address is used */
	u8 stack;	/* send who called: a free with no skb tracepoint of its own, or a consume */
	void *ctx;
	u8 fate;
};

/* a followed original's data buffer: who to name as the original of an skb that shares it */
struct follow_head {
	u64 id;
	u64 skb;
};

#define FOLLOW_ORIGINALS	0	/* follow_started: originals started (--count counts these) */
#define FOLLOW_IDS		1	/* ids handed out, originals and clones, in the order they started */

BPF_HASH(followed, u64, struct follow_state, FOLLOW_SLOTS);
BPF_HASH(follow_heads, u64, struct follow_head, FOLLOW_SLOTS);
BPF_PERCPU_ARRAY(follow_stats, struct follow_stats, 1);
BPF_ARRAY(follow_started, u64, 2);
BPF_PERCPU_ARRAY(follow_gro, u64, 1);	/* the skb inside napi_gro_receive on this CPU */
BPF_PERCPU_ARRAY(follow_cur, u64, 1);	/* the skb netif_receive_skb last saw on this CPU */
BPF_RINGBUF_OUTPUT(hops, FOLLOW_RING_PAGES);

/* the device's index and namespace; the namespace stays the last hop's when there is no device */
static __always_inline void follow_place(struct follow_ctx *c, struct follow_hop *h)
{
	u64 dev = (u64)c->dev, net = 0;

	if (!dev && !c->gone)
		NP_READ(dev, c->skb, OFF_SKB_DEV);
	if (!np_kernel_ptr(dev)) {
		if (!c->gone)
			NP_READ(h->ifindex, c->skb, OFF_SKB_SKB_IIF);
		return;
	}
	NP_READ(h->ifindex, (void *)dev, OFF_DEV_IFINDEX);
	NP_READ(net, (void *)dev, OFF_DEV_ND_NET);
	if (!np_kernel_ptr(net))
		return;
	NP_READ(h->netns, (void *)net, OFF_NET_NS_INUM);
	NP_READ(h->netns_cookie, (void *)net, OFF_NET_COOKIE);
}

/*
 * The headers, read again at this hop: on the receive side before the
 * stack sets network_header (netif_rx, GRO, netif_receive_skb) skb->data is
 * at the network header, elsewhere network_header says where it is. The one
 * place a hop's headers are parsed (np_parse_l3, shared with every program).
 */
static __always_inline u64 follow_flow(void *skb, u16 hook, struct np_flow *flow)
{
	unsigned char *head = NULL, *data = NULL;
	u16 nh = NP_UNSET_HEADER, proto = 0;

	NP_READ(head, skb, OFF_SKB_HEAD);
	NP_READ(proto, skb, OFF_SKB_PROTOCOL);
	if (hook == FH_NETIF_RX || hook == FH_GRO || hook == FH_RECEIVE) {
		NP_READ(data, skb, OFF_SKB_DATA);
		nh = (u16)(data - head);
	} else {
		NP_READ(nh, skb, OFF_SKB_NETWORK_HEADER);
	}
	flow->l3proto = np_ntohs(proto);
	if (np_parse_l3(head, nh, flow))
		flow->family = 0;
	return (u64)head;
}

static __always_inline int follow_rx_hook(u16 hook)
{
	return hook == FH_NETIF_RX || hook == FH_GRO || hook == FH_RECEIVE;
}

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

/* the user's filters at an entry hook; 1 when the packet is to be followed */
static __always_inline int follow_matches(struct follow_hop *h, struct np_flow *flow)
{
	if (!np_passes_where(h->netns, h->ifindex))
		return 0;
#ifdef FILTER_NETNS_COOKIE
	if (h->netns_cookie != FILTER_NETNS_COOKIE)
		return 0;
#endif
	return np_flow_matches(flow, flow->family ? 0 : -1);
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

static __always_inline void follow_send(struct follow_hop *h, struct follow_stats *st)
{
	struct follow_hop *out = hops.ringbuf_reserve(sizeof(*out));

	if (!out) {
		st->v[FSTAT_LOST_HOPS] += 1;
		return;
	}
	__builtin_memcpy(out, h, sizeof(*out));
	hops.ringbuf_submit(out, FOLLOW_RB_NO_WAKEUP);
}

/* the hop's fields that do not depend on following: where, headers, length, the reader; the data buffer */
static __always_inline u64 follow_read(u16 hook, struct follow_ctx *c, struct follow_hop *h, struct np_flow *f)
{
	u64 head;

	follow_place(c, h);
	h->len = c->len;
	if (c->gone)
		return 0;
	head = follow_flow(c->skb, hook, f);
	if (!h->len)
		NP_READ(h->len, c->skb, OFF_SKB_LEN);
	return head;
}

static __always_inline void follow_fill(struct follow_hop *h, struct np_flow *f, struct follow_ctx *c)
{
	h->location = c->location;
	h->reason = c->reason;
	h->rc = c->rc;
	h->fate = c->fate;
	h->cpu = bpf_get_smp_processor_id();
	h->family = f->family;
	h->l3proto = f->l3proto;
	h->l4proto = f->l4proto;
	h->sport = f->sport;
	h->dport = f->dport;
	__builtin_memcpy(h->saddr, f->saddr, sizeof(h->saddr));
	__builtin_memcpy(h->daddr, f->daddr, sizeof(h->daddr));
	if (c->stack)
		bpf_get_stack(c->ctx, h->frames, sizeof(h->frames), 0);
	if (c->fate == FATE_DELIVERED && c->sk) {	/* queued on a socket (softirq: the current task is anyone's) */
		struct drop_owner o = {};

		drop_owner_of(c->skb, c->sk, &o);	/* bpf/drops_owner.c */
		h->sk_ino = o.sk_ino;
		h->cgroup = o.cgroup;
		return;
	}
	if (c->fate != FATE_DELIVERED && c->fate != FATE_CONSUMED)
		return;
	/*
	 * A process reads it, or (consume_skb) may: a read frees a UDP datagram
	 * in the reader's own context, a softirq frees others in whoever's it
	 * interrupted. netpath tells them apart by the stack (frames).
	 */
	h->pid = bpf_get_current_pid_tgid() >> 32;
	h->cgroup = bpf_get_current_cgroup_id();
	bpf_get_current_comm(&h->comm, sizeof(h->comm));
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
