// SPDX-License-Identifier: GPL-2.0
/*
 * netpath drops: count every skb:kfree_skb in the kernel, keyed by what the
 * user groups by, so counts stay exact at any drop rate. Optional per-drop
 * samples go out through a perf buffer under a per-CPU budget.
 *
 * Cost is per drop, so under a storm every nanosecond shows: the health
 * counters are one per-CPU value (one lookup, plain adds: a program never
 * runs nested on its own CPU, the kernel skips such a run), and a drop is
 * counted first in a small per-CPU table of the keys seen (DROP_CACHE_SLOTS
 * direct-mapped slots, compared word by word) and only on a slot collision
 * in the hash, which costs a key hash and a bucket walk. A slot belongs to
 * the first key that lands in it for the whole run, so a count never moves
 * between the two: netpath adds both up.
 *
 * TP_BTF=1: the program is loaded as a BTF-typed raw tracepoint (netpath's
 * own bpf() call: BCC's loader cannot), so skb, its device and that device's
 * namespace are typed kernel pointers the verifier lets it load from
 * directly: four plain loads instead of three probe-read helper calls. The
 * packet headers are plain loads too where the verifier takes skb->head as
 * memory (TP_BTF_PKT, Linux 6.17+), reading only the protocols unless the
 * flow is needed, else probe reads. netpath falls back to TP_BTF=0 (a raw
 * tracepoint) where the kernel refuses.
 *
 * Units: drop_place.c (where a drop was: namespace inode and cookie,
 * interface, also when skb->dev is gone) always comes first, drops_owner.c
 * (socket and cgroup of a drop) when rows or filters or samples need it;
 * this unit counts and samples.
 *
 * Compile-time numbers: TP_BTF, TP_BTF_PKT, TP_HAS_REASON, TP_HAS_RX_SK,
 * BY_{REASON,LOCATION,IFACE,PROTO,FLOW,SOCKET,CGROUP} (BY_OWNER: either of the
 * last two), FILTER_{NETNS,NETNS_COOKIE,IFACE,REASON,PROTO,PORT,HOST_*,CGROUP},
 * SAMPLE_BUDGET, WITH_STACK, PCAP_SNAPLEN (--pcap: bpf/capture.c is compiled in),
 * MAX_ROWS and the OFF_* struct offsets. struct drop_where, drop_flow,
 * drop_sample and enum drop_stat come from netpath/contract.py, compiled
 * ahead of this file.
 */
#include "netpath.h"

/* The flow part exists only when rows group by flow: a shorter key hashes faster. */
struct drop_key {
	struct drop_where w;
#if BY_FLOW
	struct drop_flow f;
#endif
#if BY_OWNER
	struct drop_owner o;
#endif
};

#define DROP_KEY_WORDS	(sizeof(struct drop_key) / sizeof(u64))
_Static_assert(sizeof(struct drop_key) % sizeof(u64) == 0, "drop_key is compared in u64 words");

struct drop_stats {
	u64 v[STAT_MAX];
};

struct drop_slot {
	struct drop_key key;
	u64 count;	/* 0: free; set after the key, so a reader never sees a count without its key */
};

struct drop_cache {
	struct drop_slot slot[DROP_CACHE_SLOTS];
};

BPF_PERCPU_HASH(drops, struct drop_key, u64, MAX_ROWS);
BPF_PERCPU_ARRAY(stats, struct drop_stats, 1);
BPF_PERCPU_ARRAY(drop_cache, struct drop_cache, 1);

#ifdef WITH_STACK
BPF_STACK_TRACE(stacks, 4096);
BPF_HASH(drop_stack, struct drop_key, s32, MAX_ROWS);
#endif

#if SAMPLE_BUDGET > 0
BPF_PERF_OUTPUT(samples);
BPF_PERCPU_ARRAY(sample_used, u32, 1);
#endif

static __always_inline int drop_key_eq(struct drop_key *a, struct drop_key *b)
{
	u64 *x = (u64 *)a, *y = (u64 *)b;

#pragma unroll
	for (int i = 0; i < DROP_KEY_WORDS; i++)
		if (x[i] != y[i])
			return 0;
	return 1;
}

/* this CPU's slot for the key, when it holds the key or is free: 1 when counted there */
static __always_inline int drop_count_cached(struct drop_key *key)
{
	int zero = 0;
	struct drop_cache *cache = drop_cache.lookup(&zero);
	struct drop_slot *s;
	u32 idx;

	if (!cache)
		return 0;
	idx = (u32)(key->w.location ^ (key->w.location >> 23)) ^ key->w.reason * 0x9e3779b1u ^ key->w.ifindex ^
	      key->w.netns ^ key->w.l4proto;
	idx ^= idx >> 16;
	s = &cache->slot[idx & (DROP_CACHE_SLOTS - 1)];
	if (s->count) {
		if (!drop_key_eq(&s->key, key))
			return 0;	/* taken by another key: the hash counts this one */
		s->count += 1;
		return 1;
	}
	__builtin_memcpy(&s->key, key, sizeof(*key));
	asm volatile("" ::: "memory");
	s->count = 1;
	return 1;
}

static __always_inline void drop_flow_of(struct np_flow *flow, struct drop_flow *f)
{
	__builtin_memcpy(f->saddr, flow->saddr, sizeof(f->saddr));
	__builtin_memcpy(f->daddr, flow->daddr, sizeof(f->daddr));
	f->sport = flow->sport;
	f->dport = flow->dport;
}

#ifndef TP_BTF
#define TP_BTF 0
#endif

/* the addresses and ports, beside the protocols: only for rows by flow, a filter on them, or samples */
#define DROP_NEEDS_ADDRS	(BY_FLOW || NEED_FLOW || SAMPLE_BUDGET > 0)

#if TP_BTF && defined(TP_BTF_PKT)
/*
 * TP_BTF_PKT: this kernel's verifier (Linux 6.17+, "rdonly_untrusted_mem
 * for btf id walk pointer leafs") gives a typed skb's head, an unsigned
 * char pointer, as read-only untrusted memory the program may load from
 * at any offset: plain loads (a faulting one reads 0), where a probe-read
 * helper call costs ~50 ns a drop on this path. netpath defines it when a
 * test program doing such a load is accepted (bpfload/load.py). The
 * results are np_parse_l3's (bpf/netpath.h), reading only what the key
 * needs: the protocols, and the addresses and ports when DROP_NEEDS_ADDRS.
 */

/* np_ip6_skip_exthdrs with plain loads: the transport header's offset from head, 0 when none */
static __always_inline u32 drop_ip6_skip_exthdrs(u64 head, u32 off, u8 *proto)
{
#pragma unroll
	for (int i = 0; i < NP_IP6_EXTHDR_MAX; i++) {
		if (!np_ip6_is_exthdr(*proto))
			break;
		off = np_ip6_exthdr_next((struct np_ip6_opt *)(head + off), off, proto);
		if (!off)
			return 0;
	}
	return np_ip6_walk_end(*proto, off);
}

/* np_parse_l3 with plain loads from head + nh (the network header); 0 on success */
static __always_inline int drop_parse_l3(u64 head, u32 nh, struct np_flow *flow)
{
	u32 l4 = 0;
	u8 proto;

	if (!head || nh >= NP_UNSET_HEADER)
		return -1;
	if (flow->l3proto == NP_ETH_P_IP) {
		struct np_iphdr *ip = (struct np_iphdr *)(head + nh);
		u8 ver_ihl = ip->ver_ihl;

		if ((ver_ihl >> 4) != 4)
			return -1;
		flow->family = 4;
		flow->l4proto = ip->protocol;
		if (!DROP_NEEDS_ADDRS)
			return 0;
		flow->saddr[0] = ip->saddr;
		flow->daddr[0] = ip->daddr;
		if (!(np_ntohs(ip->frag_off) & NP_IP4_FRAG_OFFSET))
			l4 = nh + (ver_ihl & 0xf) * 4;
	} else if (flow->l3proto == NP_ETH_P_IPV6) {
		struct np_ipv6hdr *ip6 = (struct np_ipv6hdr *)(head + nh);

		flow->family = 6;
		proto = ip6->nexthdr;
		l4 = nh + NP_IP6_HDR_LEN;
		if (np_ip6_is_exthdr(proto))
			l4 = drop_ip6_skip_exthdrs(head, l4, &proto);
		flow->l4proto = proto;
		if (!DROP_NEEDS_ADDRS)
			return 0;
		__builtin_memcpy(flow->saddr, ip6->saddr, sizeof(flow->saddr));
		__builtin_memcpy(flow->daddr, ip6->daddr, sizeof(flow->daddr));
	} else {
		return -1;
	}
	if (l4 && (flow->l4proto == NP_IPPROTO_TCP || flow->l4proto == NP_IPPROTO_UDP)) {
		struct np_ports *ports = (struct np_ports *)(head + l4);

		flow->sport = np_ntohs(ports->source);
		flow->dport = np_ntohs(ports->dest);
	}
	return 0;
}
#endif

/* L3/L4 of the dropped skb: with a typed skb, its protocol, head and network header are plain loads */
static __always_inline int drop_parse_flow(void *skb, struct np_flow *flow)
{
#if TP_BTF
	u64 s = (u64)skb, head;
	u16 proto, nh;

	asm volatile("" : "+r"(s));
	proto = *(u16 *)(s + OFF_SKB_PROTOCOL);
	nh = *(u16 *)(s + OFF_SKB_NETWORK_HEADER);
	head = *(u64 *)(s + OFF_SKB_HEAD);
	flow->l3proto = np_ntohs(proto);
#ifdef TP_BTF_PKT
	return drop_parse_l3(head, nh, flow);
#else
	return np_parse_l3((unsigned char *)head, nh, flow);
#endif
#else
	return np_parse_flow(skb, flow);
#endif
}

/* the filters: 1 when the drop is counted; fills where it happened, its flow and (when keyed) its owner */
static __always_inline int drop_matches(void *skb, void *rx_sk, struct drop_stats *st, struct drop_where *w,
					struct np_flow *flow, struct drop_owner *owner)
{
	struct drop_place place = {};

#ifdef FILTER_REASON
	if (w->reason != FILTER_REASON)
		return 0;
#endif
	drop_place(skb, rx_sk, w->location, st->v[STAT_HITS], &place);	/* bpf/drop_place.c */
	w->netns = place.inum;
	w->ifindex = place.inum ? place.ifindex : 0;	/* an index means nothing without its namespace */
	w->netns_cookie = place.cookie;
	w->placed_by = place.inum ? place.by : PLACED_NONE;
	if (!place.inum && place.ifindex)
		st->v[STAT_NO_DEVICE] += 1;	/* came in, lost its device: counted before any filter */
	if (!np_passes_where(w->netns, w->ifindex))
		return 0;
#ifdef FILTER_NETNS_COOKIE
	if (w->netns_cookie != FILTER_NETNS_COOKIE)
		return 0;
#endif
#if BY_PROTO || BY_FLOW || SAMPLE_BUDGET > 0 || NEED_FLOW || defined(PCAP_SNAPLEN)
	if (!np_flow_matches(flow, drop_parse_flow(skb, flow)))
		return 0;
	w->l3proto = flow->l3proto;
	w->l4proto = flow->l4proto;
	w->family = flow->family;
#endif
#if BY_OWNER || defined(FILTER_CGROUP)
	drop_owner_of(skb, rx_sk, owner);
#ifdef FILTER_CGROUP
	if (owner->cgroup != FILTER_CGROUP)
		return 0;
#endif
#endif
	return 1;
}

/* the row a drop counts in: only what the user groups by (a shorter key hashes faster) */
static __always_inline void drop_key_of(struct drop_key *key, struct drop_where *w, struct np_flow *flow,
					struct drop_owner *owner)
{
#if BY_REASON
	key->w.reason = w->reason;
#endif
#if BY_LOCATION
	key->w.location = w->location;
#endif
#if BY_IFACE
	key->w.ifindex = w->ifindex;
	key->w.netns = w->netns;
	key->w.netns_cookie = w->netns_cookie;
	key->w.placed_by = w->placed_by;
#endif
#if BY_PROTO || BY_FLOW
	key->w.l3proto = w->l3proto;
	key->w.l4proto = w->l4proto;
	key->w.family = w->family;
#endif
#if BY_FLOW
	drop_flow_of(flow, &key->f);
#endif
#if BY_SOCKET
	key->o.sk_ino = owner->sk_ino;
#endif
#if BY_SOCKET || BY_CGROUP
	key->o.cgroup = owner->cgroup;	/* a socket has one cgroup: it does not split socket rows */
#endif
}

/* one more drop in its row: this CPU's cache slot, else the hash; 0 when the hash is full */
static __always_inline int drop_count(struct drop_key *key)
{
	u64 zero = 0, *count;

	if (drop_count_cached(key))
		return 1;
	count = drops.lookup_or_try_init(key, &zero);
	if (!count)
		return 0;
	*count += 1;	/* this CPU's value: no other writer */
	return 1;
}

#if SAMPLE_BUDGET > 0
/* one drop in full, within this CPU's budget for the interval */
static __always_inline void drop_sample_send(void *ctx, struct drop_stats *st, void *skb, void *rx_sk,
					     struct drop_where *w, struct np_flow *flow, struct drop_owner *owner,
					     s32 stackid)
{
	int idx = 0;
	u32 *used = sample_used.lookup(&idx);
	struct drop_sample s = {};

	if (!used)
		return;
	if (*used >= SAMPLE_BUDGET) {
		st->v[STAT_SKIPPED_SAMPLES] += 1;
		return;
	}
	*used += 1;
	s.key.w = *w;
	drop_flow_of(flow, &s.key.f);
#if BY_OWNER || defined(FILTER_CGROUP)
	s.owner = *owner;
#else
	drop_owner_of(skb, rx_sk, &s.owner);
#endif
	s.ts_ns = bpf_ktime_get_ns();
	NP_READ(s.len, skb, OFF_SKB_LEN);
	s.pid = bpf_get_current_pid_tgid() >> 32;
	s.cpu = bpf_get_smp_processor_id();
	s.stackid = stackid;
	bpf_get_current_comm(&s.comm, sizeof(s.comm));
	samples.perf_submit(ctx, &s, sizeof(s));
	st->v[STAT_SAMPLES] += 1;
}
#endif

#if TP_BTF
int kfree_skb(struct bpf_raw_tracepoint_args *ctx)
#else
RAW_TRACEPOINT_PROBE(kfree_skb)
#endif
{
	void *skb = (void *)ctx->args[0], *rx_sk = NULL;
	struct drop_where w = {};
	struct drop_key key = {};
	struct np_flow flow = {};
	struct drop_owner owner = {};
	s32 stackid = -1;
	int szero = 0;
	struct drop_stats *st = stats.lookup(&szero);

	if (!st)
		return 0;
	st->v[STAT_HITS] += 1;
	w.location = ctx->args[1];
#if TP_HAS_REASON
	w.reason = (u32)ctx->args[2];
#endif
#if TP_HAS_RX_SK
	rx_sk = (void *)ctx->args[3];	/* drop_place.c, and drops_owner.c */
#endif
	if (!drop_matches(skb, rx_sk, st, &w, &flow, &owner))
		return 0;
	st->v[STAT_MATCHED] += 1;
#ifdef PCAP_SNAPLEN
	pcap_capture(st->v, skb, w.reason, w.location, w.ifindex, w.netns, &flow, PCAP_OWNER(&owner));
#endif
	drop_key_of(&key, &w, &flow, &owner);
	if (!drop_count(&key)) {
		st->v[STAT_LOST_ROWS] += 1;
		return 0;
	}
#ifdef WITH_STACK
	stackid = stacks.get_stackid(ctx, 0);
	drop_stack.update(&key, &stackid);
#endif
#if SAMPLE_BUDGET > 0
	drop_sample_send(ctx, st, skb, rx_sk, &w, &flow, &owner, stackid);
#endif
	return 0;
}

#if FRAG_BY_TIMER
/* a fragment queue's expiry: its namespace, for the fragments its callback frees next (drop_place.c) */
RAW_TRACEPOINT_PROBE(timer_expire_entry)
{
	int zero = 0;
	struct drop_stats *st = stats.lookup(&zero);

	if (st)
		drop_frag_timer_arm((void *)ctx->args[0], st->v[STAT_HITS]);
	return 0;
}
#endif
