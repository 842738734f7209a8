// SPDX-License-Identifier: GPL-2.0
/*
 * Where a dropped skb was: its network namespace (the inode, which people
 * and the JSON see, and the cookie, net->net_cookie, which the kernel never
 * reuses) and its interface, also when skb->dev no longer names a device:
 *
 *  - tcp_v4_rcv (and tcp_v6_rcv) set skb->dev to NULL before socket
 *    processing: TCP_CSUM found in tcp_rcv_established, listen overflows
 *    freed in cookie_v4_check, TCP_INVALID_SYN, QUEUE_PURGE;
 *  - a queued UDP datagram keeps dev_scratch (truesize and length, a small
 *    number, never a kernel address) where dev was: UDP_CSUM found at the
 *    read;
 *  - a queued IP fragment keeps its rb-tree node there: whatever
 *    inet_frag_rbtree_purge frees (FRAG_REASM_TIMEOUT, FRAG_TOO_FAR) has a
 *    pointer to another skb in place of its device.
 *
 * Then the namespace is the one of the socket the kernel handed the skb to
 * (the tracepoint's rx_sk, else skb->sk, and sock_net) and the interface is
 * skb->skb_iif, the one it came in on. Purged fragments have neither: the
 * expiry timer frees the queue's head first (ip_expire restores its device
 * for the ICMP error) and then, on the same CPU and with no drop between,
 * the rest; a per-CPU note of the head's place, valid only for the very
 * next drops on that CPU, gives them the head's namespace. A queue whose
 * first fragment never came has no head to free: timer:timer_expire_entry,
 * for the fragment timers only (FRAG_TIMERn: ip_expire, ip6_frag_expire,
 * nf_ct_frag6_expire), notes the queue's own namespace (the timer is
 * inet_frag_queue.timer, the namespace fqdir->net) for the drops that
 * timer's callback makes next on that CPU. A UDP datagram whose checksum is
 * found bad at the read (udp_recvmsg, udpv6_recvmsg, __first_packet_length:
 * UDP_READn) is freed with no socket on the tracepoint, no skb->sk and
 * dev_scratch for a device; it is freed in the context of the task reading
 * the socket, whose namespace (current->nsproxy->net_ns) places it. Each
 * place says which of these named it (enum drop_placed_by: the row's
 * placed_by). What is still unknown, for an skb that came in on an
 * interface, is counted as no_device; one that never did (netlink, a local
 * socket's message) has no place.
 *
 * Compile-time numbers: OFF_NET_COOKIE (when the kernel has net_cookie),
 * FRAG_PURGE_LO/HI, FRAG_EXPIRE_LO/HI, FRAG_EXPIRE6_LO/HI and
 * UDP_READn_LO/HI (text ranges from kallsyms), FRAG_TIMERn (addresses),
 * OFF_SKB_SK, OFF_SK_NET, OFF_SKB_SKB_IIF, OFF_TASK_NSPROXY,
 * OFF_NSPROXY_NET_NS, OFF_TIMER_FUNCTION, OFF_FRAGQ_TIMER, OFF_FRAGQ_FQDIR,
 * OFF_FQDIR_NET.
 */
#include "netpath.h"

struct drop_place {
	u64 cookie;
	u32 inum;
	u32 ifindex;
	u32 by;		/* enum drop_placed_by */
	u32 pad;
};

/* the head of an expired fragment queue, for the fragments freed right after it on this CPU */
struct drop_frag_note {
	struct drop_place place;
	u64 hit;	/* the per-CPU hit number of the drop that left or last used the note */
};

#if defined(FRAG_PURGE_LO) && defined(FRAG_EXPIRE_LO)
BPF_PERCPU_ARRAY(drop_frag_notes, struct drop_frag_note, 1);
#endif

#if defined(FRAG_PURGE_LO) && defined(FRAG_TIMER0)
#define FRAG_BY_TIMER 1
/* a fragment queue's expiry timer runs its callback on this CPU: the queue's namespace, for its drops */
struct drop_frag_timer {
	struct drop_place place;
	u64 hit;	/* this CPU's hit number when armed, then of the last drop that used it */
	u64 at_ns;	/* when armed or last used: a note older than FRAG_TIMER_NS is no callback's */
};
#define FRAG_TIMER_NS	10000000ULL
BPF_PERCPU_ARRAY(drop_frag_timers, struct drop_frag_timer, 1);
#else
#define FRAG_BY_TIMER 0
#endif

#if defined(FRAG_PURGE_LO) && defined(FRAG_EXPIRE_LO)

/* ip_expire (and ip6_frag_expire) free an expired queue's head, its device restored */
static __always_inline int drop_frag_expire(u64 location)
{
#ifdef FRAG_EXPIRE6_LO
	if (location >= FRAG_EXPIRE6_LO && location < FRAG_EXPIRE6_HI)
		return 1;
#endif
	return location >= FRAG_EXPIRE_LO && location < FRAG_EXPIRE_HI;
}
#endif

static __always_inline int drop_dev_overlaid(u64 location)
{
#ifdef FRAG_PURGE_LO
	return location >= FRAG_PURGE_LO && location < FRAG_PURGE_HI;
#else
	return 0;
#endif
}

static __always_inline void drop_net_place(u64 net, struct drop_place *p)
{
	if (!np_kernel_ptr(net))
		return;
	NP_READ(p->inum, (void *)net, OFF_NET_NS_INUM);
#ifdef OFF_NET_COOKIE
	NP_READ(p->cookie, (void *)net, OFF_NET_COOKIE);
#endif
}

#ifndef TP_BTF
#define TP_BTF 0
#endif

/* The device's namespace and index, when skb->dev is one (dev_scratch reads as no device). */
static __always_inline void drop_place_of_dev(void *skb, struct drop_place *p)
{
#if TP_BTF
	/*
	 * Typed loads (a faulting one, such as through dev_scratch, reads 0);
	 * the empty asm hides the pointer's origin from BCC, which would
	 * otherwise rewrite them into probe reads.
	 */
	u64 s = (u64)skb, dev, net;

	asm volatile("" : "+r"(s));
	dev = *(u64 *)(s + OFF_SKB_DEV);
	if (!dev)
		return;
	p->ifindex = *(u32 *)(dev + OFF_DEV_IFINDEX);
	net = *(u64 *)(dev + OFF_DEV_ND_NET);
	if (!net)
		return;
	p->inum = *(u32 *)(net + OFF_NET_NS_INUM);
#ifdef OFF_NET_COOKIE
	p->cookie = *(u64 *)(net + OFF_NET_COOKIE);
#endif
	p->by = PLACED_DEVICE;
#else
	u64 dev = 0, net = 0;

	NP_READ(dev, skb, OFF_SKB_DEV);
	if (!np_kernel_ptr(dev))
		return;
	NP_READ(p->ifindex, (void *)dev, OFF_DEV_IFINDEX);
	NP_READ(net, (void *)dev, OFF_DEV_ND_NET);
	drop_net_place(net, p);
	p->by = PLACED_DEVICE;
#endif
}

/*
 * No device: the interface the skb came in on and the receiving socket's
 * namespace. An skb that never came in on one (skb_iif 0: a netlink or
 * local message purged from a socket's queue) is not placed at all.
 */
static __always_inline void drop_place_of_sock(void *skb, void *rx_sk, struct drop_place *p)
{
	u64 sk = (u64)rx_sk, net = 0;

	NP_READ(p->ifindex, skb, OFF_SKB_SKB_IIF);
	if (!p->ifindex)
		return;
	if (!sk)
		NP_READ(sk, skb, OFF_SKB_SK);
	if (!np_kernel_ptr(sk))
		return;
	NP_READ(net, (void *)sk, OFF_SK_NET);
	drop_net_place(net, p);
	p->by = PLACED_SOCKET;
}

#ifdef UDP_READ0_LO
/* a bad checksum found at the read: udp_recvmsg, udpv6_recvmsg, (__)first_packet_length */
static __always_inline int drop_at_udp_read(u64 location)
{
	if (location >= UDP_READ0_LO && location < UDP_READ0_HI)
		return 1;
#ifdef UDP_READ1_LO
	if (location >= UDP_READ1_LO && location < UDP_READ1_HI)
		return 1;
#endif
#ifdef UDP_READ2_LO
	if (location >= UDP_READ2_LO && location < UDP_READ2_HI)
		return 1;
#endif
#ifdef UDP_READ3_LO
	if (location >= UDP_READ3_LO && location < UDP_READ3_HI)
		return 1;
#endif
	return 0;
}
#endif

/* the namespace of the task reading the socket (the drop runs in its context): current->nsproxy->net_ns */
static __always_inline void drop_place_of_reader(u64 location, struct drop_place *p)
{
#ifdef UDP_READ0_LO
	u64 task, nsproxy = 0, net = 0;

	if (!p->ifindex || !drop_at_udp_read(location))
		return;
	task = bpf_get_current_task();
	NP_READ(nsproxy, (void *)task, OFF_TASK_NSPROXY);
	if (!np_kernel_ptr(nsproxy))
		return;	/* an exiting task has none */
	NP_READ(net, (void *)nsproxy, OFF_NSPROXY_NET_NS);
	drop_net_place(net, p);
	p->by = PLACED_READER;
#endif
}

#if FRAG_BY_TIMER
/* is this timer a fragment queue's? Its function says (one probe read per timer expiry) */
static __always_inline int drop_frag_timer_fn(u64 fn)
{
	if (fn == FRAG_TIMER0)
		return 1;
#ifdef FRAG_TIMER1
	if (fn == FRAG_TIMER1)
		return 1;
#endif
#ifdef FRAG_TIMER2
	if (fn == FRAG_TIMER2)
		return 1;
#endif
	return 0;
}

/* timer:timer_expire_entry (drops.c): a fragment queue's timer notes the queue's namespace */
static __always_inline void drop_frag_timer_arm(void *timer, u64 hits)
{
	int zero = 0;
	u64 fn = 0, fqdir = 0, net = 0;
	struct drop_frag_timer *t;

	NP_READ(fn, timer, OFF_TIMER_FUNCTION);
	if (!drop_frag_timer_fn(fn))
		return;
	t = drop_frag_timers.lookup(&zero);
	if (!t)
		return;
	__builtin_memset(&t->place, 0, sizeof(t->place));
	NP_READ(fqdir, (char *)timer - OFF_FRAGQ_TIMER, OFF_FRAGQ_FQDIR);
	if (np_kernel_ptr(fqdir))
		NP_READ(net, (void *)fqdir, OFF_FQDIR_NET);
	drop_net_place(net, &t->place);
	t->hit = hits;
	t->at_ns = bpf_ktime_get_ns();
}
#endif

/* a purged fragment nothing else placed: the queue whose timer this CPU is running, for its next drops */
static __always_inline void drop_frag_by_timer(u64 hit, struct drop_place *p)
{
#if FRAG_BY_TIMER
	int zero = 0;
	struct drop_frag_timer *t = drop_frag_timers.lookup(&zero);
	u64 now;

	if (!t || !t->place.inum || t->hit + 1 != hit)
		return;
	now = bpf_ktime_get_ns();
	if (now - t->at_ns > FRAG_TIMER_NS)
		return;
	p->inum = t->place.inum;
	p->cookie = t->place.cookie;
	p->by = PLACED_FRAGMENT_QUEUE;
	t->hit = hit;
	t->at_ns = now;
#endif
}

/* Fragments: the expired queue's head leaves a note, the rest of its queue (the next drops here) read it. */
static __always_inline void drop_frag_note(u64 location, u64 hit, int overlaid, struct drop_place *p)
{
#if defined(FRAG_PURGE_LO) && defined(FRAG_EXPIRE_LO)
	int zero = 0, expire = !overlaid && drop_frag_expire(location);
	struct drop_frag_note *note;

	if (!overlaid && !(expire && p->inum))
		return;	/* any other drop: no map lookup */
	note = drop_frag_notes.lookup(&zero);
	if (!note)
		return;
	if (expire) {
		note->place = *p;
		note->hit = hit;
		return;
	}
	if (note->hit + 1 == hit && note->place.ifindex == p->ifindex) {
		p->inum = note->place.inum;
		p->cookie = note->place.cookie;
		p->by = PLACED_FRAGMENT_QUEUE;
		note->hit = hit;
	}
#endif
}

/*
 * The place of a dropped skb. `hit` is this CPU's kfree_skb hit number
 * (consecutive on a CPU: a program never runs nested on its own CPU).
 */
static __always_inline void drop_place(void *skb, void *rx_sk, u64 location, u64 hit, struct drop_place *p)
{
	int overlaid = drop_dev_overlaid(location);

	if (!overlaid) {
		drop_place_of_dev(skb, p);
		if (p->inum) {	/* by its device, as most are: only an expired fragment queue's head notes it */
			drop_frag_note(location, hit, 0, p);
			return;
		}
	}
	p->ifindex = 0;
	p->by = PLACED_NONE;
	drop_place_of_sock(skb, rx_sk, p);
	if (!p->inum)
		p->by = PLACED_NONE;
	drop_frag_note(location, hit, overlaid, p);
	if (!p->inum && overlaid)
		drop_frag_by_timer(hit, p);
	if (!p->inum)
		drop_place_of_reader(location, p);
}
