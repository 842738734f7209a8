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
 *
 * This unit holds the maps and what a hop says (where, headers, fate,
 * owner); follow_table.c (which skb is which packet) and follow_hooks.c
 * (the tracepoint handlers) come after it, then follow_kprobe.c.
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
