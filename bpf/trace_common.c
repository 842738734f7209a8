// SPDX-License-Identifier: GPL-2.0
/*
 * netpath trace: per-stage receive-path latency, aggregated in the kernel.
 * This unit is the state every stage family shares (per-CPU state, the
 * histograms, the per-skb map, the filters); netpath places after it only
 * the units its plan needs, in this order: trace_irq.c (hard IRQ, NET_RX
 * softirq, NAPI poll), trace_skb.c (GRO, driver hand-off, netif_receive_skb),
 * trace_kprobe.c (kprobe checkpoints), trace_sock.c (socket enqueue and the
 * application's read). They are one C text: BCC rewrites map calls only in
 * the main source, so the units are .c files, not headers.
 *
 * Per-invocation stages (hardirq, softirq_wait, net_rx_action, napi_poll,
 * gro) keep per-CPU start times. Per-packet stages keep one LRU entry per
 * skb address with a timestamp per checkpoint; each stage is the delta
 * between two consecutive checkpoints of the same skb. Cost matters here
 * (every hook runs per packet), so:
 *  - hook hit counters, per-CPU state and (without --per-iface) NAPI
 *    counters share one per-CPU array value: one lookup per hook;
 *  - no kernel memory is read for interface/namespace or headers unless a
 *    filter, --per-iface or --slower needs it (NEED_WHERE, NEED_FLOW), and
 *    neighbouring fields come in one probe read (*_SPAN_*);
 *  - netif_receive_skb -> sk_data_ready runs synchronously on one CPU inside
 *    one softirq, so the skb in __netif_receive_skb_core is also kept in a
 *    per-CPU slot; sk_data_ready finds it there without a hash lookup;
 *  - a UDP skb leaves the per-skb map at sk_data_ready: its timestamps travel
 *    in its socket's FIFO slot to sock:sock_recv_length. Every sample goes into
 * a log2 histogram with 8 linear sub-buckets per power of two (slot), keyed
 * by stage [, ifindex+netns] [, cpu]; slot MAX_SLOT holds the maximum and
 * slot SUM_SLOT the sum of all samples (the stage's total time).
 *
 * RX_TSTAMP=1 (the default on 6.1+ without kprobe checkpoints) replaces the
 * driver hand-off hooks and the hand-off table with the kernel's own receive
 * timestamp: netpath keeps software RX timestamping on (a socket with
 * SO_TIMESTAMPNS), so netif_rx / netif_receive_skb_internal stamp skb->tstamp
 * with CLOCK_REALTIME, and netif_receive_skb reads it against
 * bpf_ktime_get_tai_ns() - TAI_OFFSET_NS (TAI is REALTIME plus a whole number
 * of seconds, from the same timekeeper, so the delta is exact). The per-packet
 * hooks then all use the TAI clock, one read per hook. Nothing is kept per skb
 * between hand-off and netif_receive_skb, so netif_rx, napi_gro_receive_entry
 * (as a hand-off), netif_receive_skb_[list_]entry, consume_skb and kfree_skb
 * are not attached for this: a UDP datagram costs 7 hook runs instead of 9.
 * A TCP skb gets its per-skb entry only at sk_data_ready (written whole, so a
 * reused address starts clean) and loses it at its first copy to user space;
 * one freed unread (a socket closed with data queued) is left to the LRU.
 *
 * Compile-time numbers: USE_* (stages from the attach plan; the kprobe
 * checkpoint stages need none: their unit is included or not), HAS_* (optional
 * tracepoints), TRACK_SKBS (any per-packet stage), KP_CHECKPOINTS (a kprobe
 * checkpoint stage), RX_TSTAMP and TAI_OFFSET_NS, BY_IFACE, BY_CPU, NAPI_BY_DEV
 * (NAPI counters per device, implied by BY_IFACE), BY_OWNER (socket_queue per
 * reading process), OWNER_ROWS, FILTER_*, SLOWER_NS, MAX_SKBS,
 * HIST_ROWS, NAPI_ROWS, RING and the OFF_* struct offsets. The stage and
 * hook enums and every struct netpath reads back (np_hist_key,
 * np_cpu_counters, np_slow_event, ...) come from netpath/contract.py,
 * compiled ahead of this file.
 */
#include "netpath.h"

#define NP_IPPROTO_UDPLITE 136

#if BY_IFACE || defined(FILTER_NETNS) || defined(FILTER_IFACE) || SLOWER_NS > 0
#define NEED_WHERE 1	/* ifindex + netns of each skb are used */
#else
#define NEED_WHERE 0
#endif
/* NEED_FLOW (a filter on the headers) comes from netpath.h */

#ifndef RX_TSTAMP
#define RX_TSTAMP 0
#endif
#if RX_TSTAMP
/* skb->tstamp is CLOCK_REALTIME: compare it with TAI less the TAI offset */
#define NP_PKT_NOW()	bpf_ktime_get_tai_ns()
/* a stamp further back than this is not this hop's (a sender's EDT time, a stale clock) */
#define TSTAMP_MAX_NS	10000000000ULL
#else
#define NP_PKT_NOW()	bpf_ktime_get_ns()
#endif

/*
 * SAMPLE_SHIFT > 0: time one NET_RX cycle (softirq_wait, net_rx_action and
 * its napi polls) in 2^SAMPLE_SHIFT, and one packet in 2^SAMPLE_SHIFT from
 * netif_receive_skb on, each picked by a per-CPU xorshift. A clock read
 * costs more than the rest of a hook (~21 ns of ~55 here), so an untimed
 * run only counts: every stage's exact count is in ctr.seen, its histogram
 * holds the timed ones. Breakdowns (--per-iface, --per-cpu, --per-socket,
 * --slower) and --exact are built with SAMPLE_SHIFT 0.
 */
#ifndef SAMPLE_SHIFT
#define SAMPLE_SHIFT 0
#endif
#ifndef SOCKQ_WATCH
#define SOCKQ_WATCH 0	/* trace_watch.c: socket_queue of UDP in the always-on build */
#endif
#ifndef SOCKQ_AT_WAKEUP
#define SOCKQ_AT_WAKEUP 0	/* trace_sock.c: the same build's UDP count at the wakeup (no sock_recv_length) */
#endif
/* t_enq of a datagram followed but not timed: no real timestamp is 1 */
#define NP_UNTIMED	1
/* t_enq of an entry whose skb was read or freed before sk_data_ready stamped it (np_read_skb) */
#define NP_ENQ_EARLY	2

/*
 * TP_BTF=1 (RX_TSTAMP builds where the kernel allows it): netif_receive_skb
 * and sk_data_ready are loaded by netpath as BTF-typed raw tracepoints, so
 * their skb and sock are typed pointers the verifier lets them load from
 * directly (NP_LOAD: one instruction, a faulting load reads 0) instead of a
 * probe-read helper call. Everything else stays a raw tracepoint.
 */
#ifndef TP_BTF
#define TP_BTF 0
#endif
#if TP_BTF
#define NP_BTF_PROBE(event)	int np_btf_##event(struct bpf_raw_tracepoint_args *ctx)
/* the empty asm hides the pointer's origin from BCC, which would turn the load into a probe read */
#define NP_LOAD(dst, base, off)	do {					\
		u64 __np_p = (u64)(base);				\
		asm volatile("" : "+r"(__np_p));			\
		dst = *(typeof(dst) *)(__np_p + (off));			\
	} while (0)
#else
#define NP_BTF_PROBE(event)	RAW_TRACEPOINT_PROBE(event)
#define NP_LOAD(dst, base, off)	NP_READ(dst, base, off)
#endif
#if TP_BTF && (defined(USE_KP_DATA_READY) || !RX_TSTAMP)
#error "TP_BTF: only the receive-timestamp build's tracepoint hooks take typed pointers"
#endif

/* checkpoints of one skb */
enum np_cp {
	CP_HANDOFF,
	CP_CORE,
	CP_IPRCV,
	CP_LOCAL,
	CP_ENQ,
	CP_MAX,
};

struct np_skb_state {
	u64 t[CP_MAX];
	u32 ifindex;
	u32 netns;
	u32 done;	/* bit per stage already recorded for this skb */
	u32 udp;	/* enqueued on a UDP socket: read through the socket's FIFO */
};

/* the skb this CPU's __netif_receive_skb_core is working on */
#define CUR_TRACKED	1	/* passed the filters at netif_receive_skb */
#define CUR_ENQUEUED	2	/* sk_data_ready saw it */
#define CUR_IN_MAP	4	/* it also has an entry in skbs */
#define CUR_TIMED	8	/* sampled: its stages are timed, not only counted */
#define NESTED_NS	10000000ULL	/* a nested netif_receive_skb round comes within 10 ms */

struct np_cur_skb {
	u64 skb;
	u64 t[CP_MAX];
	u32 ifindex;
	u32 netns;
	u32 flags;
	u32 pad;
};

struct np_cpu_state {
	struct np_cpu_counters ctr;	/* first: netpath reads this part */
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
	struct np_cur_skb cur;
	/* NAPI_BY_DEV: the device of the last NAPI instance polled here, re-read at most every second */
	u64 napi;
	u64 napi_at;
	u32 napi_ifindex;
	u32 napi_netns;
	u64 rng;	/* SAMPLE_SHIFT: xorshift64 state, seeded on first use */
	u32 raised;	/* NET_RX raised since its last run here */
	u32 cycle_timed;	/* this NET_RX cycle is sampled */
};

/*
 * np_slot() tops out at 495 (2^64 ns): a power-of-two table lets a mask, not
 * a branch, bound the index. Linux 6.1's verifier rejects the clamp clang
 * emits for a branch (it walks the impossible side with inverted bounds).
 */

#if NAPI_BY_DEV
BPF_PERCPU_HASH(napi_stats, struct np_napi_key, struct np_napi_val, NAPI_ROWS);
#endif
#if BY_IFACE
BPF_PERCPU_HASH(hist, struct np_hist_key, u64, HIST_ROWS);
#else
BPF_PERCPU_ARRAY(stage_hist, struct np_stage_hist, NSTAGES);
BPF_PERCPU_ARRAY(stage_max, u64, NSTAGES);	/* netpath zeroes it every interval */
#endif
BPF_PERCPU_ARRAY(cpustate, struct np_cpu_state, 1);
BPF_TABLE("lru_hash", u64, struct np_skb_state, skbs, MAX_SKBS);
/*
 * The socket span (family .. receive queue tail, 168 bytes here) pays only
 * when the namespace inside it is used: measured, one 168-byte probe read
 * costs 20 ns over none, two small reads 12 ns.
 */
#if defined(SK_SPAN_OFF) && !NEED_WHERE
#undef SK_SPAN_OFF
#endif
BPF_HASH(nic_irqs, u32, u32, 256);	/* irq -> ifindex, filled by netpath */

#if SLOWER_NS > 0
BPF_PERF_OUTPUT(slow);
#endif

static __always_inline struct np_cpu_state *np_cpu(void)
{
	int zero = 0;

	return cpustate.lookup(&zero);
}

/* every hook starts here: its hit counter and this CPU's state, one lookup */
static __always_inline struct np_cpu_state *np_enter(int idx)
{
	struct np_cpu_state *c = np_cpu();

	if (c)
		c->ctr.hits[idx] += 1;
	return c;
}

static __always_inline void np_hit_c(struct np_cpu_state *c, int idx)
{
	if (c)
		c->ctr.hits[idx] += 1;
}

static __always_inline void np_hit(int idx)
{
	np_hit_c(np_cpu(), idx);
}

/* the exact count of a stage whose timing is sampled (netpath uses it only then) */
static __always_inline void np_seen(struct np_cpu_state *c, u32 stage)
{
#if SAMPLE_SHIFT > 0
	if (c && stage < NSTAGES)
		c->ctr.seen[stage] += 1;
#endif
}

/*
 * The exact count of a stage some of whose runs cannot be timed in any build
 * (Stage.seen_always: socket_queue, whose reads past a socket's ring are
 * counted, untimed; softirq_wait, whose runs with no raise seen are): netpath
 * takes its count from here, the timed from the histogram.
 */
static __always_inline void np_seen_always(struct np_cpu_state *c, u32 stage)
{
	/* atomic: a softirq's program may count here while a read's, interrupted, is half way */
	if (c && stage < NSTAGES)
		__sync_fetch_and_add(&c->ctr.seen[stage], 1);
}

/* time this one? 1 in 2^SAMPLE_SHIFT, independent of the traffic's pattern */
static __always_inline int np_pick(struct np_cpu_state *c)
{
#if SAMPLE_SHIFT > 0
	u64 x;

	if (!c)
		return 1;
	x = c->rng;

	if (!x)
		x = bpf_get_prandom_u32() | 1;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	c->rng = x;
	return (x >> (64 - SAMPLE_SHIFT)) == 0;
#else
	return 1;
#endif
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
		np_hit(H_LOST_SAMPLES);
		return;
	}
	*v += 1;
	k.slot = MAX_SLOT;
	v = hist.lookup_or_try_init(&k, &zero);
	if (v && *v < delta)
		*v = delta;
	k.slot = SUM_SLOT;
	v = hist.lookup_or_try_init(&k, &zero);
	if (v)
		*v += delta;
#else
	/* the common case: per-CPU array lookups, inlined by the verifier */
	struct np_stage_hist *h = stage_hist.lookup(&stage);
	u64 *m;

	if (!h)
		return;
	h->slots[slot & (NSLOTS - 1)] += 1;
	h->slots[SUM_SLOT] += delta;
	m = stage_max.lookup(&stage);
	if (m && *m < delta)
		*m = delta;
#endif
}

/* --- filters: netns/iface from the device, flow from the headers --- */


/*
 * Before the stack sets network_header: skb->data is the L3 header.
 * Fills ifindex/netns only when something uses them (NEED_WHERE).
 */
static __always_inline int np_rx_skb_passes(void *skb, u32 *ifindex, u32 *netns)
{
#if NEED_WHERE
	void *dev = NULL, *net;

	NP_READ(dev, skb, OFF_SKB_DEV);
	net = np_dev_where(dev, ifindex, netns);
	if (!np_passes_where(*netns, *ifindex) || !np_net_passes(net))
		return 0;
#endif
#if NEED_FLOW
	struct np_flow flow = {};
	unsigned char *head = NULL, *data = NULL;
	u16 proto = 0;
#ifdef SKB_RX_SPAN_OFF
	/* protocol, head and data: one read */
	u8 span[SKB_RX_SPAN_LEN];

	if (bpf_probe_read_kernel(span, sizeof(span), (char *)skb + SKB_RX_SPAN_OFF))
		return 0;
	NP_SPAN_GET(proto, span, SKB_RX_SPAN_OFF, OFF_SKB_PROTOCOL);
	NP_SPAN_GET(head, span, SKB_RX_SPAN_OFF, OFF_SKB_HEAD);
	NP_SPAN_GET(data, span, SKB_RX_SPAN_OFF, OFF_SKB_DATA);
#else
	NP_READ(proto, skb, OFF_SKB_PROTOCOL);
	NP_READ(head, skb, OFF_SKB_HEAD);
	NP_READ(data, skb, OFF_SKB_DATA);
#endif
	flow.l3proto = np_ntohs(proto);
	return np_flow_matches(&flow, np_parse_l3(head, (u32)(data - head), &flow));
#else
	return 1;
#endif
}

#if SOCKQ_WATCH || SOCKQ_AT_WAKEUP
/* the socket's namespace passes --netns (every one passes without it) */
static __always_inline int np_sk_in_netns(void *sk)
{
#ifdef FILTER_NETNS
	void *net = NULL;
	u32 inum = 0;

	NP_LOAD(net, sk, OFF_SK_NET);
	if (!net)
		return 0;
	NP_READ(inum, net, OFF_NET_NS_INUM);
	return inum == FILTER_NETNS && np_net_passes(net);
#else
	return 1;
#endif
}

/*
 * 1 when a queued skb has left its socket's queue (or cannot be read):
 * __skb_unlink() clears skb->next, and every queued skb has a non-NULL next
 * (the following skb or the queue head). UDP's reader_queue keeps the links
 * when the kernel splices the receive queue onto it.
 */
static __always_inline int np_skb_unlinked(u64 skb)
{
	u64 next = 0;

	if (bpf_probe_read_kernel(&next, sizeof(next), (void *)(skb + OFF_SKB_NEXT)))
		return 1;
	return !next;
}
#endif

/* the first argument of a kprobed function, from its pt_regs */
#if defined(__x86_64__)
#define KP_ARG0(ctx) (((u64 *)(ctx))[14])	/* pt_regs->di */
#elif defined(__aarch64__)
#define KP_ARG0(ctx) (((u64 *)(ctx))[0])	/* user_pt_regs->regs[0] */
#else
#define KP_ARG0(ctx) 0
#endif
