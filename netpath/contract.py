"""The one owner of every number and layout the C in bpf/ shares with Python.

Stage ids, hook ids, health counters and the structs Python reads back from
maps and perf buffers are defined here once. `c_prelude()` turns them into C
(enums, struct definitions and a `_Static_assert` on every struct size) that
is compiled ahead of bpf/*.c, and the same definitions give Python its
`struct` formats, so the two sides cannot drift apart. tests/unit/
test_contract.py checks the C handlers against the hook table.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from netpath.stages import SLOW_SLOTS, STAGES

# ---------------------------------------------------------------- structs

_SCALARS = {"u8": ("B", 1), "u16": ("H", 2), "u32": ("I", 4), "u64": ("Q", 8), "s32": ("i", 4), "char": ("s", 1)}


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str | Layout  # a scalar name above, or a nested struct
    count: int = 1  # > 1: an array
    raw: bool = False  # decode an array as bytes (addresses, comm) rather than as numbers

    @property
    def align(self) -> int:
        return self.ctype.align if isinstance(self.ctype, Layout) else _SCALARS[self.ctype][1]

    @property
    def fmt(self) -> str:
        if isinstance(self.ctype, Layout):
            return self.ctype.body_fmt * self.count
        code, width = _SCALARS[self.ctype]
        if self.raw or self.ctype == "char":
            return f"{width * self.count}s"
        return code * self.count if self.count > 1 else code

    def c_size(self) -> int:
        inner = self.ctype.c_size() if isinstance(self.ctype, Layout) else _SCALARS[self.ctype][1]
        return inner * self.count

    def c_decl(self) -> str:
        kind = f"struct {self.ctype.c_name}" if isinstance(self.ctype, Layout) else self.ctype
        return f"\t{kind} {self.name}{f'[{self.count}]' if self.count > 1 else ''};"


@dataclass(frozen=True)
class Layout:
    """A C struct with no implicit padding: C's sizeof equals Python's struct size."""

    c_name: str
    fields: tuple[Field, ...]
    why: str = ""

    @property
    def align(self) -> int:
        return max(f.align for f in self.fields)

    @property
    def body_fmt(self) -> str:
        return "".join(f.fmt for f in self.fields)

    # made once per layout (fields never change: the dataclass is frozen): the exporter unpacks dozens of
    # map values per scrape, and building the Struct each time cost more than the unpacking
    @functools.cached_property
    def fmt(self) -> struct.Struct:
        return struct.Struct("<" + self.body_fmt)

    @functools.cached_property
    def size(self) -> int:
        return self.fmt.size

    def c_size(self) -> int:
        """sizeof() as a C compiler lays the struct out (natural alignment, tail padding)."""
        offset = 0
        for f in self.fields:
            offset = -(-offset // f.align) * f.align + f.c_size()
        return -(-offset // self.align) * self.align

    def unpack(self, raw: bytes) -> tuple:
        """Decode, zero-extending a short buffer (a key that stops before its optional part)."""
        return self.fmt.unpack(raw[: self.size].ljust(self.size, b"\0"))

    def c_decl(self) -> str:
        lines = [f"/* {self.why} */"] if self.why else []
        lines += [f"struct {self.c_name} {{", *(f.c_decl() for f in self.fields), "};"]
        lines.append(f"_Static_assert(sizeof(struct {self.c_name}) == {self.size}, "
                     f"\"struct {self.c_name} differs from netpath/contract.py\");")
        return "\n".join(lines)


def _f(name: str, ctype: str | Layout, count: int = 1, raw: bool = False) -> Field:
    return Field(name, ctype, count, raw)


# ---------------------------------------------------------------- trace

@dataclass(frozen=True)
class Hook:
    """One hit counter in np_cpu_state.hits: a hook the trace program (bpf/trace_*.c) runs on, or a health counter."""

    name: str  # what health.probe_hits reports: "cat:event" for tracepoints, the function for kprobes
    c_id: str  # its enum np_hook member
    kprobe_fn: str = ""  # the C function a kprobe (or kretprobe, when name ends in :return) runs

    @property
    def is_return(self) -> bool:
        return self.name.endswith(":return")

    @property
    def function(self) -> str:
        return self.name.removesuffix(":return")


TRACE_HOOKS: tuple[Hook, ...] = (
    Hook("irq:irq_handler_entry", "H_IRQ_ENTRY"),
    Hook("irq:irq_handler_exit", "H_IRQ_EXIT"),
    Hook("irq:softirq_raise", "H_SOFTIRQ_RAISE"),
    Hook("irq:softirq_entry", "H_SOFTIRQ_ENTRY"),
    Hook("irq:softirq_exit", "H_SOFTIRQ_EXIT"),
    Hook("napi:napi_poll", "H_NAPI_POLL"),
    Hook("net:napi_gro_receive_entry", "H_GRO_ENTRY"),
    Hook("net:napi_gro_receive_exit", "H_GRO_EXIT"),
    Hook("net:netif_rx", "H_NETIF_RX"),
    Hook("net:netif_receive_skb_entry", "H_NRS_ENTRY"),
    Hook("net:netif_receive_skb_list_entry", "H_NRS_LIST_ENTRY"),
    Hook("net:netif_receive_skb", "H_NRS"),
    Hook("sock:sk_data_ready", "H_DATA_READY"),
    Hook("skb:skb_copy_datagram_iovec", "H_COPY"),
    Hook("skb:consume_skb", "H_CONSUME"),
    Hook("skb:kfree_skb", "H_KFREE"),
    Hook("sock:sock_recv_length", "H_RECV_LENGTH"),
    Hook("ip_rcv", "H_KP_IP_RCV", "kp_ip_rcv"),
    Hook("ipv6_rcv", "H_KP_IPV6_RCV", "kp_ipv6_rcv"),
    Hook("ip_local_deliver", "H_KP_IP_LOCAL", "kp_ip_local_deliver"),
    Hook("ip6_input", "H_KP_IP6_INPUT", "kp_ip6_input"),
    Hook("tcp_v4_rcv", "H_KP_TCP", "kp_tcp_v4_rcv"),
    Hook("tcp_v6_rcv", "H_KP_TCP6", "kp_tcp_v6_rcv"),
    Hook("udp_rcv", "H_KP_UDP", "kp_udp_rcv"),
    Hook("udpv6_rcv", "H_KP_UDP6", "kp_udpv6_rcv"),
    Hook("net_rx_action", "H_KP_NET_RX", "kp_net_rx_action"),
    Hook("net_rx_action:return", "H_KR_NET_RX", "kr_net_rx_action"),
    Hook("sock_def_readable", "H_KP_DATA_READY", "kp_sock_def_readable"),
)
# health counters that share the hits array; each name is the JSON health field and the TraceHealth field
TRACE_STATS: tuple[Hook, ...] = (
    Hook("lost_samples", "H_LOST_SAMPLES"),  # histogram map full
    Hook("lost_skbs", "H_LOST_SKBS"),  # per-skb map update failed
    Hook("slow_sent", "H_SLOW"),  # slow events sent
    Hook("missed_enqueue", "H_ENQ_MISSED"),  # sk_data_ready found the datagram already read: not timed
    Hook("ring_overrun", "H_RING_OVERRUN"),  # more than RING datagrams queued on one socket
    Hook("unseen_enqueue", "H_ENQ_UNSEEN"),  # a matching datagram enqueued that netif_receive_skb did not follow
    Hook("unseen_read", "H_READ_UNSEEN"),  # a UDP read with no enqueue seen for it
    Hook("unstamped", "H_UNSTAMPED"),  # rx timestamps: netif_receive_skb saw no usable skb->tstamp, not timed
)
HOOK_NAMES: tuple[str, ...] = tuple(h.name for h in TRACE_HOOKS)
STAT_NAMES: tuple[str, ...] = tuple(h.name for h in TRACE_STATS)
HITS = len(TRACE_HOOKS) + len(TRACE_STATS)


def kprobe_programs(hook: str) -> list[tuple[str, str]]:
    """(entry|return, C function) to attach for a kprobe hook the plan chose."""
    return [("return" if h.is_return else "entry", h.kprobe_fn)
            for h in TRACE_HOOKS if h.kprobe_fn and h.function == hook]


# the per-packet breakdown a slow-packet event carries, in stage_ns[] order (netpath/stages.py owns it)
SLOW_STAGES = tuple(slot.name for slot in SLOW_SLOTS)

# histogram slots (netpath/collect/hist.py explains the slot scheme)
NSLOTS = 512  # a power of two: the C bounds a slot index with a mask
SUM_SLOT = 511  # holds the sum of all samples, not a count (above the largest slot, 495)
MAX_SLOT = 0xFFFF  # hash mode: the slot holding the interval's maximum
RING_SLOTS = 128  # datagrams timed per UDP socket queue; a power of two
MAX_SKBS = 65536
HIST_ROWS = 16384
NAPI_ROWS = 1024
IFACE_FILTER_SLOTS = 64  # --iface entries the device filter map holds

NAPI_VAL = Layout("np_napi_val", (_f("polls", "u64"), _f("work", "u64"), _f("exhausted", "u64"),
                                  _f("budget", "u64"), _f("max_work", "u64")))
HIST_KEY = Layout("np_hist_key", (_f("stage", "u16"), _f("slot", "u16"), _f("ifindex", "u32"),
                                  _f("netns", "u32"), _f("cpu", "u32")))
NAPI_KEY = Layout("np_napi_key", (_f("ifindex", "u32"), _f("netns", "u32"), _f("cpu", "u32")))
CPU_COUNTERS = Layout("np_cpu_counters", (_f("hits", "u64", HITS), _f("napi", NAPI_VAL), _f("napi_key", NAPI_KEY),
                                          _f("pad", "u32"), _f("seen", "u64", len(STAGES))),
                      "what netpath reads of np_cpu_state: hook hits, NAPI counters (without a device "
                      "breakdown: this CPU's; with NAPI_BY_DEV: those of napi_key, the first device it polled), "
                      "and each stage's exact count when its timing is sampled (SAMPLE_SHIFT)")
# where CPU_COUNTERS.unpack() puts each part
CTR_NAPI = HITS  # 5 np_napi_val numbers
CTR_NAPI_KEY = HITS + 5  # 3 np_napi_key numbers
CTR_SEEN = HITS + 9  # one per stage, path order
SAMPLE_MAX = 1024  # --sample N: N a power of two up to this
STAGE_HIST = Layout("np_stage_hist", (_f("slots", "u64", NSLOTS),))
SLOW_EVENT = Layout("np_slow_event", (
    _f("ts_ns", "u64"), _f("stage_ns", "u64", len(SLOW_STAGES)), _f("cpu", "u32"), _f("pid", "u32"),
    _f("ifindex", "u32"), _f("netns", "u32"), _f("saddr", "u32", 4, raw=True), _f("daddr", "u32", 4, raw=True),
    _f("sport", "u16"), _f("dport", "u16"), _f("family", "u8"), _f("l4proto", "u8"), _f("pad", "u16"),
    _f("comm", "char", 16)), "a packet slower than --slower, sent through the perf buffer")

# ---------------------------------------------------------------- drops

# bpf/drops.c's health counters (enum drop_stat); each name is the model.DropHealth field and the JSON one
# (hits is the JSON probe_hits of skb:kfree_skb)
DROP_STATS = ("hits", "matched", "lost_rows", "samples", "skipped_samples", "no_device")
# bpf/capture.c's (--pcap), after them in the same enum: while a capture runs every matched drop is one of
# pcap_sent, pcap_over_cap, pcap_over_rate, pcap_lost; the counts themselves never depend on it
PCAP_STATS = ("pcap_sent", "pcap_over_cap", "pcap_over_rate", "pcap_lost")
MAX_ROWS = 16384
# per-CPU slots bpf/drops.c counts its hottest keys in before the hash; a power of two. A slot is taken by
# the first key that hashes to it and keeps it: counts never move between slot and hash, so reads stay exact.
DROP_CACHE_SLOTS = 16

DROP_WHERE = Layout("drop_where", (
    _f("location", "u64"), _f("reason", "u32"), _f("ifindex", "u32"), _f("netns", "u32"), _f("l3proto", "u16"),
    _f("l4proto", "u8"), _f("family", "u8"), _f("netns_cookie", "u64"), _f("placed_by", "u32"),
    _f("where_pad", "u32")),
    "where and what: the whole key when rows do not group by flow; the namespace's cookie is its identity; "
    "placed_by (enum drop_placed_by) says what named the namespace")
# how bpf/drop_place.c found a drop's namespace (enum drop_placed_by, PLACED_<NAME>): the row's placed_by;
# index 0 is a drop with no namespace (JSON null)
DROP_PLACED_BY = ("none", "device", "socket", "fragment_queue", "reader")
DROP_FLOW = Layout("drop_flow", (
    _f("saddr", "u32", 4, raw=True), _f("daddr", "u32", 4, raw=True), _f("sport", "u16"), _f("dport", "u16"),
    _f("pad", "s32")))
DROP_FULL_KEY = Layout("drop_full_key", (_f("w", DROP_WHERE), _f("f", DROP_FLOW)),
                       "a sample always carries the whole flow, whatever the grouping")
DROP_OWNER = Layout("drop_owner", (_f("sk_ino", "u64"), _f("cgroup", "u64")),
                    "the receiving socket (its inode) and its cgroup v2 id; zero when the kernel does not know")
DROP_SAMPLE = Layout("drop_sample", (
    _f("key", DROP_FULL_KEY), _f("owner", DROP_OWNER), _f("ts_ns", "u64"), _f("len", "u32"), _f("pid", "u32"),
    _f("cpu", "u32"), _f("stackid", "s32"), _f("comm", "char", 16)))

# ---------------------------------------------------------------- capture (drops --pcap, bpf/capture.c)

LINKTYPE_ETHERNET = 1  # pcapng link types: the bytes start at the MAC header
LINKTYPE_RAW = 101  # ... or at the IPv4/IPv6 header (no MAC header on the skb)
SNAPLEN_MIN = 16
SNAPLEN_MAX = 9216  # a jumbo frame: the ring record is this plus PCAP_META, so it is bounded
SNAPLEN_DEFAULT = 256
PCAP_MAX_DEFAULT = 10000
PCAP_MAX_LIMIT = 100_000_000
# the in-kernel rate limit: a per-CPU token bucket, so a storm of millions of drops sends at most
# PCAP_RATE_PER_CPU packets a second (after a burst of PCAP_BURST) per CPU to userspace
PCAP_RATE_PER_CPU = 2000
PCAP_BURST = 512
PCAP_RING_RECORDS = 1024  # the ring holds at least this many records (a burst on two CPUs)
PCAP_META = Layout("pcap_meta", (
    _f("ts_ns", "u64"), _f("location", "u64"), _f("sk_ino", "u64"), _f("cgroup", "u64"), _f("reason", "u32"),
    _f("ifindex", "u32"), _f("netns", "u32"), _f("len", "u32"), _f("caplen", "u32"), _f("cpu", "u32"),
    _f("l3proto", "u16"), _f("linktype", "u16"), _f("l4proto", "u8"), _f("family", "u8"), _f("pad", "u16")),
    "a captured drop: ts_ns is CLOCK_MONOTONIC, len the packet's length from its first captured byte, "
    "caplen the bytes that follow in the ring record (of PCAP_SNAPLEN)")


def pcap_record_size(snaplen: int) -> int:
    """One ring record: the metadata, then snaplen bytes of packet."""
    return PCAP_META.size + snaplen


def pcap_ring_pages(snaplen: int, page: int = 4096) -> int:
    """Ring buffer pages (a power of two, as BPF requires) for PCAP_RING_RECORDS records."""
    need = PCAP_RING_RECORDS * (pcap_record_size(snaplen) + 8)  # 8: the ring's own record header
    pages = 1
    while pages * page < need:
        pages *= 2
    return pages


# ------------------------------------------------------- follow (netpath follow, bpf/follow*.c)


@dataclass(frozen=True)
class FollowHook:
    """A tracepoint netpath follow runs on: each hop names the hook it was seen at by its enum follow_hook id."""

    name: str  # "cat:event" for a tracepoint, the function for a kprobe: the JSON hop's `hook`
    c_id: str  # its enum follow_hook member; a tracepoint's handler is compiled in when HOOK_<c_id> is defined
    entry: bool = False  # runs the filters: a packet starts being followed at the first of these it matches
    kprobe_fn: str = ""  # a kprobe hop: the C function attached to the kernel function `name`

    @property
    def is_kprobe(self) -> bool:
        return bool(self.kprobe_fn)


FOLLOW_HOOKS: tuple[FollowHook, ...] = (
    FollowHook("net:net_dev_queue", "FH_DEV_QUEUE", entry=True),
    FollowHook("qdisc:qdisc_enqueue", "FH_QDISC_ENQUEUE"),
    FollowHook("qdisc:qdisc_dequeue", "FH_QDISC_DEQUEUE"),
    FollowHook("net:net_dev_start_xmit", "FH_START_XMIT", entry=True),  # GSO's segments are new skbs here
    FollowHook("net:netif_rx", "FH_NETIF_RX", entry=True),
    FollowHook("net:net_dev_xmit", "FH_XMIT"),
    FollowHook("net:napi_gro_receive_entry", "FH_GRO", entry=True),
    FollowHook("net:napi_gro_receive_exit", "FH_GRO_EXIT"),
    FollowHook("net:netif_receive_skb", "FH_RECEIVE", entry=True),
    FollowHook("sock:sock_rcvqueue_full", "FH_RCVQ_FULL"),
    FollowHook("udp:udp_fail_queue_rcv_skb", "FH_UDP_FAIL"),
    FollowHook("sock:sk_data_ready", "FH_DATA_READY"),
    FollowHook("skb:skb_copy_datagram_iovec", "FH_COPY"),
    FollowHook("skb:consume_skb", "FH_CONSUME"),
    FollowHook("skb:kfree_skb", "FH_KFREE"),
    FollowHook("kmem:kmem_cache_free", "FH_SLAB_FREE"),
    # function hops where kprobes exist (bpf/follow_kprobe.c): lookups only, never a start
    FollowHook("br_handle_frame", "FH_KP_BR_HANDLE_FRAME", kprobe_fn="kp_follow_br_handle_frame"),
    FollowHook("br_forward", "FH_KP_BR_FORWARD", kprobe_fn="kp_follow_br_forward"),
    FollowHook("ip_rcv", "FH_KP_IP_RCV", kprobe_fn="kp_follow_ip_rcv"),
    FollowHook("ip_rcv_finish", "FH_KP_IP_RCV_FINISH", kprobe_fn="kp_follow_ip_rcv_finish"),
    FollowHook("nf_hook_slow", "FH_KP_NF_HOOK_SLOW", kprobe_fn="kp_follow_nf_hook_slow"),
    FollowHook("ip_forward", "FH_KP_IP_FORWARD", kprobe_fn="kp_follow_ip_forward"),
    FollowHook("ip_local_deliver", "FH_KP_IP_LOCAL_DELIVER", kprobe_fn="kp_follow_ip_local_deliver"),
    FollowHook("udp_rcv", "FH_KP_UDP_RCV", kprobe_fn="kp_follow_udp_rcv"),
    FollowHook("tcp_v4_rcv", "FH_KP_TCP_V4_RCV", kprobe_fn="kp_follow_tcp_v4_rcv"),
    FollowHook("veth_xmit", "FH_KP_VETH_XMIT", kprobe_fn="kp_follow_veth_xmit"),
)
# nf_hook_slow's hop carries the netfilter hook in rc: family << 8 | hook (struct nf_hook_state's first bytes)
NF_FAMILIES = {2: "ipv4", 7: "bridge", 10: "ipv6", 3: "arp", 5: "netdev"}
NF_INET_HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING", "INGRESS")
# hooks the issue names that cannot follow an skb, and why (the start line's `unavailable`)
FOLLOW_NOT_SKB = {"xdp:xdp_redirect": "carries the XDP buffer, not an skb: no address to follow it by"}
# how a followed packet ended (enum follow_fate); in_flight: not ended (a hop that is not the last)
# freed: by __kfree_skb and friends, which have no skb tracepoint (TCP frees a pure ACK so), seen as the sk_buff's
# own slab object going back (kmem:kmem_cache_free)
# segmented: consumed where software GSO cut it into segments, each a new skb followed from net_dev_start_xmit
# (netpath tells it from `consumed` by the code location; the C never sends it)
FOLLOW_FATES = ("in_flight", "delivered", "dropped", "sent", "gro_merged", "consumed", "freed", "untracked",
                "segmented")
FOLLOW_FRAMES = 8  # kernel stack frames a `freed` or `consumed` hop carries: who freed it, past the free functions
# bpf/follow.c's own counters (enum follow_stat), then one hit counter per hook (FOLLOW_HOOKS order)
# clones: skbs followed as clones of a followed packet; clones_unseen: originals whose data buffer found no room
# in follow_heads (FOLLOW_SLOTS), so their clones, if any, were not followed
FOLLOW_STATS = ("started", "table_full", "lost_hops", "hops_cut", "untracked", "clones", "clones_unseen")
FOLLOW_SLOTS = 4096  # skbs followed at once (the followed hash); a start past it is counted in table_full
FOLLOW_MAX_HOPS = 128  # hops sent per packet: a routing loop cannot fill the ring (past it: hops_cut)
FOLLOW_MAX_DEFAULT = 10  # --count
FOLLOW_MAX_LIMIT = 10_000_000
FOLLOW_RING_BYTES = 1 << 19  # the hop ring: ~2400 hops (216 bytes each) between two drains (every 0.1 s)
FOLLOW_HOP = Layout("follow_hop", (
    _f("id", "u64"), _f("skb", "u64"), _f("offset_ns", "u64"), _f("netns_cookie", "u64"), _f("location", "u64"),
    _f("cgroup", "u64"), _f("sk_ino", "u64"), _f("clone_of", "u64"), _f("netns", "u32"), _f("ifindex", "u32"),
    _f("len", "u32"),
    _f("cpu", "u32"), _f("reason", "u32"), _f("pid", "u32"), _f("rc", "s32"), _f("hook", "u16"), _f("fate", "u8"),
    _f("family", "u8"), _f("saddr", "u32", 4, raw=True), _f("daddr", "u32", 4, raw=True), _f("sport", "u16"),
    _f("dport", "u16"), _f("l3proto", "u16"), _f("l4proto", "u8"), _f("pad", "u8"), _f("comm", "char", 16),
    _f("frames", "u64", FOLLOW_FRAMES)),
    "one hop of a followed skb: clone_of the id of the packet it is a clone of (0: an original); "
    "offset_ns since the first hop, where (namespace cookie and inode, device), "
    "the headers read again here (family 0: not readable at this hook); fate ends the packet; delivered: "
    "the socket's inode and cgroup (sk_data_ready) or the reading process (skb_copy_datagram_iovec); "
    "consumed: the current process too, and frames, to tell a read from a free in softirq")


# socket_queue per reader (trace --per-socket): the reading process and its cgroup
OWNER_HIST_KEY = Layout("np_owner_key", (_f("cgroup", "u64"), _f("tgid", "u32"), _f("slot", "u16"),
                                         _f("pad", "u16")))
OWNER_ROWS = 4096

SHARED_LAYOUTS: tuple[Layout, ...] = (NAPI_VAL, HIST_KEY, NAPI_KEY, CPU_COUNTERS, STAGE_HIST, SLOW_EVENT,
                                      OWNER_HIST_KEY, DROP_WHERE, DROP_FLOW, DROP_FULL_KEY, DROP_OWNER, DROP_SAMPLE,
                                      PCAP_META, FOLLOW_HOP)

# ---------------------------------------------------------------- C text


def _enum(name: str, members: tuple[str, ...], last: str) -> str:
    body = "".join(f"\t{m} = {i},\n" for i, m in enumerate(members))
    return f"enum {name} {{\n{body}\t{last} = {len(members)},\n}};"


def c_prelude() -> str:
    """The generated C, compiled ahead of bpf/netpath.h and the program's own files."""
    stages = tuple(f"STAGE_{s.c_name}" for s in STAGES)
    parts = [
        _enum("np_stage", stages, "NSTAGES"),
        _enum("np_hook", tuple(h.c_id for h in (*TRACE_HOOKS, *TRACE_STATS)), "H_MAX"),
        _enum("drop_stat", tuple(f"STAT_{s.upper()}" for s in (*DROP_STATS, *PCAP_STATS)), "STAT_MAX"),
        _enum("drop_placed_by", tuple(f"PLACED_{p.upper()}" for p in DROP_PLACED_BY), "PLACED_MAX"),
        _enum("np_slow_slot", tuple(f"SLOW_{slot.name.upper()}" for slot in SLOW_SLOTS), "NP_SLOW_SLOTS"),
        _enum("follow_hook", tuple(h.c_id for h in FOLLOW_HOOKS), "FH_MAX"),
        _enum("follow_fate", tuple(f"FATE_{f.upper()}" for f in FOLLOW_FATES), "FATE_MAX"),
        _enum("follow_stat", tuple(f"FSTAT_{s.upper()}" for s in FOLLOW_STATS), "FSTAT_MAX"),
        "\n".join([f"#define NSLOTS\t\t{NSLOTS}", f"#define SUM_SLOT\t{SUM_SLOT}", f"#define MAX_SLOT\t{MAX_SLOT:#x}",
                   f"#define NP_SLOW_STAGES\t{len(SLOW_STAGES)}", f"#define IFACE_FILTER_SLOTS\t{IFACE_FILTER_SLOTS}",
                   f"#define DROP_CACHE_SLOTS\t{DROP_CACHE_SLOTS}",
                   f"#define LINKTYPE_ETHERNET\t{LINKTYPE_ETHERNET}", f"#define LINKTYPE_RAW\t{LINKTYPE_RAW}",
                   f"#define PCAP_RATE_PER_CPU\t{PCAP_RATE_PER_CPU}", f"#define PCAP_BURST\t{PCAP_BURST}",
                   f"#define FOLLOW_SLOTS\t{FOLLOW_SLOTS}", f"#define FOLLOW_MAX_HOPS\t{FOLLOW_MAX_HOPS}",
                   f"#define FOLLOW_FRAMES\t{FOLLOW_FRAMES}",
                   f"#define FH_FIRST_KPROBE\t{next(i for i, h in enumerate(FOLLOW_HOOKS) if h.is_kprobe)}"]),
        *(layout.c_decl() for layout in SHARED_LAYOUTS),
    ]
    return "\n\n".join(["/* generated from netpath/contract.py: edit it there */", *parts]) + "\n"
