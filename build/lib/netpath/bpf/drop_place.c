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
 * next drops on that CPU, gives them the head's namespace. What is still
 * unknown, for an skb that came in on an interface, is counted as no_device;
 * one that never did (netlink, a local socket's message) has no place.
 *
 * Compile-time numbers: OFF_NET_COOKIE (when the kernel has net_cookie),
 * FRAG_PURGE_LO/HI, FRAG_EXPIRE_LO/HI and FRAG_EXPIRE6_LO/HI (text ranges
 * from kallsyms),
 * OFF_SKB_SK, OFF_SK_NET, OFF_SKB_SKB_IIF.
 */
#include "netpath.h"

struct drop_place {
	u64 cookie;
	u32 inum;
	u32 ifindex;
};

/* the head of an expired fragment queue, for the fragments freed right after it on this CPU */
struct drop_frag_note {
	struct drop_place place;
	u64 hit;	/* the per-CPU hit number of the drop that left or last used the note */
};

#if defined(FRAG_PURGE_LO) && defined(FRAG_EXPIRE_LO)
BPF_PERCPU_ARRAY(drop_frag_notes, struct drop_frag_note, 1);

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

/* dev_scratch and NULL are not kernel addresses */
static __always_inline int drop_kernel_ptr(u64 p)
{
	return p >= 0xffff000000000000ULL;
}

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
	if (!drop_kernel_ptr(net))
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
#else
	u64 dev = 0, net = 0;

	NP_READ(dev, skb, OFF_SKB_DEV);
	if (!drop_kernel_ptr(dev))
		return;
	NP_READ(p->ifindex, (void *)dev, OFF_DEV_IFINDEX);
	NP_READ(net, (void *)dev, OFF_DEV_ND_NET);
	drop_net_place(net, p);
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
	if (!drop_kernel_ptr(sk))
		return;
	NP_READ(net, (void *)sk, OFF_SK_NET);
	drop_net_place(net, p);
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

	if (!overlaid)
		drop_place_of_dev(skb, p);
	if (!p->inum) {
		p->ifindex = 0;
		drop_place_of_sock(skb, rx_sk, p);
	}
	drop_frag_note(location, hit, overlaid, p);
}
