// SPDX-License-Identifier: GPL-2.0
/*
 * netpath follow, the function hops where kprobes exist: the bridge, the IP
 * receive and forward path, netfilter (with the hook it runs), the
 * transport's receive and veth's transmit. Each is a lookup in `followed`
 * and, for a followed skb, one hop; none starts following. Every function
 * is compiled; netpath attaches those this kernel has (kallsyms) and names
 * the others as unavailable. Placed after follow.c. Compile-time numbers:
 * OFF_NFSTATE_HOOK, OFF_NFSTATE_PF (struct nf_hook_state, from BTF).
 */
#include "netpath.h"

/* the n-th argument of a kprobed function, from its pt_regs */
#if defined(__x86_64__)
#define FOLLOW_KP_ARG(ctx, n)	(((u64 *)(ctx))[14 - (n)])	/* di, si, dx */
#elif defined(__aarch64__)
#define FOLLOW_KP_ARG(ctx, n)	(((u64 *)(ctx))[n])	/* user_pt_regs->regs[n] */
#else
#define FOLLOW_KP_ARG(ctx, n)	0
#endif

static __always_inline int follow_kp(u16 hook, u64 skb)
{
	struct follow_ctx c = { .skb = (void *)skb };

	follow_hook(hook, 0, &c);
	return 0;
}

/* One kprobe program per function: its hook id and which argument is the skb. */
#define FOLLOW_KPROBE(fn, hook, arg)				\
int fn(void *ctx)						\
{								\
	return follow_kp(hook, FOLLOW_KP_ARG(ctx, arg));	\
}

FOLLOW_KPROBE(kp_follow_br_forward,		FH_KP_BR_FORWARD,		1)
FOLLOW_KPROBE(kp_follow_ip_rcv,			FH_KP_IP_RCV,			0)
FOLLOW_KPROBE(kp_follow_ip_rcv_finish,		FH_KP_IP_RCV_FINISH,		2)
FOLLOW_KPROBE(kp_follow_ip_forward,		FH_KP_IP_FORWARD,		0)
FOLLOW_KPROBE(kp_follow_ip_local_deliver,	FH_KP_IP_LOCAL_DELIVER,		0)
FOLLOW_KPROBE(kp_follow_udp_rcv,		FH_KP_UDP_RCV,			0)
FOLLOW_KPROBE(kp_follow_tcp_v4_rcv,		FH_KP_TCP_V4_RCV,		0)
FOLLOW_KPROBE(kp_follow_veth_xmit,		FH_KP_VETH_XMIT,		0)

/* rx_handler_result_t br_handle_frame(struct sk_buff **pskb) */
int kp_follow_br_handle_frame(void *ctx)
{
	u64 skb = 0;

	NP_READ(skb, (void *)FOLLOW_KP_ARG(ctx, 0), 0);
	return follow_kp(FH_KP_BR_HANDLE_FRAME, skb);
}

/* nf_hook_slow(skb, state, ...): the hop's rc is the family and the hook, from struct nf_hook_state */
int kp_follow_nf_hook_slow(void *ctx)
{
	struct follow_ctx c = { .skb = (void *)FOLLOW_KP_ARG(ctx, 0) };
	void *state = (void *)FOLLOW_KP_ARG(ctx, 1);
	u8 hook = 0, pf = 0;

	NP_READ(hook, state, OFF_NFSTATE_HOOK);
	NP_READ(pf, state, OFF_NFSTATE_PF);
	c.rc = pf << 8 | hook;
	follow_hook(FH_KP_NF_HOOK_SLOW, 0, &c);
	return 0;
}
