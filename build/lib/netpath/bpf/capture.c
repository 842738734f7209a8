// SPDX-License-Identifier: GPL-2.0
/*
 * netpath drops --pcap: the dropped packet itself. Compiled in (ahead of
 * drops.c) only when a capture runs; drops.c calls pcap_capture() once per
 * matched drop, after every filter, so the capture sees what the counts see
 * and never changes them.
 *
 * A drop storm can be millions a second, so a drop is admitted to the ring
 * only when the run's cap (PCAP_MAX, a global count taken with an atomic
 * add) has room and this CPU's token bucket (PCAP_RATE_PER_CPU a second,
 * PCAP_BURST deep) holds a token. The rest are counted, never sent: a
 * drop past the cap costs a load and an add, one under it that the bucket
 * refuses a clock read more; the packet reads happen only for admitted ones.
 *
 * The bytes start at the MAC header when the skb has an Ethernet-sized one
 * (LINKTYPE_ETHERNET), else at the network header (LINKTYPE_RAW), and stop
 * at PCAP_SNAPLEN or at the end of the linear data, whichever is first.
 * Records go out without a wakeup: netpath drains the ring on its own clock.
 *
 * Compile-time numbers: PCAP_SNAPLEN, PCAP_MAX, PCAP_RING_PAGES, NP_PAGE_SIZE and the
 * OFF_SKB_{HEAD,DATA,LEN,TAIL,MAC_HEADER,NETWORK_HEADER} offsets. struct
 * pcap_meta and PCAP_RATE_PER_CPU/PCAP_BURST come from netpath/contract.py.
 */

#ifndef TP_BTF
#define TP_BTF 0
#endif

#ifndef PAGE_SIZE	/* BPF_RINGBUF_OUTPUT counts in pages; the header shim has no asm/page.h value */
#define PAGE_SIZE NP_PAGE_SIZE
#endif

#define PCAP_NS_PER_TOKEN	(1000000000ULL / PCAP_RATE_PER_CPU)
#define PCAP_RB_NO_WAKEUP	1	/* BPF_RB_NO_WAKEUP */
#define PCAP_ETH_HLEN		14
#define PCAP_ETH_HLEN_MAX	22	/* two VLAN tags */

struct pcap_event {
	struct pcap_meta m;
	u8 data[PCAP_SNAPLEN];
};

struct pcap_bucket {
	u64 last_ns;
	u64 tokens;
};

/* the skb fields that say where the packet's bytes are */
struct pcap_skb {
	u64 head;
	u64 data;
	u32 len;
	u32 tail;	/* sk_buff_data_t: an offset from head on 64-bit kernels */
	u16 mac;
	u16 nh;
};

BPF_RINGBUF_OUTPUT(pcap_ring, PCAP_RING_PAGES);
BPF_PERCPU_ARRAY(pcap_bucket, struct pcap_bucket, 1);
BPF_ARRAY(pcap_used, u64, 1);

#if BY_OWNER
#define PCAP_OWNER(o)	(o)
#else
#define PCAP_OWNER(o)	NULL	/* the owner is read only when rows carry it (--by socket|cgroup) */
#endif

/* one token from this CPU's bucket, refilled for the time since the last one */
static __always_inline int pcap_take_token(u64 now)
{
	int zero = 0;
	struct pcap_bucket *b = pcap_bucket.lookup(&zero);
	u64 add;

	if (!b)
		return 0;
	if (now - b->last_ns >= PCAP_NS_PER_TOKEN) {
		add = (now - b->last_ns) / PCAP_NS_PER_TOKEN;
		b->tokens += add;
		b->last_ns += add * PCAP_NS_PER_TOKEN;
		if (b->tokens >= PCAP_BURST) {
			b->tokens = PCAP_BURST;
			b->last_ns = now;
		}
	}
	if (!b->tokens)
		return 0;
	b->tokens -= 1;
	return 1;
}

static __always_inline void pcap_skb_of(void *skb, struct pcap_skb *p)
{
#if TP_BTF
	u64 s = (u64)skb;

	asm volatile("" : "+r"(s));	/* plain loads through the typed skb (see drops.c) */
	p->head = *(u64 *)(s + OFF_SKB_HEAD);
	p->data = *(u64 *)(s + OFF_SKB_DATA);
	p->len = *(u32 *)(s + OFF_SKB_LEN);
	p->tail = *(u32 *)(s + OFF_SKB_TAIL);
	p->mac = *(u16 *)(s + OFF_SKB_MAC_HEADER);
	p->nh = *(u16 *)(s + OFF_SKB_NETWORK_HEADER);
#else
	NP_READ(p->head, skb, OFF_SKB_HEAD);
	NP_READ(p->data, skb, OFF_SKB_DATA);
	NP_READ(p->len, skb, OFF_SKB_LEN);
	NP_READ(p->tail, skb, OFF_SKB_TAIL);
	NP_READ(p->mac, skb, OFF_SKB_MAC_HEADER);
	NP_READ(p->nh, skb, OFF_SKB_NETWORK_HEADER);
#endif
}

/* where the captured bytes start (an offset from head), and their link type */
static __always_inline u32 pcap_start(struct pcap_skb *p, u16 *linktype)
{
	*linktype = LINKTYPE_RAW;
	if (p->mac != NP_UNSET_HEADER && p->nh != NP_UNSET_HEADER && p->nh >= p->mac + PCAP_ETH_HLEN &&
	    p->nh <= p->mac + PCAP_ETH_HLEN_MAX) {
		*linktype = LINKTYPE_ETHERNET;
		return p->mac;
	}
	if (p->nh != NP_UNSET_HEADER)
		return p->nh;
	return (u32)(p->data - p->head);
}

/*
 * 1 when this drop may go to the ring: the cap has room and this CPU has a
 * token. The clock is read only under the cap: past it a drop costs a load.
 */
static __always_inline int pcap_admit(u64 *stat, u64 **used, u64 *now)
{
	int zero = 0;

	*used = pcap_used.lookup(&zero);
	if (!*used)
		return 0;
	if (**used >= PCAP_MAX) {
		stat[STAT_PCAP_OVER_CAP] += 1;
		return 0;
	}
	*now = bpf_ktime_get_ns();
	if (!pcap_take_token(*now)) {
		stat[STAT_PCAP_OVER_RATE] += 1;
		return 0;
	}
	if (__sync_fetch_and_add(*used, 1) >= PCAP_MAX) {	/* another CPU took the last place */
		stat[STAT_PCAP_OVER_CAP] += 1;
		return 0;
	}
	return 1;
}

static __always_inline void pcap_capture(u64 *stat, void *skb, u32 reason, u64 location, u32 ifindex, u32 netns,
					 struct np_flow *flow, struct drop_owner *owner)
{
	u64 now = 0, *used;
	struct pcap_event *ev;
	struct pcap_skb p = {};
	u32 start, wire, avail, caplen;
	u16 linktype;

	if (!pcap_admit(stat, &used, &now))
		return;
	ev = pcap_ring.ringbuf_reserve(sizeof(struct pcap_event));
	if (!ev) {
		__sync_fetch_and_add(used, -1);	/* the place in the cap goes to the next drop */
		stat[STAT_PCAP_LOST] += 1;
		return;
	}
	pcap_skb_of(skb, &p);
	start = pcap_start(&p, &linktype);
	/* skb->len counts from skb->data; the packet on the wire started at `start` */
	wire = p.len + (u32)(p.data - p.head);
	wire = wire > start ? wire - start : 0;
	avail = p.tail > start ? p.tail - start : 0;
	caplen = wire < avail ? wire : avail;
	if (caplen > PCAP_SNAPLEN)
		caplen = PCAP_SNAPLEN;
	if (caplen && bpf_probe_read_kernel(ev->data, caplen, (void *)(p.head + start)))
		caplen = 0;

	ev->m.ts_ns = now;
	ev->m.location = location;
	ev->m.sk_ino = owner ? owner->sk_ino : 0;
	ev->m.cgroup = owner ? owner->cgroup : 0;
	ev->m.reason = reason;
	ev->m.ifindex = ifindex;
	ev->m.netns = netns;
	ev->m.len = wire;
	ev->m.caplen = caplen;
	ev->m.cpu = bpf_get_smp_processor_id();
	ev->m.l3proto = flow->l3proto;
	ev->m.linktype = linktype;
	ev->m.l4proto = flow->l4proto;
	ev->m.family = flow->family;
	ev->m.pad = 0;
	pcap_ring.ringbuf_submit(ev, PCAP_RB_NO_WAKEUP);
	stat[STAT_PCAP_SENT] += 1;
}
