// SPDX-License-Identifier: GPL-2.0
/*
 * netpath trace, per-invocation stages of the interrupt side: the NIC's hard
 * IRQ handler, the NET_RX softirq (raised -> running, its run time) and the
 * NAPI polls inside it (time, work against budget, per device with
 * NAPI_BY_DEV). State is per CPU (np_cpu_state); placed after trace_common.c.
 */
#include "netpath.h"

#define NET_RX_VEC	3

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
	/*
	 * Every run is counted, as /proc/softirqs counts it. A run can come with
	 * no raise of its own seen: raised before netpath attached, or raised again
	 * between __do_softirq clearing the pending bits and this entry, a raise
	 * that found this cycle's flag still set. Such a run is counted, untimed
	 * (Stage.seen_always), in exact builds too.
	 */
	np_seen_always(c, STAGE_SOFTIRQ_WAIT);
	if (c->raised && c->raise_ts)
		np_record(STAGE_SOFTIRQ_WAIT, now - c->raise_ts, 0, 0);
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
#if NAPI_BY_DEV
/*
 * A CPU polls the same few NAPI instances over and over: their device's
 * ifindex and namespace (three probe reads) are kept for a second, so a
 * device moved to another namespace is seen within a second.
 */
static __always_inline void np_napi_where(struct np_cpu_state *c, void *n, u64 now, struct np_napi_key *k)
{
	void *dev = NULL;

	if (c && c->napi == (u64)n && now - c->napi_at < 1000000000ULL) {
		k->ifindex = c->napi_ifindex;
		k->netns = c->napi_netns;
		return;
	}
	NP_READ(dev, n, OFF_NAPI_DEV);
	np_dev_where(dev, &k->ifindex, &k->netns);
	if (c) {
		c->napi = (u64)n;
		c->napi_at = now;
		c->napi_ifindex = k->ifindex;
		c->napi_netns = k->netns;
	}
}

/* the counters of this poll's device (and CPU, with BY_CPU); NULL when the hash is full */
static __always_inline struct np_napi_val *np_napi_dev(struct np_cpu_state *c, void *n)
{
	u64 now = bpf_ktime_get_ns();	/* the device cache's age; built unsampled */
	struct np_napi_key k = {};
	struct np_napi_val zero = {};

	np_napi_where(c, n, now, &k);
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
		return &c->ctr.napi;
	}
	return napi_stats.lookup_or_try_init(&k, &zero);
}
#else
/* no breakdown: counters in this CPU's state (netpath keys them by CPU for --per-cpu) */
static __always_inline struct np_napi_val *np_napi_cpu(struct np_cpu_state *c)
{
	if (!c)
		return NULL;
	if (c->in_netrx) {
		np_seen(c, STAGE_NAPI_POLL);
		if (c->cycle_timed) {
			u64 now = bpf_ktime_get_ns();

			np_record(STAGE_NAPI_POLL, now - c->last_poll_end, 0, 0);
			c->last_poll_end = now;
		}
	}
	return &c->ctr.napi;
}
#endif

RAW_TRACEPOINT_PROBE(napi_poll)
{
	int work = (int)ctx->args[1], budget = (int)ctx->args[2];
	struct np_cpu_state *c = np_enter(H_NAPI_POLL);
#if NAPI_BY_DEV
	struct np_napi_val *v = np_napi_dev(c, (void *)ctx->args[0]);
#else
	struct np_napi_val *v = np_napi_cpu(c);
#endif

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

/* --- net_rx_action by kprobe, where the softirq tracepoints are missing (loaded only when attached) --- */
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
