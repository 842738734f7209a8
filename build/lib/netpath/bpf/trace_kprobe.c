// SPDX-License-Identifier: GPL-2.0
/*
 * netpath trace, the kprobe checkpoint stages (kernels where the IP and
 * transport receive functions have no tracepoint): ip_rcv, ip_local_deliver,
 * tcp_v4_rcv and udp_rcv, each the time from the skb's previous checkpoint
 * in the per-skb map. Every function of the table below is compiled;
 * netpath loads only the ones its plan attaches. Placed after trace_skb.c.
 */
#include "netpath.h"

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

/*
 * One kprobe program: its hit counter, the checkpoint before it, the one it
 * sets (CP_MAX: none) and the stage it records. One function per line below
 * (BCC gives each function its own section where it starts).
 */
#define NP_KP_CHECKPOINT(fn, hit, prev, cp, stage)				\
int fn(void *ctx)								\
{										\
	np_hit(hit);								\
	np_checkpoint((void *)KP_ARG0(ctx), prev, cp, stage);			\
	return 0;								\
}

/*
 * The table: function, counter, previous and own checkpoint, stage. The IPv6
 * twin of each function shares the stage. Names and counters are
 * netpath/contract.py's TRACE_HOOKS (tests/unit/test_contract.py reads this).
 */
NP_KP_CHECKPOINT(kp_ip_rcv,		H_KP_IP_RCV,	CP_CORE,	CP_IPRCV,	STAGE_IP_RCV)
NP_KP_CHECKPOINT(kp_ipv6_rcv,		H_KP_IPV6_RCV,	CP_CORE,	CP_IPRCV,	STAGE_IP_RCV)
NP_KP_CHECKPOINT(kp_ip_local_deliver,	H_KP_IP_LOCAL,	CP_IPRCV,	CP_LOCAL,	STAGE_IP_LOCAL_DELIVER)
NP_KP_CHECKPOINT(kp_ip6_input,		H_KP_IP6_INPUT,	CP_IPRCV,	CP_LOCAL,	STAGE_IP_LOCAL_DELIVER)
NP_KP_CHECKPOINT(kp_tcp_v4_rcv,		H_KP_TCP,	CP_LOCAL,	CP_MAX,		STAGE_TCP_RCV)
NP_KP_CHECKPOINT(kp_tcp_v6_rcv,		H_KP_TCP6,	CP_LOCAL,	CP_MAX,		STAGE_TCP_RCV)
NP_KP_CHECKPOINT(kp_udp_rcv,		H_KP_UDP,	CP_LOCAL,	CP_MAX,		STAGE_UDP_RCV)
NP_KP_CHECKPOINT(kp_udpv6_rcv,		H_KP_UDP6,	CP_LOCAL,	CP_MAX,		STAGE_UDP_RCV)
