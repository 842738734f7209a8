/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared by every netpath program. No kernel headers: struct sk_buff,
 * net_device and net are read at offsets (OFF_*) that netpath computes from
 * the running kernel's BTF and passes as -D constants.
 */
#ifndef NETPATH_H
#define NETPATH_H

#define NP_AF_INET	2
#define NP_AF_INET6	10
#define NP_ETH_P_IP	0x0800
#define NP_ETH_P_IPV6	0x86DD
#define NP_IPPROTO_ICMP	1
#define NP_IPPROTO_TCP	6
#define NP_IPPROTO_UDP	17
#define NP_IPPROTO_ICMPV6 58

#define NP_UNSET_HEADER	0xffff

/* a filter on the packet's headers (FILTER_PROTO, FILTER_PORT, FILTER_HOST_*): the flow must be parsed */
#if defined(FILTER_PROTO) || defined(FILTER_PORT) || defined(FILTER_HOST_FAMILY)
#define NEED_FLOW 1
#else
#define NEED_FLOW 0
#endif

/* Wire formats are stable ABI, so they are spelled out here. */
struct np_iphdr {
	u8 ver_ihl;
	u8 tos;
	u16 tot_len;
	u16 id;
	u16 frag_off;
	u8 ttl;
	u8 protocol;
	u16 check;
	u32 saddr;
	u32 daddr;
};

struct np_ipv6hdr {
	u32 ver_tc_flow;
	u16 payload_len;
	u8 nexthdr;
	u8 hop_limit;
	u8 saddr[16];
	u8 daddr[16];
};

struct np_ports {
	u16 source;
	u16 dest;
};

struct np_flow {
	u8 family;	/* 4, 6 or 0 when the packet is not IP */
	u8 l4proto;
	u16 l3proto;	/* ethertype, host order */
	u16 sport;	/* host order */
	u16 dport;
	u32 saddr[4];
	u32 daddr[4];
};

#define NP_READ(dst, base, off) \
	bpf_probe_read_kernel(&(dst), sizeof(dst), (void *)((char *)(base) + (off)))

/* a field out of a span read in one go: SPAN holds the bytes from SPAN_OFF */
#define NP_SPAN_GET(dst, span, span_off, off) \
	__builtin_memcpy(&(dst), (span) + ((off) - (span_off)), sizeof(dst))

/*
 * Not NULL, not a small scratch value (dev_scratch): a kernel address. With
 * 5-level paging (LA57) the direct map starts at 0xff11000000000000, below
 * 4-level's 0xffff8880...: only the top byte is common to both.
 */
static __always_inline int np_kernel_ptr(u64 p)
{
	return (p >> 56) == 0xff;
}

static __always_inline u16 np_ntohs(u16 v)
{
	return (v >> 8) | (v << 8);
}

/* ifindex and netns inode of a net_device, in two probe reads when the span allows; returns its net */
static __always_inline void *np_dev_where(void *dev, u32 *ifindex, u32 *netns)
{
	void *net = NULL;

	if (!dev)
		return NULL;
#ifdef DEV_SPAN_OFF
	u8 span[DEV_SPAN_LEN];

	if (bpf_probe_read_kernel(span, sizeof(span), (char *)dev + DEV_SPAN_OFF))
		return NULL;
	NP_SPAN_GET(*ifindex, span, DEV_SPAN_OFF, OFF_DEV_IFINDEX);
	NP_SPAN_GET(net, span, DEV_SPAN_OFF, OFF_DEV_ND_NET);
#else
	NP_READ(*ifindex, dev, OFF_DEV_IFINDEX);
	NP_READ(net, dev, OFF_DEV_ND_NET);
#endif
	if (net)
		NP_READ(*netns, net, OFF_NET_NS_INUM);
	return net;
}

/*
 * --netns by the namespace's cookie (net->net_cookie, Linux 5.12+), which the
 * kernel never reuses: the inode FILTER_NETNS compares is reused within a
 * second of a namespace's end. 1 when `net` is the filtered namespace, or no
 * cookie filter is built in.
 */
static __always_inline int np_net_passes(void *net)
{
#if defined(FILTER_NETNS_COOKIE) && defined(OFF_NET_COOKIE)
	u64 cookie = 0;

	if (!net)
		return 0;
	NP_READ(cookie, net, OFF_NET_COOKIE);
	return cookie == FILTER_NETNS_COOKIE;
#else
	return 1;
#endif
}

/*
 * IPv6 extension headers (RFC 8200 section 4) sit between the fixed header
 * and the transport header: hop-by-hop options (0), routing (43), fragment
 * (44: a fixed 8 bytes, and only the first fragment, offset 0, carries the
 * transport header), destination options (60), all with a length in 8-byte
 * units not counting the first 8, and AH (51, RFC 4302: in 4-byte units not
 * counting the first 8). The kernel walks them the same way in
 * ipv6_skip_exthdr() (net/ipv6/exthdrs_core.c). NP_IP6_EXTHDR_MAX bounds the
 * walk so the verifier sees a loop of known length on every kernel; a chain
 * longer than that is reported as the header it stopped at, with no ports.
 */
#define NP_IPPROTO_HOPOPTS	0
#define NP_IPPROTO_ROUTING	43
#define NP_IPPROTO_FRAGMENT	44
#define NP_IPPROTO_AH		51
#define NP_IPPROTO_NONE		59
#define NP_IPPROTO_DSTOPTS	60
#define NP_IP6_EXTHDR_MAX	6
#define NP_IP6_HDR_LEN		40
#define NP_IP6_FRAG_OFFSET	0xfff8	/* frag_off, host order: the offset bits (M and reserved bits out) */

static __always_inline int np_ip6_is_exthdr(u8 nexthdr)
{
	return nexthdr == NP_IPPROTO_HOPOPTS || nexthdr == NP_IPPROTO_ROUTING || nexthdr == NP_IPPROTO_FRAGMENT ||
	       nexthdr == NP_IPPROTO_DSTOPTS || nexthdr == NP_IPPROTO_AH;
}

/* the first 8 bytes of every extension header; frag_off only means something in a fragment header */
struct np_ip6_opt {
	u8 nexthdr;
	u8 hdrlen;
	u16 frag_off;	/* network order */
	u32 rest;
};

/*
 * One step of the walk over the extension header of type *proto at off,
 * whose first 8 bytes are opt: *proto becomes the type of the header after
 * it, and the result is that header's offset, or 0 when no transport header
 * follows in this packet (a fragment other than the first). Shared by the
 * probe-read walk below and drops.c's walk with plain loads.
 */
static __always_inline u32 np_ip6_exthdr_next(const struct np_ip6_opt *opt, u32 off, u8 *proto)
{
	u8 type = *proto;

	*proto = opt->nexthdr;
	if (type == NP_IPPROTO_FRAGMENT)
		return np_ntohs(opt->frag_off) & NP_IP6_FRAG_OFFSET ? 0 : off + 8;
	if (type == NP_IPPROTO_AH)
		return off + ((u32)opt->hdrlen + 2) * 4;
	return off + ((u32)opt->hdrlen + 1) * 8;
}

/* Where a walk that stopped at a header of type proto at off leaves the transport header: off, or 0 */
static __always_inline u32 np_ip6_walk_end(u8 proto, u32 off)
{
	return np_ip6_is_exthdr(proto) || proto == NP_IPPROTO_NONE ? 0 : off;
}

/*
 * Skips the extension headers that start at head + off, the first one of
 * type *proto. On return *proto is the transport protocol (or the header the
 * walk stopped at) and the result is the transport header's offset from
 * head, or 0 when this packet has none: a fragment other than the first,
 * "no next header" (59), a chain past NP_IP6_EXTHDR_MAX or an unreadable one.
 */
static __always_inline u32 np_ip6_skip_exthdrs(unsigned char *head, u32 off, u8 *proto)
{
	struct np_ip6_opt opt;

#pragma unroll
	for (int i = 0; i < NP_IP6_EXTHDR_MAX; i++) {
		if (!np_ip6_is_exthdr(*proto))
			break;
		if (bpf_probe_read_kernel(&opt, sizeof(opt), head + off))
			return 0;
		off = np_ip6_exthdr_next(&opt, off, proto);
		if (!off)
			return 0;
	}
	return np_ip6_walk_end(*proto, off);
}

/*
 * For any program that has an IPv6 packet at head + nh (nh: the network
 * header's offset from head): its transport protocol, in *proto, and the
 * offset of its transport header from head, or 0 when the packet has none
 * (see np_ip6_skip_exthdrs) or its header cannot be read. One probe read
 * more than np_ip6_skip_exthdrs, for callers that have not read the fixed
 * header already.
 */
static __always_inline u32 np_ip6_l4(unsigned char *head, u32 nh, u8 *proto)
{
	*proto = 0;
	if (!head || nh >= NP_UNSET_HEADER)
		return 0;
	if (bpf_probe_read_kernel(proto, sizeof(*proto), head + nh + 6))	/* ipv6hdr.nexthdr */
		return 0;
	return np_ip6_skip_exthdrs(head, nh + NP_IP6_HDR_LEN, proto);
}

/* IP header and the L4 ports behind it, fetched with one probe read. */
struct np_ip4_ports {
	struct np_iphdr ip;
	struct np_ports ports;
};

struct np_ip6_ports {
	struct np_ipv6hdr ip6;
	struct np_ports ports;
};

#define NP_IP4_FRAG_OFFSET	0x1fff	/* frag_off, host order: the offset bits */

/*
 * Parses L3/L4 from head + nh (the network header offset); returns 0 on
 * success. Callers that run before the stack sets network_header (driver
 * hand-off, GRO) pass skb->data - skb->head instead. Ports are read only
 * where the packet has a transport header: past IPv6 extension headers, and
 * not in a fragment other than the first (v4 or v6), whose payload is data.
 */
static __always_inline int np_parse_l3(unsigned char *head, u32 nh, struct np_flow *flow)
{
	struct np_ports ports = {};
	int have_ports = 1;

	if (!head || nh >= NP_UNSET_HEADER)
		return -1;
	if (flow->l3proto == NP_ETH_P_IP) {
		struct np_ip4_ports h = {};
		u32 ihl;

		if (bpf_probe_read_kernel(&h, sizeof(h), head + nh))
			return -1;
		if ((h.ip.ver_ihl >> 4) != 4)
			return -1;
		flow->family = 4;
		flow->l4proto = h.ip.protocol;
		flow->saddr[0] = h.ip.saddr;
		flow->daddr[0] = h.ip.daddr;
		ihl = (h.ip.ver_ihl & 0xf) * 4;
		if (np_ntohs(h.ip.frag_off) & NP_IP4_FRAG_OFFSET)
			have_ports = 0;
		else if (ihl == sizeof(h.ip))
			ports = h.ports;
		else if (bpf_probe_read_kernel(&ports, sizeof(ports), head + nh + ihl))
			have_ports = 0;
	} else if (flow->l3proto == NP_ETH_P_IPV6) {
		struct np_ip6_ports h = {};
		u8 proto;
		u32 l4;

		if (bpf_probe_read_kernel(&h, sizeof(h), head + nh))
			return -1;
		flow->family = 6;
		__builtin_memcpy(flow->saddr, h.ip6.saddr, 16);
		__builtin_memcpy(flow->daddr, h.ip6.daddr, 16);
		proto = h.ip6.nexthdr;
		if (!np_ip6_is_exthdr(proto)) {
			ports = h.ports;
		} else {
			l4 = np_ip6_skip_exthdrs(head, nh + NP_IP6_HDR_LEN, &proto);
			if (!l4 || bpf_probe_read_kernel(&ports, sizeof(ports), head + l4))
				have_ports = 0;
		}
		flow->l4proto = proto;
	} else {
		return -1;
	}
	if (have_ports && (flow->l4proto == NP_IPPROTO_TCP || flow->l4proto == NP_IPPROTO_UDP)) {
		flow->sport = np_ntohs(ports.source);
		flow->dport = np_ntohs(ports.dest);
	}
	return 0;
}

/*
 * Parses L3/L4 from head + nh (the network header offset); returns 0 on
 * success. Callers that run before the stack sets network_header (driver
 * hand-off, GRO) pass skb->data - skb->head instead.
 */
static __always_inline int np_parse_flow_at(void *skb, unsigned char *head, u32 nh, struct np_flow *flow)
{
	u16 proto = 0;

	NP_READ(proto, skb, OFF_SKB_PROTOCOL);
	flow->l3proto = np_ntohs(proto);
	return np_parse_l3(head, nh, flow);
}

/* Parses L3/L4 from skb->head + network_header; returns 0 on success. */
static __always_inline int np_parse_flow(void *skb, struct np_flow *flow)
{
#ifdef SKB_SPAN_OFF
	/* protocol, network_header and head sit close together: one read */
	u8 span[SKB_SPAN_LEN];
	unsigned char *head = NULL;
	u16 nh = NP_UNSET_HEADER, proto = 0;

	if (bpf_probe_read_kernel(span, sizeof(span), (char *)skb + SKB_SPAN_OFF))
		return -1;
	NP_SPAN_GET(proto, span, SKB_SPAN_OFF, OFF_SKB_PROTOCOL);
	NP_SPAN_GET(nh, span, SKB_SPAN_OFF, OFF_SKB_NETWORK_HEADER);
	NP_SPAN_GET(head, span, SKB_SPAN_OFF, OFF_SKB_HEAD);
	flow->l3proto = np_ntohs(proto);
	return np_parse_l3(head, nh, flow);
#else
	unsigned char *head = NULL;
	u16 nh = NP_UNSET_HEADER;

	NP_READ(head, skb, OFF_SKB_HEAD);
	NP_READ(nh, skb, OFF_SKB_NETWORK_HEADER);
	return np_parse_flow_at(skb, head, nh, flow);
#endif
}

/*
 * Filters compiled in as numbers: FILTER_PROTO (IP protocol), FILTER_PORT
 * (either port), FILTER_HOST_FAMILY with FILTER_HOST_W0..W3 (either address,
 * network byte order words). Returns 1 when the packet passes.
 */
static __always_inline int np_flow_matches(struct np_flow *flow, int parsed)
{
#if NEED_FLOW
	if (parsed != 0)
		return 0;
#endif
#ifdef FILTER_PROTO
#if FILTER_PROTO == NP_IPPROTO_ICMP
	if (flow->l4proto != NP_IPPROTO_ICMP && flow->l4proto != NP_IPPROTO_ICMPV6)
		return 0;
#else
	if (flow->l4proto != FILTER_PROTO)
		return 0;
#endif
#endif
#ifdef FILTER_PORT
	if (flow->sport != FILTER_PORT && flow->dport != FILTER_PORT)
		return 0;
#endif
#ifdef FILTER_HOST_FAMILY
	if (flow->family != FILTER_HOST_FAMILY)
		return 0;
#if FILTER_HOST_FAMILY == 4
	if (flow->saddr[0] != FILTER_HOST_W0 && flow->daddr[0] != FILTER_HOST_W0)
		return 0;
#else
	if (!(flow->saddr[0] == FILTER_HOST_W0 && flow->saddr[1] == FILTER_HOST_W1 &&
	      flow->saddr[2] == FILTER_HOST_W2 && flow->saddr[3] == FILTER_HOST_W3) &&
	    !(flow->daddr[0] == FILTER_HOST_W0 && flow->daddr[1] == FILTER_HOST_W1 &&
	      flow->daddr[2] == FILTER_HOST_W2 && flow->daddr[3] == FILTER_HOST_W3))
		return 0;
#endif
#endif
	return 1;
}

#endif /* NETPATH_H */
