// SPDX-License-Identifier: GPL-2.0
/*
 * netpath trace: per-stage receive-path latency, aggregated in the kernel.
 *
 * Per-invocation stages (hardirq, softirq_wait, net_rx_action, napi_poll,
 * gro) keep per-CPU start times. Per-packet stages keep one LRU entry per
 * skb address with a timestamp per checkpoint; each stage is the delta
 * between two consecutive checkpoints of the same skb. Every sample goes into
 * a log2 histogram with 8 linear sub-buckets per power of two (slot), keyed
 * by stage [, ifindex+netns] [, cpu]; slot MAX_SLOT holds the maximum.
 *
 * Compile-time numbers: USE_* (stages from the attach plan), HAS_* (optional
 * tracepoints), TRACK_SKBS (any per-packet stage), BY_IFACE, BY_CPU,
 * FILTER_*, SLOWER_NS, MAX_SKBS, HIST_ROWS and the OFF_* struct offsets.
 */
#include "netpath.h"

#define NET_RX_VEC	3
#define NP_AF_INET	2
#define NP_AF_INET6	10
#define NP_IPPROTO_UDPLITE 136
#define NP_MSG_PEEK	2
#define MAX_SLOT	0xffff

enum np_stage {
	STAGE_HARDIRQ,
	STAGE_SOFTIRQ_WAIT,
	STAGE_NET_RX_ACTION,
	STAGE_NAPI_POLL,
	STAGE_GRO,
	STAGE_NETIF_RECEIVE_SKB,
	STAGE_IP_RCV,
	STAGE_IP_LOCAL_DELIVER,
	STAGE_TCP_RCV,
	STAGE_UDP_RCV,
	STAGE_SOCKET_QUEUE,
	STAGE_STACK_TOTAL,
};

/* per-hook hit counters, HOOK_NAMES in netpath/collect/trace.py */
enum np_hook {
	H_IRQ_ENTRY,
	H_IRQ_EXIT,
	H_SOFTIRQ_RAISE,
	H_SOFTIRQ_ENTRY,
	H_SOFTIRQ_EXIT,
	H_NAPI_POLL,
	H_GRO_ENTRY,
	H_GRO_EXIT,
	H_NETIF_RX,
	H_NRS_ENTRY,
	H_NRS_LIST_ENTRY,
	H_NRS,
	H_DATA_READY,
	H_COPY,
	H_CONSUME,
	H_KFREE,
	H_RECV_LENGTH,
	H_KP_IP_RCV,
	H_KP_IPV6_RCV,
	H_KP_IP_LOCAL,
	H_KP_IP6_INPUT,
	H_KP_TCP,
	H_KP_TCP6,
	H_KP_UDP,
	H_KP_UDP6,
	H_KP_NET_RX,
	H_KR_NET_RX,
	H_KP_DATA_READY,
	H_LOST_ROWS,	/* histogram map full */
	H_LOST_SKBS,	/* per-skb map update failed */
	H_SLOW,		/* slow events sent */
	H_MAX,
};

/* checkpoints of one skb */
enum np_cp {
	CP_HANDOFF,
	CP_CORE,
	CP_IPRCV,
	CP_LOCAL,
	CP_ENQ,
	CP_MAX,
};

struct np_hist_key {
	u16 stage;
	u16 slot;
	u32 ifindex;
	u32 netns;
	u32 cpu;
};

struct np_skb_state {
	u64 t[CP_MAX];
	u32 ifindex;
	u32 netns;
	u32 done;	/* bit per stage already recorded for this skb */
	u32 udp;	/* enqueued on a UDP socket: read through the socket's FIFO */
};

/*
 * UDP reads copy linear skbs without skb:skb_copy_datagram_iovec and may
 * free them later on another CPU, so a UDP read is sock:sock_recv_length
 * popping the oldest skb this socket had enqueued (datagrams are FIFO):
 * per socket a ring of (sequence, skb). A slot overwritten by a newer
 * datagram (more than RING queued) is skipped, so reads stay in step.
 */
#define RING 128

struct np_ring_slot {
	u64 seq;
	u64 skb;
};

struct np_sk_fifo {
	u64 head;
	u64 tail;
	struct np_ring_slot slot[RING];
};

struct np_cpu_state {
	u64 irq_start;
	u64 raise_ts;
	u64 netrx_start;
	u64 last_poll_end;
	u64 gro_start;
	u32 irq;
	u32 irq_ifindex;
	u32 gro_ifindex;
	u32 gro_netns;
	u32 in_netrx;
	u32 gro_match;
};

struct np_napi_key {
	u32 ifindex;
	u32 netns;
	u32 cpu;
};

struct np_napi_val {
	u64 polls;
	u64 work;
	u64 exhausted;
	u64 budget;
	u64 max_work;
};

struct np_slow_event {
	u64 ts_ns;
	u64 stage_ns[6];	/* netif_receive_skb, ip_rcv, ip_local_deliver, l4, stack_total, socket_queue */
	u32 cpu;
	u32 pid;
	u32 ifindex;
	u32 netns;
	u32 saddr[4];
	u32 daddr[4];
	u16 sport;
	u16 dport;
	u8 family;
	u8 l4proto;
	u16 pad;
	char comm[16];
};

#define NSTAGES		12
#define NSLOTS		320	/* up to 2^42 ns (73 minutes); longer lands in the last slot */

struct np_stage_hist {
	u64 slots[NSLOTS];
};

#if BY_IFACE
BPF_PERCPU_HASH(hist, struct np_hist_key, u64, HIST_ROWS);
#else
BPF_PERCPU_ARRAY(stage_hist, struct np_stage_hist, NSTAGES);
BPF_PERCPU_ARRAY(stage_max, u64, NSTAGES);	/* netpath zeroes it every interval */
#endif
BPF_PERCPU_ARRAY(hits, u64, H_MAX);
BPF_PERCPU_ARRAY(cpustate, struct np_cpu_state, 1);
BPF_TABLE("lru_hash", u64, struct np_skb_state, skbs, MAX_SKBS);
BPF_PERCPU_HASH(napi_stats, struct np_napi_key, struct np_napi_val, 1024);
BPF_HASH(nic_irqs, u32, u32, 256);	/* irq -> ifindex, filled by netpath */
#ifdef HAS_SOCK_SOCK_RECV_LENGTH
BPF_TABLE("lru_hash", u64, struct np_sk_fifo, fifos, 4096);
BPF_PERCPU_ARRAY(fifo_zero, struct np_sk_fifo, 1);	/* never written: a new socket's ring */
#endif

#ifdef FILTER_IFACE
BPF_HASH(iface_filter, u64, u8, 64);	/* netns inode << 32 | ifindex */
#endif

#if SLOWER_NS > 0
BPF_PERF_OUTPUT(slow);
#endif

static __always_inline void np_hit(int idx)
{
	u64 *v = hits.lookup(&idx);

	if (v)
		*v += 1;
}

static __always_inline u32 np_log2(u64 v)
{
	u32 r = 0;

	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) r += 1;
	return r;
}

/* 0..7 exact; then 8 linear sub-buckets per power of two */
static __always_inline u16 np_slot(u64 v)
{
	u32 l;

	if (v < 8)
		return v;
	l = np_log2(v);
	return (l - 2) * 8 + ((v >> (l - 3)) & 7);
}

static __always_inline void np_record(u32 stage, u64 delta, u32 ifindex, u32 netns)
{
	u32 slot = np_slot(delta);
#if BY_IFACE
	/* a breakdown by interface: one hash row per (stage, slot, iface[, cpu]) */
	struct np_hist_key k = {};
	u64 zero = 0, *v;

	k.stage = stage;
	k.slot = slot;
	k.ifindex = ifindex;
	k.netns = netns;
#if BY_CPU
	k.cpu = bpf_get_smp_processor_id();
#endif
	v = hist.lookup_or_try_init(&k, &zero);
	if (!v) {
		np_hit(H_LOST_ROWS);
		return;
	}
	*v += 1;
	k.slot = MAX_SLOT;
	v = hist.lookup_or_try_init(&k, &zero);
	if (v && *v < delta)
		*v = delta;
#else
	/* the common case: one per-CPU array lookup per sample */
	struct np_stage_hist *h = stage_hist.lookup(&stage);
	u64 *m;

	if (!h)
		return;
	if (slot >= NSLOTS)
		slot = NSLOTS - 1;
	h->slots[slot] += 1;
	m = stage_max.lookup(&stage);
	if (m && *m < delta)
		*m = delta;
#endif
}

static __always_inline struct np_cpu_state *np_cpu(void)
{
	int zero = 0;

	return cpustate.lookup(&zero);
}

/* --- filters: netns/iface from the device, flow from the headers --- */

static __always_inline int np_passes_flow(void *skb, unsigned char *head, u32 nh)
{
#if defined(FILTER_PROTO) || defined(FILTER_PORT) || defined(FILTER_HOST_FAMILY)
	struct np_flow flow = {};
	int parsed = np_parse_flow_at(skb, head, nh, &flow);

	return np_flow_matches(&flow, parsed);
#else
	return 1;
#endif
}

static __always_inline int np_passes_where(u32 netns, u32 ifindex)
{
#ifdef FILTER_NETNS
	if (netns != FILTER_NETNS)
		return 0;
#endif
#ifdef FILTER_IFACE
	u64 ifkey = ((u64)netns << 32) | ifindex;

	if (!iface_filter.lookup(&ifkey))
		return 0;
#endif
	return 1;
}

/* Before the stack sets network_header: skb->data is the L3 header. */
static __always_inline int np_rx_skb_passes(void *skb, u32 *ifindex, u32 *netns)
{
	void *dev = NULL;
	unsigned char *head = NULL, *data = NULL;

	*netns = np_skb_netns(skb, &dev);
	if (dev)
		NP_READ(*ifindex, dev, OFF_DEV_IFINDEX);
	if (!np_passes_where(*netns, *ifindex))
		return 0;
#if defined(FILTER_PROTO) || defined(FILTER_PORT) || defined(FILTER_HOST_FAMILY)
	NP_READ(head, skb, OFF_SKB_HEAD);
	NP_READ(data, skb, OFF_SKB_DATA);
	return np_passes_flow(skb, head, (u32)(data - head));
#else
	return 1;
#endif
}

/* --- hard IRQ --- */
#ifdef USE_HARDIRQ
RAW_TRACEPOINT_PROBE(irq_handler_entry)
{
	u32 irq = (u32)ctx->args[0];
	u32 *ifindex;
	struct np_cpu_state *c;

	np_hit(H_IRQ_ENTRY);
	ifindex = nic_irqs.lookup(&irq);
	if (!ifindex)
		return 0;
	c = np_cpu();
	if (!c)
		return 0;
	c->irq = irq;
	c->irq_ifindex = *ifindex;
	c->irq_start = bpf_ktime_get_ns();
	return 0;
}

RAW_TRACEPOINT_PROBE(irq_handler_exit)
{
	u32 irq = (u32)ctx->args[0];
	struct np_cpu_state *c;

	np_hit(H_IRQ_EXIT);
	c = np_cpu();
	if (!c || !c->irq_start || c->irq != irq)
		return 0;
	np_record(STAGE_HARDIRQ, bpf_ktime_get_ns() - c->irq_start, c->irq_ifindex, 0);
	c->irq_start = 0;
	return 0;
}
#endif

/* --- NET_RX softirq --- */
#ifdef USE_SOFTIRQ_WAIT
RAW_TRACEPOINT_PROBE(softirq_raise)
{
	struct np_cpu_state *c;

	np_hit(H_SOFTIRQ_RAISE);
	if ((u32)ctx->args[0] != NET_RX_VEC)
		return 0;
	c = np_cpu();
	if (c && !c->raise_ts)
		c->raise_ts = bpf_ktime_get_ns();
	return 0;
}
#endif

#if defined(USE_SOFTIRQ_WAIT) || defined(USE_NETRX_TP) || defined(HAS_IRQ_SOFTIRQ_ENTRY)
RAW_TRACEPOINT_PROBE(softirq_entry)
{
	struct np_cpu_state *c;
	u64 now;

	np_hit(H_SOFTIRQ_ENTRY);
	if ((u32)ctx->args[0] != NET_RX_VEC)
		return 0;
	c = np_cpu();
	if (!c)
		return 0;
	now = bpf_ktime_get_ns();
#ifdef USE_SOFTIRQ_WAIT
	if (c->raise_ts) {
		np_record(STAGE_SOFTIRQ_WAIT, now - c->raise_ts, 0, 0);
		c->raise_ts = 0;
	}
#endif
	c->netrx_start = now;
	c->last_poll_end = now;
	c->in_netrx = 1;
	return 0;
}
#endif

#if defined(USE_NETRX_TP) || defined(HAS_IRQ_SOFTIRQ_EXIT)
RAW_TRACEPOINT_PROBE(softirq_exit)
{
	struct np_cpu_state *c;

	np_hit(H_SOFTIRQ_EXIT);
	if ((u32)ctx->args[0] != NET_RX_VEC)
		return 0;
	c = np_cpu();
	if (!c || !c->in_netrx)
		return 0;
#ifdef USE_NETRX_TP
	np_record(STAGE_NET_RX_ACTION, bpf_ktime_get_ns() - c->netrx_start, 0, 0);
#endif
	c->in_netrx = 0;
	return 0;
}
#endif

/* --- NAPI poll: work against budget, poll time inside NET_RX --- */
#ifdef USE_NAPI
RAW_TRACEPOINT_PROBE(napi_poll)
{
	void *n = (void *)ctx->args[0];
	int work = (int)ctx->args[1], budget = (int)ctx->args[2];
	void *dev = NULL, *net = NULL;
	struct np_napi_key k = {};
	struct np_napi_val zero = {}, *v;
	struct np_cpu_state *c;
	u64 now = bpf_ktime_get_ns();

	np_hit(H_NAPI_POLL);
	NP_READ(dev, n, OFF_NAPI_DEV);
	if (dev) {
		NP_READ(k.ifindex, dev, OFF_DEV_IFINDEX);
		NP_READ(net, dev, OFF_DEV_ND_NET);
		if (net)
			NP_READ(k.netns, net, OFF_NET_NS_INUM);
	}
#if BY_CPU
	k.cpu = bpf_get_smp_processor_id();
#endif
	c = np_cpu();
	if (c && c->in_netrx) {
		np_record(STAGE_NAPI_POLL, now - c->last_poll_end, k.ifindex, k.netns);
		c->last_poll_end = now;
	}
#if !BY_IFACE
	k.ifindex = 0;
	k.netns = 0;
#endif
	v = napi_stats.lookup_or_try_init(&k, &zero);
	if (!v)
		return 0;
	v->polls += 1;
	if (work > 0)
		v->work += work;
	if (budget > 0 && work >= budget)
		v->exhausted += 1;
	if (budget > 0)
		v->budget = budget;
	if (work > 0 && (u64)work > v->max_work)
		v->max_work = work;
	return 0;
}
#endif

/* --- per-skb checkpoints --- */
#if TRACK_SKBS
static __always_inline void np_handoff(void *skb)
{
	struct np_skb_state st = {};
	u64 key = (u64)skb;

	if (!np_rx_skb_passes(skb, &st.ifindex, &st.netns))
		return;
	st.t[CP_HANDOFF] = bpf_ktime_get_ns();
	if (skbs.update(&key, &st))
		np_hit(H_LOST_SKBS);
}
#endif

#ifdef USE_GRO
RAW_TRACEPOINT_PROBE(napi_gro_receive_entry)
{
	void *skb = (void *)ctx->args[0];
	struct np_cpu_state *c;
	u32 ifindex = 0, netns = 0;
	int match;

	np_hit(H_GRO_ENTRY);
	match = np_rx_skb_passes(skb, &ifindex, &netns);
	c = np_cpu();
	if (c) {
		c->gro_match = match;
		c->gro_ifindex = ifindex;
		c->gro_netns = netns;
		c->gro_start = bpf_ktime_get_ns();
	}
#if TRACK_SKBS && defined(HAS_NET_NAPI_GRO_RECEIVE_ENTRY)
	if (match) {
		struct np_skb_state st = {};
		u64 key = (u64)skb;

		st.ifindex = ifindex;
		st.netns = netns;
		st.t[CP_HANDOFF] = c ? c->gro_start : bpf_ktime_get_ns();
		if (skbs.update(&key, &st))
			np_hit(H_LOST_SKBS);
	}
#endif
	return 0;
}

RAW_TRACEPOINT_PROBE(napi_gro_receive_exit)
{
	struct np_cpu_state *c;

	np_hit(H_GRO_EXIT);
	c = np_cpu();
	if (!c || !c->gro_start)
		return 0;
	if (c->gro_match)
		np_record(STAGE_GRO, bpf_ktime_get_ns() - c->gro_start, c->gro_ifindex, c->gro_netns);
	c->gro_start = 0;
	return 0;
}
#elif TRACK_SKBS && defined(HAS_NET_NAPI_GRO_RECEIVE_ENTRY)
RAW_TRACEPOINT_PROBE(napi_gro_receive_entry)
{
	np_hit(H_GRO_ENTRY);
	np_handoff((void *)ctx->args[0]);
	return 0;
}
#endif

#if TRACK_SKBS
#ifdef HAS_NET_NETIF_RX
RAW_TRACEPOINT_PROBE(netif_rx)
{
	np_hit(H_NETIF_RX);
	np_handoff((void *)ctx->args[0]);
	return 0;
}
#endif

#ifdef HAS_NET_NETIF_RECEIVE_SKB_ENTRY
RAW_TRACEPOINT_PROBE(netif_receive_skb_entry)
{
	np_hit(H_NRS_ENTRY);
	np_handoff((void *)ctx->args[0]);
	return 0;
}
#endif

#ifdef HAS_NET_NETIF_RECEIVE_SKB_LIST_ENTRY
RAW_TRACEPOINT_PROBE(netif_receive_skb_list_entry)
{
	np_hit(H_NRS_LIST_ENTRY);
	np_handoff((void *)ctx->args[0]);
	return 0;
}
#endif

/* __netif_receive_skb_core: the skb enters the protocol stack */
RAW_TRACEPOINT_PROBE(netif_receive_skb)
{
	void *skb = (void *)ctx->args[0];
	u64 key = (u64)skb, now = bpf_ktime_get_ns();
	struct np_skb_state *st, fresh = {};

	np_hit(H_NRS);
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
		return 0;
	}
	if (!np_rx_skb_passes(skb, &fresh.ifindex, &fresh.netns))
		return 0;
	fresh.t[CP_CORE] = now;
	if (skbs.update(&key, &fresh))
		np_hit(H_LOST_SKBS);
	return 0;
}

/* A checkpoint after `prev`: records stage `stage` once per skb. */
static __always_inline void np_checkpoint(void *skb, int prev, int cp, u32 stage)
{
	u64 key = (u64)skb, now;
	struct np_skb_state *st = skbs.lookup(&key);

	if (!st || !st->t[prev] || (st->done & (1 << stage)))
		return;
	now = bpf_ktime_get_ns();
	st->done |= 1 << stage;
	if (cp < CP_MAX)
		st->t[cp] = now;
	np_record(stage, now - st->t[prev], st->ifindex, st->netns);
}

#if defined(__x86_64__)
#define KP_ARG0(ctx) (((u64 *)(ctx))[14])	/* pt_regs->di */
#elif defined(__aarch64__)
#define KP_ARG0(ctx) (((u64 *)(ctx))[0])	/* user_pt_regs->regs[0] */
#else
#define KP_ARG0(ctx) 0
#endif

#ifdef USE_KP_IP_RCV
int kp_ip_rcv(void *ctx)
{
	np_hit(H_KP_IP_RCV);
	np_checkpoint((void *)KP_ARG0(ctx), CP_CORE, CP_IPRCV, STAGE_IP_RCV);
	return 0;
}

int kp_ipv6_rcv(void *ctx)
{
	np_hit(H_KP_IPV6_RCV);
	np_checkpoint((void *)KP_ARG0(ctx), CP_CORE, CP_IPRCV, STAGE_IP_RCV);
	return 0;
}
#endif

#ifdef USE_KP_IP_LOCAL
int kp_ip_local_deliver(void *ctx)
{
	np_hit(H_KP_IP_LOCAL);
	np_checkpoint((void *)KP_ARG0(ctx), CP_IPRCV, CP_LOCAL, STAGE_IP_LOCAL_DELIVER);
	return 0;
}

int kp_ip6_input(void *ctx)
{
	np_hit(H_KP_IP6_INPUT);
	np_checkpoint((void *)KP_ARG0(ctx), CP_IPRCV, CP_LOCAL, STAGE_IP_LOCAL_DELIVER);
	return 0;
}
#endif

#ifdef USE_KP_TCP
int kp_tcp_v4_rcv(void *ctx)
{
	np_hit(H_KP_TCP);
	np_checkpoint((void *)KP_ARG0(ctx), CP_LOCAL, CP_MAX, STAGE_TCP_RCV);
	return 0;
}

int kp_tcp_v6_rcv(void *ctx)
{
	np_hit(H_KP_TCP6);
	np_checkpoint((void *)KP_ARG0(ctx), CP_LOCAL, CP_MAX, STAGE_TCP_RCV);
	return 0;
}
#endif

#ifdef USE_KP_UDP
int kp_udp_rcv(void *ctx)
{
	np_hit(H_KP_UDP);
	np_checkpoint((void *)KP_ARG0(ctx), CP_LOCAL, CP_MAX, STAGE_UDP_RCV);
	return 0;
}

int kp_udpv6_rcv(void *ctx)
{
	np_hit(H_KP_UDP6);
	np_checkpoint((void *)KP_ARG0(ctx), CP_LOCAL, CP_MAX, STAGE_UDP_RCV);
	return 0;
}
#endif

/* --- socket: enqueue (sk_data_ready, tail of sk_receive_queue) -> read --- */
#if defined(USE_SOCKQ) || defined(USE_STACK_TOTAL)
static __always_inline int np_on_data_ready(void *sk)
{
	void *skb = NULL, *net = NULL;
	u64 key, now;
	struct np_skb_state *st, fresh = {};
	unsigned char *head = NULL;
	u16 nh = NP_UNSET_HEADER, sk_proto = 0, family = 0;
	u32 udp;

	NP_READ(family, sk, OFF_SK_FAMILY);
	if (family != NP_AF_INET && family != NP_AF_INET6)
		return 0;	/* unix, netlink, ...: not the IP receive path */
	NP_READ(skb, sk, OFF_SK_RCVQ_PREV);
	if (!skb || skb == (void *)((char *)sk + OFF_SK_RCVQ))
		return 0;	/* empty queue: nothing was enqueued */
	key = (u64)skb;
	now = bpf_ktime_get_ns();
	NP_READ(sk_proto, sk, OFF_SK_PROTOCOL);
	udp = sk_proto == NP_IPPROTO_UDP || sk_proto == NP_IPPROTO_UDPLITE;
	st = skbs.lookup(&key);
	if (st) {
		if (st->t[CP_ENQ])
			return 0;	/* already stamped (TCP coalescing, spurious wakeup) */
		st->t[CP_ENQ] = now;
		st->udp = udp;
#ifdef USE_STACK_TOTAL
		if (st->t[CP_CORE]) {
			st->done |= 1 << STAGE_STACK_TOTAL;
			np_record(STAGE_STACK_TOTAL, now - st->t[CP_CORE], st->ifindex, st->netns);
		}
#endif
		goto queued;
	}
#ifdef USE_SOCKQ
	/* not seen on the way in: the socket side still measures it */
	NP_READ(fresh.ifindex, skb, OFF_SKB_SKB_IIF);
	NP_READ(net, sk, OFF_SK_NET);
	if (net)
		NP_READ(fresh.netns, net, OFF_NET_NS_INUM);
#ifdef FILTER_NETNS
	if (fresh.netns != FILTER_NETNS)
		return 0;	/* a socket of another namespace: never ours */
#endif
	NP_READ(head, skb, OFF_SKB_HEAD);
	NP_READ(nh, skb, OFF_SKB_NETWORK_HEADER);
	if (np_passes_where(fresh.netns, fresh.ifindex) && np_passes_flow(skb, head, nh)) {
		fresh.t[CP_ENQ] = now;
		fresh.udp = udp;
		if (skbs.update(&key, &fresh))
			np_hit(H_LOST_SKBS);
	}
#endif
queued:
#if defined(USE_SOCKQ) && defined(HAS_SOCK_SOCK_RECV_LENGTH)
	if (udp) {
		/* every datagram goes in the FIFO, tracked or not, so reads stay in step */
		u64 skey = (u64)sk;
		int zero = 0;
		struct np_sk_fifo *fifo, *init;
		struct np_ring_slot *slot;

		fifo = fifos.lookup(&skey);
		if (!fifo) {
			init = fifo_zero.lookup(&zero);
			if (!init)
				return 0;
			fifos.update(&skey, init);
			fifo = fifos.lookup(&skey);
			if (!fifo)
				return 0;
		}
		slot = &fifo->slot[fifo->tail & (RING - 1)];
		slot->seq = fifo->tail;
		slot->skb = key;
		fifo->tail++;
	}
#endif
	return 0;
}

#ifdef USE_KP_DATA_READY
int kp_sock_def_readable(void *ctx)
{
	np_hit(H_KP_DATA_READY);
	return np_on_data_ready((void *)KP_ARG0(ctx));
}
#else
RAW_TRACEPOINT_PROBE(sk_data_ready)
{
	np_hit(H_DATA_READY);
	return np_on_data_ready((void *)ctx->args[0]);
}
#endif
#endif

#ifdef USE_SOCKQ
static __always_inline void np_emit_slow(void *ctx, void *skb, struct np_skb_state *st, u64 now, u64 queued)
{
#if SLOWER_NS > 0
	u64 total = st->t[CP_CORE] ? st->t[CP_ENQ] - st->t[CP_CORE] : 0;
	struct np_slow_event e = {};
	struct np_flow flow = {};

	if (queued <= SLOWER_NS && total <= SLOWER_NS)
		return;
	e.ts_ns = now;
	if (st->t[CP_HANDOFF] && st->t[CP_CORE])
		e.stage_ns[0] = st->t[CP_CORE] - st->t[CP_HANDOFF];
	if (st->t[CP_CORE] && st->t[CP_IPRCV])
		e.stage_ns[1] = st->t[CP_IPRCV] - st->t[CP_CORE];
	if (st->t[CP_IPRCV] && st->t[CP_LOCAL])
		e.stage_ns[2] = st->t[CP_LOCAL] - st->t[CP_IPRCV];
	if (st->t[CP_LOCAL])
		e.stage_ns[3] = st->t[CP_ENQ] - st->t[CP_LOCAL];
	e.stage_ns[4] = total;
	e.stage_ns[5] = queued;
	e.cpu = bpf_get_smp_processor_id();
	e.pid = bpf_get_current_pid_tgid() >> 32;
	e.ifindex = st->ifindex;
	e.netns = st->netns;
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
	np_hit(H_SLOW);
#endif
}

/* The application reads the skb: first copy to user space, or its free after a linear UDP copy. */
static __always_inline void np_read_skb(void *ctx, void *skb)
{
	u64 key = (u64)skb, now, queued;
	struct np_skb_state *st = skbs.lookup(&key);

	if (!st)
		return;
	if (st->t[CP_ENQ] && !(st->done & (1 << STAGE_SOCKET_QUEUE))) {
		now = bpf_ktime_get_ns();
		queued = now - st->t[CP_ENQ];
		np_record(STAGE_SOCKET_QUEUE, queued, st->ifindex, st->netns);
		np_emit_slow(ctx, skb, st, now, queued);
	}
	skbs.delete(&key);
}

#ifdef HAS_SOCK_SOCK_RECV_LENGTH
#define UDP_BY_RING 1
#else
#define UDP_BY_RING 0
#endif

RAW_TRACEPOINT_PROBE(skb_copy_datagram_iovec)
{
	u64 key = ctx->args[0];
	struct np_skb_state *st;

	np_hit(H_COPY);
	if (UDP_BY_RING) {
		st = skbs.lookup(&key);
		if (!st || st->udp)
			return 0;	/* UDP reads are counted at sock_recv_length */
	}
	np_read_skb(ctx, (void *)key);
	return 0;
}

#ifdef HAS_SKB_CONSUME_SKB
RAW_TRACEPOINT_PROBE(consume_skb)
{
	u64 key = ctx->args[0];

	np_hit(H_CONSUME);
	if (UDP_BY_RING)
		skbs.delete(&key);	/* freed: forget it (a UDP free may come long after the read) */
	else
		np_read_skb(ctx, (void *)key);
	return 0;
}
#endif

#ifdef HAS_SOCK_SOCK_RECV_LENGTH
RAW_TRACEPOINT_PROBE(sock_recv_length)
{
	int ret = (int)ctx->args[1], flags = (int)ctx->args[2];
	u64 skey = ctx->args[0], seq, skb;
	struct np_sk_fifo *fifo;
	struct np_ring_slot *slot;

	np_hit(H_RECV_LENGTH);
	if (ret < 0 || (flags & NP_MSG_PEEK))
		return 0;
	fifo = fifos.lookup(&skey);
	if (!fifo || fifo->head == fifo->tail)
		return 0;	/* not UDP, or nothing we saw enqueued */
	seq = fifo->head++;
	slot = &fifo->slot[seq & (RING - 1)];
	if (slot->seq != seq)
		return 0;	/* overwritten: more than RING datagrams were queued */
	skb = slot->skb;
	np_read_skb(ctx, (void *)skb);
	return 0;
}
#endif
#endif /* USE_SOCKQ */

#ifdef HAS_SKB_KFREE_SKB
/* a dropped skb: forget it so a reused address starts clean */
RAW_TRACEPOINT_PROBE(kfree_skb)
{
	u64 key = ctx->args[0];

	np_hit(H_KFREE);
	skbs.delete(&key);
	return 0;
}
#endif
#endif /* TRACK_SKBS */

#ifdef USE_KP_NET_RX_ACTION
int kp_net_rx_action(void *ctx)
{
	struct np_cpu_state *c = np_cpu();

	np_hit(H_KP_NET_RX);
	if (c) {
		c->netrx_start = bpf_ktime_get_ns();
		c->last_poll_end = c->netrx_start;
		c->in_netrx = 1;
	}
	return 0;
}

int kr_net_rx_action(void *ctx)
{
	struct np_cpu_state *c = np_cpu();

	np_hit(H_KR_NET_RX);
	if (c && c->in_netrx) {
		np_record(STAGE_NET_RX_ACTION, bpf_ktime_get_ns() - c->netrx_start, 0, 0);
		c->in_netrx = 0;
	}
	return 0;
}
#endif
