// SPDX-License-Identifier: GPL-2.0
/*
 * netpath trace: per-stage receive-path latency, aggregated in the kernel.
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
 * Compile-time numbers: USE_* (stages from the attach plan), HAS_* (optional
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

#define NET_RX_VEC	3
#define NP_AF_INET	2
#define NP_AF_INET6	10
#define NP_IPPROTO_UDPLITE 136
#define NP_MSG_PEEK	2

#if BY_IFACE || defined(FILTER_NETNS) || defined(FILTER_IFACE) || SLOWER_NS > 0
#define NEED_WHERE 1	/* ifindex + netns of each skb are used */
#else
#define NEED_WHERE 0
#endif
#if defined(FILTER_PROTO) || defined(FILTER_PORT) || defined(FILTER_HOST_FAMILY)
#define NEED_FLOW 1
#else
#define NEED_FLOW 0
#endif

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
/* t_enq of a datagram followed but not timed: no real timestamp is 1 */
#define NP_UNTIMED	1

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

/*
 * UDP reads copy linear skbs without skb:skb_copy_datagram_iovec and may
 * free them later on another CPU, so a UDP read is sock:sock_recv_length
 * popping the oldest skb this socket had enqueued (datagrams are FIFO):
 * per socket a ring of (sequence, enqueue time[, iface][, skb and its
 * checkpoints for --slower]). A slot overwritten by a newer datagram (more
 * than RING queued) is skipped, so reads stay in step. t_enq == 0: a
 * datagram the trace does not follow.
 */
/* RING (slots per socket, a power of two) comes from netpath as a -D number */

struct np_ring_slot {
	u64 seq;
	u64 t_enq;
#if NEED_WHERE
	u32 ifindex;
	u32 netns;
#endif
#if SLOWER_NS > 0
	u64 skb;
	u64 t[CP_MAX];	/* every checkpoint, for the slow-packet event */
#endif
};

/*
 * head is the reader's (another CPU, usually), tail the enqueuing softirq's:
 * a cache line each, so neither write takes the other's line away.
 */
struct np_sk_fifo {
	u64 head;
	u64 head_pad[7];
	u64 tail;
	u64 tail_pad[7];
	struct np_ring_slot slot[RING];
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
/*
 * A/B knobs for measurement only: SKB_MAP_KIND=2 (per-CPU LRU lists,
 * BPF_F_NO_COMMON_LRU) measured no faster here than the common LRU and splits
 * capacity per CPU; NO_PEND turns the hand-off table off; NO_SK_SPAN reads
 * sock fields one by one.
 */
#if SKB_MAP_KIND == 2
BPF_F_TABLE("lru_hash", u64, struct np_skb_state, skbs, MAX_SKBS, BPF_F_NO_COMMON_LRU);
#else
BPF_TABLE("lru_hash", u64, struct np_skb_state, skbs, MAX_SKBS);
#endif
#if TRACK_SKBS && !defined(NO_PEND) && !RX_TSTAMP
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
#ifdef NO_SK_SPAN
#undef SK_SPAN_OFF
#endif
/*
 * The socket span (family .. receive queue tail, 168 bytes here) pays only
 * when the namespace inside it is used: measured, one 168-byte probe read
 * costs 20 ns over none, two small reads 12 ns.
 */
#if defined(SK_SPAN_OFF) && !NEED_WHERE
#undef SK_SPAN_OFF
#endif
BPF_HASH(nic_irqs, u32, u32, 256);	/* irq -> ifindex, filled by netpath */
#ifdef HAS_SOCK_SOCK_RECV_LENGTH
BPF_TABLE("lru_hash", u64, struct np_sk_fifo, fifos, 4096);
BPF_PERCPU_ARRAY(fifo_zero, struct np_sk_fifo, 1);	/* never written: a new socket's ring */
#endif

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
	void *dev = NULL;

	NP_READ(dev, skb, OFF_SKB_DEV);
	np_dev_where(dev, ifindex, netns);
	if (!np_passes_where(*netns, *ifindex))
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

/* --- hard IRQ --- */
#ifdef USE_HARDIRQ
RAW_TRACEPOINT_PROBE(irq_handler_entry)
{
	u32 irq = (u32)ctx->args[0];
	u32 *ifindex;
	struct np_cpu_state *c = np_enter(H_IRQ_ENTRY);

	if (!c)
		return 0;
	ifindex = nic_irqs.lookup(&irq);
	if (!ifindex)
		return 0;
	c->irq = irq;
	c->irq_ifindex = *ifindex;
	c->irq_start = bpf_ktime_get_ns();
	return 0;
}

RAW_TRACEPOINT_PROBE(irq_handler_exit)
{
	u32 irq = (u32)ctx->args[0];
	struct np_cpu_state *c = np_enter(H_IRQ_EXIT);

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
	struct np_cpu_state *c = np_enter(H_SOFTIRQ_RAISE);

	if ((u32)ctx->args[0] != NET_RX_VEC || !c || c->raised)
		return 0;
	c->raised = 1;	/* the first raise since the last run: this cycle's wait starts */
	c->cycle_timed = np_pick(c);
	c->raise_ts = c->cycle_timed ? bpf_ktime_get_ns() : 0;
	return 0;
}
#endif

#if defined(USE_SOFTIRQ_WAIT) || defined(USE_NETRX_TP) || defined(HAS_IRQ_SOFTIRQ_ENTRY)
RAW_TRACEPOINT_PROBE(softirq_entry)
{
	struct np_cpu_state *c = np_enter(H_SOFTIRQ_ENTRY);
	u64 now = 0;
	int timed;

	if ((u32)ctx->args[0] != NET_RX_VEC || !c)
		return 0;
#ifdef USE_SOFTIRQ_WAIT
	/* raised before netpath attached, or by a path softirq_raise misses: decided here */
	timed = c->raised ? c->cycle_timed : np_pick(c);
	if (timed)
		now = bpf_ktime_get_ns();
	if (c->raised) {
		np_seen(c, STAGE_SOFTIRQ_WAIT);
		if (c->raise_ts)
			np_record(STAGE_SOFTIRQ_WAIT, now - c->raise_ts, 0, 0);
	}
	c->raised = 0;
	c->raise_ts = 0;
#else
	timed = np_pick(c);
	if (timed)
		now = bpf_ktime_get_ns();
#endif
	c->cycle_timed = timed;
	c->netrx_start = now;
	c->last_poll_end = now;
	c->in_netrx = 1;
	return 0;
}
#endif

#if defined(USE_NETRX_TP) || defined(HAS_IRQ_SOFTIRQ_EXIT)
RAW_TRACEPOINT_PROBE(softirq_exit)
{
	struct np_cpu_state *c = np_enter(H_SOFTIRQ_EXIT);

	if ((u32)ctx->args[0] != NET_RX_VEC)
		return 0;
	if (!c || !c->in_netrx)
		return 0;
#ifdef USE_NETRX_TP
	np_seen(c, STAGE_NET_RX_ACTION);
	if (c->cycle_timed)
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
	int work = (int)ctx->args[1], budget = (int)ctx->args[2];
	struct np_napi_val *v;
	struct np_cpu_state *c = np_enter(H_NAPI_POLL);
#if NAPI_BY_DEV
	u64 now = bpf_ktime_get_ns();	/* the device cache's age; built unsampled */
	void *n = (void *)ctx->args[0];
	void *dev = NULL;
	struct np_napi_key k = {};
	struct np_napi_val zero = {};

	/*
	 * A CPU polls the same few NAPI instances over and over: their device's
	 * ifindex and namespace (three probe reads) are kept for a second, so a
	 * device moved to another namespace is seen within a second.
	 */
	if (c && c->napi == (u64)n && now - c->napi_at < 1000000000ULL) {
		k.ifindex = c->napi_ifindex;
		k.netns = c->napi_netns;
	} else {
		NP_READ(dev, n, OFF_NAPI_DEV);
		np_dev_where(dev, &k.ifindex, &k.netns);
		if (c) {
			c->napi = (u64)n;
			c->napi_at = now;
			c->napi_ifindex = k.ifindex;
			c->napi_netns = k.netns;
		}
	}
#if BY_CPU
	k.cpu = bpf_get_smp_processor_id();
#endif
	if (c && c->in_netrx) {
		np_record(STAGE_NAPI_POLL, now - c->last_poll_end, k.ifindex, k.netns);
		c->last_poll_end = now;
	}
	/*
	 * The first device this CPU polls keeps the CPU's own counters (ctr.napi,
	 * unused for anything else here) for the whole run, its key beside them
	 * in ctr.napi_key: no hash lookup for a CPU's usual NAPI instance. Other
	 * devices go to the hash. netpath adds both; a count never moves.
	 */
	if (c && (!c->ctr.napi.polls || (c->ctr.napi_key.ifindex == k.ifindex && c->ctr.napi_key.netns == k.netns &&
					 c->ctr.napi_key.cpu == k.cpu))) {
		c->ctr.napi_key = k;
		v = &c->ctr.napi;
	} else {
		v = napi_stats.lookup_or_try_init(&k, &zero);
		if (!v)
			return 0;
	}
#else
	/* no breakdown: counters in this CPU's state (netpath keys them by CPU for --per-cpu) */
	if (!c)
		return 0;
	if (c->in_netrx) {
		np_seen(c, STAGE_NAPI_POLL);
		if (c->cycle_timed) {
			u64 now = bpf_ktime_get_ns();

			np_record(STAGE_NAPI_POLL, now - c->last_poll_end, 0, 0);
			c->last_poll_end = now;
		}
	}
	v = &c->ctr.napi;
#endif
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
#if defined(USE_SOCKQ) && defined(HAS_SOCK_SOCK_RECV_LENGTH)
#define UDP_BY_RING 1
#else
#define UDP_BY_RING 0
#endif

#if UDP_BY_RING
/* every datagram goes in its socket's FIFO, followed (t[CP_ENQ] set) or not, so reads stay in step */
static __always_inline void np_fifo_push(u64 skey, u64 key, u64 *t, u32 ifindex, u32 netns)
{
	int zero = 0;
	struct np_sk_fifo *fifo, *init;
	struct np_ring_slot *slot;
	u64 seq;

	fifo = fifos.lookup(&skey);
	if (!fifo) {
		init = fifo_zero.lookup(&zero);
		if (!init)
			return;
		fifos.update(&skey, init);
		fifo = fifos.lookup(&skey);
		if (!fifo)
			return;
	}
	/* two CPUs may enqueue on one socket at once: each takes its own sequence number */
	seq = __sync_fetch_and_add(&fifo->tail, 1);
	slot = &fifo->slot[seq & (RING - 1)];
	slot->t_enq = t ? t[CP_ENQ] : 0;
#if NEED_WHERE
	slot->ifindex = ifindex;
	slot->netns = netns;
#endif
#if SLOWER_NS > 0
	slot->skb = key;
	if (t)
		__builtin_memcpy(slot->t, t, sizeof(slot->t));
#endif
	slot->seq = seq;	/* last: a reader that gets here first sees the old number */
}
#endif

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

static __always_inline int np_on_data_ready(struct np_cpu_state *c, void *sk)
{
	void *skb = NULL, *net = NULL;
	u64 key, now;
	struct np_skb_state *st, fresh = {};
	u16 sk_proto = 0, family = 0;
	u32 udp;

#if TP_BTF
	NP_LOAD(family, sk, OFF_SK_FAMILY);
	NP_LOAD(skb, sk, OFF_SK_RCVQ_PREV);
#if NEED_WHERE
	NP_LOAD(net, sk, OFF_SK_NET);
#endif
#elif defined(SK_SPAN_OFF)
	/* family, netns and the receive queue's tail: one read */
	u8 span[SK_SPAN_LEN];

	if (bpf_probe_read_kernel(span, sizeof(span), (char *)sk + SK_SPAN_OFF))
		return 0;
	NP_SPAN_GET(family, span, SK_SPAN_OFF, OFF_SK_FAMILY);
	NP_SPAN_GET(skb, span, SK_SPAN_OFF, OFF_SK_RCVQ_PREV);
	NP_SPAN_GET(net, span, SK_SPAN_OFF, OFF_SK_NET);
#else
	NP_READ(family, sk, OFF_SK_FAMILY);
	NP_READ(skb, sk, OFF_SK_RCVQ_PREV);
#endif
	if (family != NP_AF_INET && family != NP_AF_INET6)
		return 0;	/* unix, netlink, ...: not the IP receive path */
	/* a followed skb that is timed, or none: this enqueue is timed (the clock is read once) */
	now = !c || (c->cur.flags & CUR_TIMED) || !(c->cur.flags & CUR_TRACKED) ? NP_PKT_NOW() : 0;
#if RX_TSTAMP
	/*
	 * Nothing forgets a freed skb here (no kfree_skb/consume_skb hooks): a
	 * followed skb that was dropped leaves this CPU's slot set. A datagram is
	 * enqueued microseconds after netif_receive_skb, so an older slot is not
	 * followed any more (its address may be another skb's by now). An untimed
	 * slot has no time: its receive timestamp alone tells (np_cur_is).
	 */
	if (c && (c->cur.flags & CUR_TIMED) && (c->cur.flags & CUR_TRACKED) && !(c->cur.flags & CUR_ENQUEUED) &&
	    now - c->cur.t[CP_CORE] >= NESTED_NS)
		c->cur.flags = 0;
#endif
	if (!skb || skb == (void *)((char *)sk + OFF_SK_RCVQ)) {
		/*
		 * Empty queue: a reader on another CPU took the datagram between its
		 * enqueue and this wakeup. If this CPU was following an skb, that one
		 * is lost to stack_total and socket_queue: say so in the health counts.
		 */
		if (c && (c->cur.flags & CUR_TRACKED) && !(c->cur.flags & CUR_ENQUEUED)) {
			c->cur.flags |= CUR_ENQUEUED;
			np_hit_c(c, H_ENQ_MISSED);
		}
		return 0;
	}
	key = (u64)skb;
	NP_LOAD(sk_proto, sk, OFF_SK_PROTOCOL);
	udp = sk_proto == NP_IPPROTO_UDP || sk_proto == NP_IPPROTO_UDPLITE;
	/*
	 * UDP wakes the socket once per datagram, right after this CPU enqueued
	 * the skb it is following; the tail may already be another CPU's newer
	 * datagram. Ours then sits a few links before the tail; not finding it
	 * there means a reader took it before this wakeup.
	 */
	if (udp && c && (c->cur.flags & CUR_TRACKED) && !(c->cur.flags & CUR_ENQUEUED) && c->cur.skb != key) {
		if (!np_queued_before(c->cur.skb, key)) {
			c->cur.flags |= CUR_ENQUEUED;
			np_hit_c(c, H_ENQ_MISSED);
			return 0;
		}
		key = c->cur.skb;
	}

#if !KP_CHECKPOINTS
	/* fast path: the skb this CPU's netif_receive_skb is following, no map lookup */
	if (c && c->cur.skb == key && (c->cur.flags & CUR_TRACKED) && np_cur_is(c, key)) {
		if (c->cur.flags & CUR_ENQUEUED)
			return 0;	/* already stamped (spurious wakeup) */
		c->cur.flags |= CUR_ENQUEUED;
		c->cur.t[CP_ENQ] = now ? now : NP_UNTIMED;
#ifdef USE_STACK_TOTAL
		np_seen(c, STAGE_STACK_TOTAL);
		if (now && c->cur.t[CP_CORE])
			np_record(STAGE_STACK_TOTAL, now - c->cur.t[CP_CORE], c->cur.ifindex, c->cur.netns);
#endif
#if UDP_BY_RING
		if (udp) {
			/* the FIFO slot carries it from here: the per-skb entry is done */
			if (c->cur.flags & CUR_IN_MAP)
				skbs.delete(&key);
			np_fifo_push((u64)sk, key, c->cur.t, c->cur.ifindex, c->cur.netns);
			return 0;
		}
#endif
		/* TCP: stamp the entry (read at skb_copy_datagram_iovec; coalescing finds it stamped) */
#if RX_TSTAMP
		st = NULL;	/* nothing keeps an entry up to here: one left by a freed skb is stale */
#else
		st = skbs.lookup(&key);
#endif
		if (st) {
			st->t[CP_ENQ] = now;
			st->udp = udp;
			st->done |= 1 << STAGE_STACK_TOTAL;
		} else {
			__builtin_memcpy(fresh.t, c->cur.t, sizeof(fresh.t));
			fresh.ifindex = c->cur.ifindex;
			fresh.netns = c->cur.netns;
			fresh.udp = udp;
			fresh.done = (1 << STAGE_NETIF_RECEIVE_SKB) | (1 << STAGE_STACK_TOTAL);
			if (skbs.update(&key, &fresh))
				np_hit_c(c, H_LOST_SKBS);
		}
		return 0;
	}
#endif
	if (!now)	/* not the skb this CPU follows: sampled on its own */
		now = np_pick(c) ? NP_PKT_NOW() : NP_UNTIMED;
	st = skbs.lookup(&key);
	if (st) {
		if (st->t[CP_ENQ])
			return 0;	/* already stamped (TCP coalescing, spurious wakeup) */
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
			fresh = *st;
			skbs.delete(&key);
			np_fifo_push((u64)sk, key, fresh.t, fresh.ifindex, fresh.netns);
		}
#endif
		return 0;
	}
#ifdef USE_SOCKQ
	/* not seen on the way in: the socket side still measures it */
#if NEED_WHERE
	NP_READ(fresh.ifindex, skb, OFF_SKB_SKB_IIF);
#if !defined(SK_SPAN_OFF) && !TP_BTF
	NP_READ(net, sk, OFF_SK_NET);
#endif
	if (net)
		NP_READ(fresh.netns, net, OFF_NET_NS_INUM);
#ifdef FILTER_NETNS
	if (fresh.netns != FILTER_NETNS)
		goto untracked;	/* a socket of another namespace: never ours */
#endif
	if (!np_passes_where(fresh.netns, fresh.ifindex))
		goto untracked;
#endif
#if NEED_FLOW
	{
		struct np_flow flow = {};

		if (!np_flow_matches(&flow, np_parse_flow(skb, &flow)))
			goto untracked;
	}
#endif
	np_hit_c(c, H_ENQ_UNSEEN);	/* stack_total cannot time it; socket_queue still does */
	fresh.t[CP_ENQ] = now;
	fresh.udp = udp;
#if UDP_BY_RING
	if (udp) {
		np_fifo_push((u64)sk, key, fresh.t, fresh.ifindex, fresh.netns);
		return 0;
	}
#endif
	if (skbs.update(&key, &fresh))
		np_hit_c(c, H_LOST_SKBS);
	return 0;
untracked:
#endif
#if UDP_BY_RING
	if (udp)
		np_fifo_push((u64)sk, key, NULL, 0, 0);
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
#endif

#ifdef USE_SOCKQ
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

static __always_inline void np_read(void *ctx, struct np_cpu_state *c, void *skb, u64 *t, u32 ifindex,
				    u32 netns)
{
	u64 now, queued;

	np_seen(c, STAGE_SOCKET_QUEUE);
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

/* first copy to user space (TCP), or the free after a linear UDP copy */
static __always_inline void np_read_skb(void *ctx, struct np_cpu_state *c, u64 key, struct np_skb_state *st)
{
	if (st->t[CP_ENQ] && !(st->done & (1 << STAGE_SOCKET_QUEUE)))
		np_read(ctx, c, (void *)key, st->t, st->ifindex, st->netns);
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
RAW_TRACEPOINT_PROBE(sock_recv_length)
{
	int ret = (int)ctx->args[1], flags = (int)ctx->args[2];
	u64 skey = ctx->args[0], seq;
	struct np_sk_fifo *fifo;
	struct np_ring_slot *slot;
	struct np_cpu_state *c = np_enter(H_RECV_LENGTH);
	u32 ifindex = 0, netns = 0;
	u64 t[CP_MAX] = {};

	if (ret < 0 || (flags & NP_MSG_PEEK))
		return 0;
	fifo = fifos.lookup(&skey);
	if (!fifo)
		return 0;	/* not UDP, or no datagram of it followed */
	if (fifo->head >= fifo->tail) {
		np_hit_c(c, H_READ_UNSEEN);	/* enqueued before the trace, or its wakeup was missed */
		return 0;
	}
	seq = __sync_fetch_and_add(&fifo->head, 1);
	slot = &fifo->slot[seq & (RING - 1)];
	if (slot->seq != seq) {
		np_hit_c(c, H_RING_OVERRUN);	/* overwritten: more than RING datagrams were queued */
		return 0;
	}
	if (!slot->t_enq)
		return 0;	/* not followed */
#if NEED_WHERE
	ifindex = slot->ifindex;
	netns = slot->netns;
#endif
#if SLOWER_NS > 0
	np_read(ctx, c, (void *)slot->skb, slot->t, ifindex, netns);
#else
	t[CP_ENQ] = slot->t_enq;
	np_read(ctx, c, NULL, t, ifindex, netns);
#endif
	return 0;
}
#endif
#endif /* USE_SOCKQ */

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

#ifdef USE_KP_NET_RX_ACTION
int kp_net_rx_action(void *ctx)
{
	struct np_cpu_state *c = np_enter(H_KP_NET_RX);

	if (c) {
		c->netrx_start = bpf_ktime_get_ns();
		c->last_poll_end = c->netrx_start;
		c->in_netrx = 1;
	}
	return 0;
}

int kr_net_rx_action(void *ctx)
{
	struct np_cpu_state *c = np_enter(H_KR_NET_RX);

	if (c && c->in_netrx) {
		np_record(STAGE_NET_RX_ACTION, bpf_ktime_get_ns() - c->netrx_start, 0, 0);
		c->in_netrx = 0;
	}
	return 0;
}
#endif
