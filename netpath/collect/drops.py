"""netpath drops: build the kfree_skb program from a query, run it as a Session, decode its maps."""

from __future__ import annotations

import ipaddress
import os
import struct
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any

from netpath import bpf, contract, untrusted
from netpath.collect import counters as counters_mod
from netpath.collect.netns_rx import NamespaceCounters
from netpath.collect.owners import OwnerResolver
from netpath.collect.session import ProgramSession
from netpath.errors import MissingCapability
from netpath.filter_defines import filter_defines
from netpath.kernel import offsets as kernel_offsets
from netpath.kernel import reasons as reasons_mod
from netpath.kernel.facts import KernelFacts
from netpath.kernel.reasons import DropReasons
from netpath.links import IfaceNames
from netpath.model import (
    Attached,
    CapturedPacket,
    Counter,
    DropHealth,
    DropRow,
    DropSample,
    DropSnapshot,
    DropsStart,
    PcapHealth,
    Unavailable,
)
from netpath.query import Filters

TRACEPOINT = "skb:kfree_skb"
GROUP_FIELDS = ("reason", "location", "iface", "proto", "flow", "socket", "cgroup")
DEFAULT_BY = ("reason", "location", "iface", "proto")
MAX_ROWS = contract.MAX_ROWS

# struct drop_key is drop_where alone unless rows group by flow, then the whole drop_full_key
SHORT_KEY_SIZE = contract.DROP_WHERE.size
KEY_FIELDS = len(contract.DROP_FULL_KEY.fmt.unpack(bytes(contract.DROP_FULL_KEY.size)))
COUNT = struct.Struct("<Q")
INDEX0 = struct.Struct("<I")  # an array map's index
STACK_ID = struct.Struct("<i")
# readings of the counters between two of the matched count before a storm is said to leave no pause
ALIGN_TRIES = 10
# drops landing during one try that say no pause is coming, when the last reading found none either (a
# storm going on, not a burst's tail): were drops to arrive at random (Poisson), a try as long would find
# none with a chance of e^-8 (0.03%). A flood lands hundreds a try: the exporter's nine more readings of
# every counter at each scrape were about half its cost under one (py-spy, bench/README.md)
ALIGN_HOPELESS = 8
CAPTURE_ROW_CACHE = 4096  # captured packets' rows kept by where they died (cleared when full)

L4_NAMES = {0: "hopopt", 1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 58: "icmpv6", 132: "sctp"}
L3_NAMES = {0x0800: "ipv4", 0x86DD: "ipv6", 0x0806: "arp", 0x8100: "vlan", 0x88CC: "lldp", 0x8035: "rarp"}


@dataclass(frozen=True)
class PcapQuery:
    """drops --pcap: capture matched drops' bytes (bpf/capture.c)."""

    snaplen: int = contract.SNAPLEN_DEFAULT
    max_packets: int = contract.PCAP_MAX_DEFAULT


@dataclass(frozen=True)
class DropsQuery:
    """Everything `netpath drops` (or the exporter) asks of the kfree_skb program, validated."""

    filters: Filters = field(default_factory=Filters)
    reason_code: int | None = None
    by: tuple[str, ...] = DEFAULT_BY
    stack: bool = False
    samples: int = 0  # per CPU per interval
    tp_btf: bool = True  # load kfree_skb as a BTF-typed raw tracepoint where the kernel allows it
    pcap: PcapQuery | None = None
    # label a namespace without an ip netns name by the process in it (comm[pid]); the exporter turns it off
    # beyond localhost unless --label-processes
    name_processes: bool = True

    @property
    def owner_keyed(self) -> bool:
        """Rows carry the receiving socket and/or its cgroup."""
        return "socket" in self.by or "cgroup" in self.by

    @property
    def flow_keyed(self) -> bool:
        return "flow" in self.by or self.filters.narrows_flow

    @property
    def group_by(self) -> tuple[str, ...]:
        """What rows are keyed by: --by, and the flow when a port or address filter reads it."""
        return self.by + (("flow",) if self.flow_keyed and "flow" not in self.by else ())


def drop_reasons(facts: KernelFacts) -> DropReasons:
    """This kernel's reason names: BTF first, the kfree_skb tracepoint's own table without it."""
    fmt = facts.tracepoint_format(TRACEPOINT)
    return reasons_mod.load(facts.btf_path, fmt.symbols.get("reason") if fmt else None)


OWNER_FIELDS = ("OFF_SKB_SK", "OFF_SK_STATE", "OFF_SK_SOCKET", "OFF_SK_CGROUP", "OFF_CGROUP_KN", "OFF_KN_ID",
                "OFF_SOCKET_INODE", "OFF_INODE_INO")


def has_rx_sk_field(facts: KernelFacts) -> bool:
    """kfree_skb carries the receiving socket since Linux 6.11."""
    fmt = facts.tracepoint_format(TRACEPOINT)
    return bool(fmt and fmt.has("rx_sk"))


def has_reason_field(facts: KernelFacts) -> bool:
    fmt = facts.tracepoint_format(TRACEPOINT)
    return bool(fmt and fmt.has("reason"))


PCAP_FIELDS = ("OFF_SKB_HEAD", "OFF_SKB_DATA", "OFF_SKB_LEN", "OFF_SKB_TAIL", "OFF_SKB_MAC_HEADER",
               "OFF_SKB_NETWORK_HEADER")
# the C loads these as u64 (pointers), u32 and u16: a kernel laying them out otherwise cannot capture
PCAP_SIZES = {"SIZE_SKB_HEAD": 8, "SIZE_SKB_DATA": 8, "SIZE_SKB_LEN": 4, "SIZE_SKB_TAIL": 4,
              "SIZE_SKB_MAC_HEADER": 2, "SIZE_SKB_NETWORK_HEADER": 2}


def pcap_defines(pcap: PcapQuery, offsets: dict[str, int]) -> dict[str, int]:
    missing = [n for n in PCAP_FIELDS if n not in offsets]
    if missing:
        raise MissingCapability(f"this kernel's BTF lacks the sk_buff fields --pcap reads: {', '.join(missing)}")
    odd = [f"{n}={offsets.get(n)}" for n, size in PCAP_SIZES.items() if offsets.get(n) != size]
    if odd:
        raise MissingCapability(f"--pcap cannot read this kernel's sk_buff layout ({', '.join(odd)})")
    out = {name: offsets[name] for name in PCAP_FIELDS}
    page = os.sysconf("SC_PAGE_SIZE")
    out.update(PCAP_SNAPLEN=pcap.snaplen, PCAP_MAX=pcap.max_packets, NP_PAGE_SIZE=page,
               PCAP_RING_PAGES=contract.pcap_ring_pages(pcap.snaplen, page))
    return out


# The frames above the one that dropped: netpath's program (BPF), the tracepoint's trampolines, and the
# kernel's free functions that fire skb:kfree_skb (sk_skb_reason_drop since 6.11, kfree_skb_reason before;
# net/core/skbuff.c). The tracepoint's `location` is their caller, and so is the stack's first frame.
TRACING_FRAMES = ("BPF", "bpf_trace_run", "__bpf_trace_", "__traceiter_", "trace_kfree_skb", "sk_skb_reason_drop",
                  "kfree_skb_reason", "kfree_skb_list_reason", "__kfree_skb_reason", "kfree_skb+")


def dropping_frames(frames: list[str]) -> list[str]:
    """The stack from the frame that dropped the skb down, without netpath's and the tracing frames above."""
    start = 0
    while start < len(frames) and frames[start].startswith(TRACING_FRAMES):
        start += 1
    return frames[start:] if start < len(frames) else frames


def program_source(query: DropsQuery, facts: KernelFacts, offsets: dict[str, int]) -> bpf.ProgramSource:
    """Pure: the C files and every number they are compiled with."""
    needed = ("OFF_SKB_DEV", "OFF_SKB_LEN", "OFF_SKB_HEAD", "OFF_SKB_PROTOCOL", "OFF_SKB_NETWORK_HEADER",
              "OFF_DEV_IFINDEX", "OFF_DEV_ND_NET", "OFF_NET_NS_INUM")
    missing = [n for n in needed if n not in offsets]
    if missing:
        raise MissingCapability(f"this kernel's BTF lacks struct fields netpath reads: {', '.join(missing)}")
    defines = {name: offsets[name] for name in needed}
    defines.update(kernel_offsets.spans(offsets))
    defines["MAX_ROWS"] = MAX_ROWS
    defines["TP_HAS_REASON"] = int(has_reason_field(facts))
    for name in GROUP_FIELDS:
        defines[f"BY_{name.upper()}"] = int(name in query.by or (name == "flow" and query.flow_keyed))
    defines["BY_OWNER"] = int(query.owner_keyed)
    defines["TP_HAS_RX_SK"] = int(has_rx_sk_field(facts))
    cgroup_id = query.filters.cgroup_id
    # the socket and cgroup of a drop (bpf/drops_owner.c): for rows by owner, the cgroup filter and samples
    owner = query.owner_keyed or bool(query.samples) or cgroup_id is not None
    if owner:
        missing = [n for n in OWNER_FIELDS if n not in offsets]
        if missing:
            raise MissingCapability("this kernel's BTF lacks the socket fields attribution reads: "
                                    + ", ".join(missing))
        defines.update({name: offsets[name] for name in OWNER_FIELDS})
    if cgroup_id is not None:
        defines["FILTER_CGROUP"] = cgroup_id
    defines["SAMPLE_BUDGET"] = query.samples
    if query.stack:
        defines["WITH_STACK"] = 1
    if query.reason_code is not None:
        defines["FILTER_REASON"] = query.reason_code
    defines.update(filter_defines(query.filters))
    defines.update(place_defines(facts, offsets))
    if query.filters.netns is not None and query.filters.netns.cookie:
        defines["FILTER_NETNS_COOKIE"] = query.filters.netns.cookie  # an inode reused later is not it
    files = ["where.c", "drop_place.c", *(["drops_owner.c"] if owner else []), "drops.c"]
    if query.pcap is not None:
        defines.update(pcap_defines(query.pcap, offsets))
        files.insert(files.index("drops.c"), "capture.c")  # drops.c calls it
    if query.tp_btf:
        defines["TP_BTF"] = 1
        return bpf.ProgramSource(files, defines, {"kfree_skb": "kfree_skb"}, packet_loads=True)
    return bpf.ProgramSource(files, defines)


# where the kernel frees skbs whose dev field is something else (bpf/drop_place.c), and the expiry
# functions that free a fragment queue's head with its device restored
FRAG_PURGE = "inet_frag_rbtree_purge"
FRAG_EXPIRE = (("FRAG_EXPIRE", "ip_expire"), ("FRAG_EXPIRE6", "ip6_frag_expire"))
# the fragment queues' expiry timers (timer_list.function): the queue's namespace is fqdir->net
FRAG_TIMERS = ("ip_expire", "ip6_frag_expire", "nf_ct_frag6_expire")
FRAG_TIMER_HOOK = "timer:timer_expire_entry"  # attached beside kfree_skb when the fragment timers are known
# where a queued UDP datagram's checksum is found bad at the read, in the reading task's context
# (udp_recvmsg, udpv6_recvmsg; __first_packet_length under poll and FIONREAD, or first_packet_length where
# it is inlined)
UDP_READS = ("udp_recvmsg", "udpv6_recvmsg", "__first_packet_length", "first_packet_length")
READER_FIELDS = ("OFF_TASK_NSPROXY", "OFF_NSPROXY_NET_NS")
FRAG_TIMER_FIELDS = ("OFF_TIMER_FUNCTION", "OFF_FRAGQ_TIMER", "OFF_FRAGQ_FQDIR", "OFF_FQDIR_NET")


def place_defines(facts: KernelFacts, offsets: dict[str, int]) -> dict[str, int]:
    """What bpf/drop_place.c needs to find a drop's namespace when skb->dev is gone: socket and cookie
    offsets from BTF, the fragment and UDP read functions' text and the fragment timers' addresses from
    kallsyms (numbers only)."""
    out: dict[str, int] = {name: offsets[name] for name in ("OFF_SKB_SK", "OFF_SK_NET", "OFF_SKB_SKB_IIF",
                                                            "OFF_NET_COOKIE")
           if name in offsets}
    # one cached lookup for every function a placement needs (kallsyms is not scanned at start)
    ranges = facts.text_ranges((FRAG_PURGE, *(name for _, name in FRAG_EXPIRE), *FRAG_TIMERS, *UDP_READS))
    purge = ranges.get(FRAG_PURGE)
    if purge is not None:
        out["FRAG_PURGE_LO"], out["FRAG_PURGE_HI"] = purge
        for prefix, name in FRAG_EXPIRE:
            found = ranges.get(name)
            if found is not None:
                out[f"{prefix}_LO"], out[f"{prefix}_HI"] = found
        timers = [ranges[n][0] for n in FRAG_TIMERS if n in ranges]
        if timers and all(f in offsets for f in FRAG_TIMER_FIELDS):
            out.update({f: offsets[f] for f in FRAG_TIMER_FIELDS})
            out.update({f"FRAG_TIMER{i}": addr for i, addr in enumerate(timers)})
    reads = [ranges[n] for n in UDP_READS if n in ranges]
    if reads and all(f in offsets for f in READER_FIELDS):
        out.update({f: offsets[f] for f in READER_FIELDS})
        for i, (lo, hi) in enumerate(reads):
            out[f"UDP_READ{i}_LO"], out[f"UDP_READ{i}_HI"] = lo, hi
    return out


def placed_by_name(code: int) -> str | None:
    """The row's placed_by: what named a drop's namespace (contract.DROP_PLACED_BY; 0 or unknown: None)."""
    return contract.DROP_PLACED_BY[code] if 0 < code < len(contract.DROP_PLACED_BY) else None


def proto_name(family: int, l3proto: int, l4proto: int) -> str | None:
    if family:
        return L4_NAMES.get(l4proto, f"ipproto-{l4proto}")
    if l3proto:
        return L3_NAMES.get(l3proto, f"0x{l3proto:04x}")
    return None


def addr_text(family: int, raw: bytes) -> str | None:
    """A key's address bytes as text (family 4 or 6, as the C writes it); None for no address."""
    if family == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == 6:
        return str(ipaddress.IPv6Address(raw))
    return None


@dataclass(frozen=True)
class DecodedKey:
    location: int
    reason: int
    ifindex: int
    netns: int
    l3proto: int
    l4proto: int
    family: int
    saddr: bytes
    daddr: bytes
    sport: int
    dport: int
    _: KW_ONLY
    netns_cookie: int = 0  # the namespace's identity (net->net_cookie); netns is its inode, for people
    sk_ino: int = 0  # the owner part, when rows group by socket or cgroup
    cgroup: int = 0
    placed_by: int = 0  # enum drop_placed_by: what named the namespace (contract.DROP_PLACED_BY)

    @classmethod
    def unpack(cls, raw: bytes, flow: bool = True, owner: bool = False) -> DecodedKey:
        """The map key as bpf/drops.c lays it out: where, then flow and owner when rows group by them."""
        *where, cookie, placed_by, _pad = contract.DROP_WHERE.unpack(raw)
        rest = raw[contract.DROP_WHERE.size:]
        flow_part = contract.DROP_FLOW.unpack(rest if flow else b"")[:4]
        if flow:
            rest = rest[contract.DROP_FLOW.size:]
        sk_ino, cgroup = contract.DROP_OWNER.unpack(rest) if owner else (0, 0)
        return cls(*where, *flow_part, netns_cookie=cookie, sk_ino=sk_ino, cgroup=cgroup, placed_by=placed_by)


class RowDecoder:
    """Turns a decoded key and count into a DropRow with names from the kernel."""

    def __init__(self, query: DropsQuery, reasons: DropReasons, facts: KernelFacts, ifaces: IfaceNames,
                 has_reason: bool, owners: OwnerResolver | None = None) -> None:
        self.query = query
        self.reasons = reasons
        self.facts = facts
        self.ifaces = ifaces
        self.has_reason = has_reason
        self.owners = owners
        # (cookie, ifindex) -> (iface, netns_label) as first shown: a row's labels never change once
        # published (a metric series with new labels would be a new series, the old one frozen)
        self._shown: dict[tuple[int, int], tuple[str | None, str | None]] = {}

    def _names(self, key: DecodedKey) -> tuple[str | None, str | None]:
        """The interface and namespace names of a key, pinned at their first reading when keyed by cookie."""
        pin = (key.netns_cookie, key.ifindex)
        if key.netns_cookie and pin in self._shown:
            return self._shown[pin]
        names = (self.ifaces.name(key.netns, key.ifindex, key.netns_cookie),
                 self.ifaces.netns_label(key.netns, key.netns_cookie) if key.netns else None)
        if key.netns_cookie:
            self._shown[pin] = names
        return names

    def row(self, key: DecodedKey, count: int, full: bool = False) -> DropRow:
        by = set(self.query.by) | ({"reason", "location", "iface", "proto", "flow"} if full else set())
        flow = full or self.query.flow_keyed
        reason = code = None
        if "reason" in by and self.has_reason:
            code = key.reason
            reason = self.reasons.name(key.reason)
        location = self.facts.kallsyms.symbolize(key.location) if "location" in by else None
        iface = ifindex = ns = label = None
        if "iface" in by:
            ifindex = key.ifindex or None
            ns = key.netns or None
            iface, label = self._names(key)
        proto = proto_name(key.family, key.l3proto, key.l4proto) if ("proto" in by or flow) else None
        extra: dict[str, Any] = {}
        if flow:
            extra = {
                "family": key.family or None,
                "saddr": addr_text(key.family, key.saddr),
                "daddr": addr_text(key.family, key.daddr),
                "sport": key.sport if key.family and key.l4proto in (6, 17) else None,
                "dport": key.dport if key.family and key.l4proto in (6, 17) else None,
            }
        if (full or self.query.owner_keyed) and self.owners is not None:
            extra["owner"] = self.owners.of_socket(key.sk_ino, key.cgroup, key.netns or None)
        if "iface" in by and key.netns:
            extra["netns_label"] = label
            extra["placed_by"] = placed_by_name(key.placed_by)
        return DropRow(reason, code, location, iface, ifindex, ns, proto, count, **extra)


class DropsSession(ProgramSession):
    """netpath drops as a Session: the kfree_skb program, its maps, the counters beside it.

    `live`: interval snapshots rank rows by run total and carry this
    interval's count per row (the refreshing terminal table); otherwise they
    hold this interval's counts only.
    """

    def __init__(self, query: DropsQuery, facts: KernelFacts, source: bpf.ProgramSource, reasons: DropReasons,
                 limit: int | None = None, live: bool = False, loader: bpf.Loader = bpf.compile_program) -> None:
        super().__init__(loader)
        self.query = query
        self.facts = facts
        self.source = source
        self.limit = limit
        self.live = live
        self._has_reason = has_reason_field(facts)
        owners = OwnerResolver() if query.owner_keyed or query.samples else None
        self._decoder = RowDecoder(query, reasons, facts, IfaceNames(query.name_processes), self._has_reason,
                                   owners)
        # counters name interfaces in the untrusted-name form: compare the user's names in it too
        self._iface_set = {untrusted.name(untrusted.raw_bytes(i)) for i in query.filters.ifaces} or None
        self._lost_samples = 0
        self._last_counts: dict[bytes, int] = {}
        self._last_stats: dict[str, int] = {}
        self._base_counts: dict[bytes, int] = {}  # the program's counts at the start's aligned reading
        self._base_stats: dict[str, int] = {}
        # more read at the start's instant, with the counters (the exporter's finding window): its result
        self.at_start: Callable[[], object] | None = None
        self.at_start_value: object = None
        self._last_lost = 0
        self._last_ns = 0
        self._counters: counters_mod.CounterDeltas | None = None
        # host-wide runs: every other namespace's drop counters too (an exporter sets zero_series: every
        # known counter of every namespace, its own included, from the first scrape)
        self.zero_series = False
        self._other_ns: NamespaceCounters | None = None
        self._last_counters: dict[counters_mod.CounterKey, int] = {}
        self._netns_gone = False
        self._forgotten: set[bytes] = set()  # keys of devices gone (forget_gone_devices)
        self._warnings: list[str] = []  # said once, in the next snapshot and the summary
        self._unpaused: set[str] = set()  # readings (start, end) already warned about: an exporter reads
        # the end at every scrape, and a storm that never pauses would otherwise add a warning each time
        self._storming: set[str] = set()  # readings whose last time found no pause (ALIGN_HOPELESS)
        self._said = 0
        self._pcap_written = 0  # captured packets handed out as events
        self._pcap_over_max = 0  # delivered past --pcap-max (the kernel's cap should leave none)
        self._last_pcap = (0, 0)
        self._capture_rows: dict[tuple[int, ...], DropRow] = {}
        self._wall_offset_ns = 0  # CLOCK_REALTIME - CLOCK_MONOTONIC (bpf_ktime_get_ns)

    def _read_counters(self, hits: int | None = None) -> dict[counters_mod.CounterKey, int]:
        """The counters now; a namespace deleted mid-run freezes its counters at their last values. `hits`
        (kfree_skb hits so far) lets an unchanged rtnetlink dump be reused (kernel/linkstats.py)."""
        if self._netns_gone:
            return self._last_counters
        ns = self.query.filters.netns
        try:
            self._last_counters = counters_mod.read_all(ns, self._iface_set, hits)
        except OSError as exc:
            if ns is None:
                raise
            self._netns_gone = True
            self._warnings.append(f"network namespace {ns.label!r} is gone ({exc.strerror}): its "
                                  "counters stop here; drops it had are still counted")
        return self._last_counters

    def start(self) -> DropsStart:
        prog = self._load(self.source, self.facts, self.query.filters.iface_keys)
        if self.query.samples:
            prog.open_perf_buffer("samples", self._on_sample, self._on_lost)
        if self.query.pcap is not None:
            self._wall_offset_ns = time.time_ns() - time.monotonic_ns()
            prog.open_ring_buffer("pcap_ring", self._on_capture)
        # the run counts from here: the counters' baseline and the program's counts at one instant
        first, self._base_counts, self._base_stats = self._aligned_reading("start")
        self._counters = counters_mod.CounterDeltas(first)
        self._last_counts, self._last_stats = dict(self._base_counts), dict(self._base_stats)
        if self.query.filters.netns is None:
            self._other_ns = NamespaceCounters(own=self.zero_series)
            self._other_ns.read()
        unavailable = () if self._has_reason else (
            Unavailable("skb:kfree_skb reason", "this kernel's kfree_skb has no reason field"),)
        return DropsStart(
            kernel=self.facts.release, headers=bpf.headers_mode(self.facts),
            attached=(Attached(TRACEPOINT, "tp_btf" if prog.tp_btf else "raw_tracepoint", "kfree_skb"),
                      *((Attached(FRAG_TIMER_HOOK, "raw_tracepoint", "timer_expire_entry"),)
                        if "FRAG_TIMER0" in self.source.defines else ())),
            unavailable=unavailable, filters=self.query.filters.report(), group_by=self.query.group_by,
            reason_code=self.query.reason_code,
        )

    def _aligned_reading(self, when: str) -> tuple[dict[counters_mod.CounterKey, int], dict[bytes, int],
                                                   dict[str, int]]:
        """The counters, the drop counts and the health counters at one instant, so a counter (UdpNoPorts)
        and the drops it counts too (NO_SOCKET) cover the same packets.

        Two readings cannot be taken at once, so the counters are read between two readings of the
        program's matched count, again (up to ALIGN_TRIES) while a drop landed in between, unless so many
        landed (ALIGN_HOPELESS) in a storm the last reading found going on too that no pause is coming.
        When drops never pause (a storm), the last try stands and the output says how long the two
        readings were apart.
        """
        assert self.prog is not None
        took = 0
        for _ in range(ALIGN_TRIES):
            began = time.monotonic_ns()
            matched = self.stats().get("matched", 0)
            counters = self._read_counters()
            if when == "start" and self.at_start is not None:
                self.at_start_value = self.at_start()
            counts, stats = self.counts(), self.stats()
            took = time.monotonic_ns() - began
            landed = stats.get("matched", 0) - matched
            if landed == 0:
                self._storming.discard(when)
                return counters, counts, stats
            if landed >= ALIGN_HOPELESS and when in self._storming:
                break
        self._storming.add(when)
        if when not in self._unpaused:
            self._unpaused.add(when)
            self._warnings.append(f"drops never paused while the counters were read at the {when}: a counter "
                                  f"may differ from the drop rows by the drops of {took / 1e6:.1f} ms")
        return counters, counts, stats

    def _since_start(self, counts: dict[bytes, int], stats: dict[str, int]) -> tuple[dict[bytes, int],
                                                                                     dict[str, int]]:
        """Readings less the start's: what the run counted. A capture's counters stay whole: they agree
        with the packets written, which began at the attach."""
        counts = {k: v - self._base_counts.get(k, 0) for k, v in counts.items()}
        stats = {k: v if k in contract.PCAP_STATS else v - self._base_stats.get(k, 0) for k, v in stats.items()}
        return counts, stats

    def counts(self) -> dict[bytes, int]:
        """Cumulative drops per raw map key: the hash rows plus every CPU's cache slots (bpf/drops.c)."""
        assert self.prog is not None
        out = {k: sum(COUNT.unpack(v)[0] for v in values) for k, values in self.prog.percpu_items("drops").items()}
        key_size = (contract.DROP_WHERE.size + (contract.DROP_FLOW.size if self.query.flow_keyed else 0)
                    + (contract.DROP_OWNER.size if self.query.owner_keyed else 0))
        slot = key_size + COUNT.size
        for raw in self.prog.percpu_value("drop_cache", 0):
            for off in range(0, min(len(raw), slot * contract.DROP_CACHE_SLOTS), slot):
                n = COUNT.unpack_from(raw, off + key_size)[0]
                key = raw[off:off + key_size]
                if n and key not in self._forgotten:
                    out[key] = out.get(key, 0) + n
        return out

    def stats(self) -> dict[str, int]:
        """The health counters: one per-CPU value holding every enum drop_stat slot."""
        assert self.prog is not None
        names = (*contract.DROP_STATS, *contract.PCAP_STATS)  # the C's enum drop_stat, in order
        totals = [0] * len(names)
        for raw in self.prog.percpu_value("stats", 0):
            for i in range(min(len(totals), len(raw) // COUNT.size)):
                totals[i] += COUNT.unpack_from(raw, i * COUNT.size)[0]
        return dict(zip(names, totals, strict=True))

    def interval(self, elapsed_ns: int) -> DropSnapshot:
        assert self._counters is not None and self.prog is not None
        now, stats = self.counts(), self.stats()
        delta = {k: v - self._last_counts.get(k, 0) for k, v in now.items()}
        interval_stats = {k: v - self._last_stats.get(k, 0) for k, v in stats.items()}
        self._last_counts, self._last_stats = now, stats
        now, stats = self._since_start(now, stats)
        lost = self._lost_samples - self._last_lost
        pcap = self._pcap_health(interval_stats, self._pcap_written - self._last_pcap[0],
                                 self._pcap_over_max - self._last_pcap[1])
        self._last_lost = self._lost_samples
        self._last_pcap = (self._pcap_written, self._pcap_over_max)
        counters = self._counters.step(self._read_counters(stats.get("hits")))
        span, self._last_ns = elapsed_ns - self._last_ns, elapsed_ns
        if self.live:  # rows and total for the run, the interval's part beside them
            snap = self._snapshot(now, counters, interval_stats, stats.get("matched", 0), elapsed_ns,
                                  self._lost_samples, delta, pcap)
            snap.interval_total = interval_stats.get("matched", 0)
        else:
            snap = self._snapshot(delta, counters, interval_stats, interval_stats.get("matched", 0), elapsed_ns,
                                  lost, pcap=pcap)
            snap.interval_total = snap.total
        if self._other_ns is not None:
            snap.netns_counters = [c for c in self._other_ns.step() if c.netns_label != "host"]
        snap.counter_only = counters_mod.counter_only(counters + snap.netns_counters, snap.interval_total)
        snap.interval_ns = span
        snap.warnings, self._said = self._warnings[self._said:], len(self._warnings)
        if self.query.samples:
            self.prog.clear("sample_used")
        return snap

    def summary(self, elapsed_ns: int) -> DropSnapshot:
        assert self._counters is not None
        counters, final, stats = self._aligned_reading("end")
        final, stats = self._since_start(final, stats)
        self._counters.step(counters)
        snap = self._snapshot(final, self._counters.totals(), stats, stats.get("matched", 0), elapsed_ns,
                              self._lost_samples, pcap=self._pcap_health(stats, self._pcap_written,
                                                                         self._pcap_over_max))
        snap.warnings = list(self._warnings)
        if self._other_ns is not None:
            self._other_ns.read()
            snap.netns_counters = self._other_ns.totals(zeros=self.zero_series)
            snap.netns_own = self._other_ns.own
        snap.counter_only = counters_mod.counter_only(
            snap.counters + [c for c in snap.netns_counters if c.netns_label != "host"], snap.total)
        return snap

    def decode_rows(self, counts: dict[bytes, int]) -> list[DropRow]:
        """Rows for a reading taken with counts() (netpath doctor subtracts one taken at its window's start)."""
        return self._snapshot(counts, [], {}, 0, 0, 0).rows

    def _snapshot(self, counts: dict[bytes, int], counters: list[Counter], stats: dict[str, int], total: int,
                  elapsed_ns: int, lost_samples: int, interval_counts: dict[bytes, int] | None = None,
                  pcap: PcapHealth | None = None) -> DropSnapshot:
        """total: the exact count of matching drops, whether or not each found room in the map."""
        ranked = sorted(((v, k) for k, v in counts.items() if v > 0), key=lambda item: (-item[0], item[1]))
        shown = ranked if self.limit is None else ranked[: self.limit]
        rows: list[DropRow] = []
        for value, raw in shown:
            row = self._decoder.row(self._key(raw), value)
            stack = self.stack_of(raw)
            extra: dict[str, Any] = {"stack": stack} if stack is not None else {}
            if interval_counts is not None:
                extra["interval_count"] = interval_counts.get(raw, 0)
            rows.append(replace(row, **extra) if extra else row)
        rest = ranked[len(shown):]
        f = self.query.filters
        return DropSnapshot(rows, counters, health(stats, lost_samples, pcap), total, elapsed_ns, len(rest),
                            sum(v for v, _ in rest), self.query.flow_keyed, self.query.owner_keyed,
                            where_filtered=f.netns is not None or bool(f.iface_keys))

    def stack_of(self, raw_key: bytes) -> list[str] | None:
        if not self.query.stack or self.prog is None:
            return None
        leaf = self.prog.lookup("drop_stack", raw_key)
        stack_id = STACK_ID.unpack(leaf)[0] if leaf is not None else -1
        if stack_id < 0:
            return None
        return dropping_frames([self.facts.kallsyms.frame(addr) for addr in self.prog.stack("stacks", stack_id)])

    def _key(self, raw: bytes) -> DecodedKey:
        return DecodedKey.unpack(raw, self.query.flow_keyed, self.query.owner_keyed)

    def forget_gone_devices(self, live: set[tuple[int, int]], live_cookies: set[tuple[int, int]] | None = None
                            ) -> int:
        """Deletes rows of interfaces not in `live` ((netns inode, ifindex)), or, for rows that carry their
        namespace's cookie, not in `live_cookies` ((cookie, ifindex)): a namespace deleted and its inode
        reused is gone, however the new one is numbered."""
        if self.prog is None or "iface" not in self.query.by:
            return 0
        gone = []
        for raw in self.counts():
            key = self._key(raw)
            if not key.ifindex:
                continue
            if key.netns_cookie and live_cookies is not None:
                if (key.netns_cookie, key.ifindex) not in live_cookies:
                    gone.append(raw)
            elif (key.netns, key.ifindex) not in live:
                gone.append(raw)
        self.prog.delete("drops", gone)
        self._forgotten.update(gone)  # a cache slot cannot be freed under the program: its count is left out
        for raw in gone:
            self._last_counts.pop(raw, None)
            self._base_counts.pop(raw, None)
        return len(gone)

    def _on_sample(self, raw: bytes) -> None:
        if len(raw) < contract.DROP_SAMPLE.size:
            return
        fields = contract.DROP_SAMPLE.unpack(raw)
        key, (sk_ino, cgroup), (ts, length, pid, cpu, _stackid, comm) = (fields[:KEY_FIELDS],
                                                                         fields[KEY_FIELDS:KEY_FIELDS + 2],
                                                                         fields[KEY_FIELDS + 2:])
        where, flow = key[:len(contract.DROP_WHERE.fields)], key[len(contract.DROP_WHERE.fields):]
        *place, cookie, placed_by, _pad = where
        row = self._decoder.row(DecodedKey(*place, *flow[:4], netns_cookie=cookie, sk_ino=sk_ino, cgroup=cgroup,
                                           placed_by=placed_by), 1, full=True)
        self._events.append(DropSample(ts, cpu, pid, untrusted.comm(comm), length, row))

    def _on_lost(self, lost: int) -> None:
        self._lost_samples += lost

    def _on_capture(self, raw: bytes) -> None:
        """A ring record: struct pcap_meta, then PCAP_SNAPLEN bytes of which caplen are the packet's."""
        assert self.query.pcap is not None
        if len(raw) < contract.PCAP_META.size:
            return
        if self._pcap_written >= self.query.pcap.max_packets:
            self._pcap_over_max += 1
            return
        (ts, location, sk_ino, cgroup, reason, ifindex, netns_ino, length, caplen, cpu, l3proto, linktype,
         l4proto, family, _pad) = contract.PCAP_META.unpack(raw)
        caplen = min(caplen, self.query.pcap.snaplen, len(raw) - contract.PCAP_META.size)
        data = raw[contract.PCAP_META.size:contract.PCAP_META.size + caplen]
        where = (location, reason, ifindex, netns_ino, l3proto, l4proto, family, sk_ino, cgroup)
        row = self._capture_rows.get(where)
        if row is None:  # names resolved once per place a packet died, not per packet
            key = DecodedKey(location, reason, ifindex, netns_ino, l3proto, l4proto, family, bytes(16), bytes(16), 0,
                             0, sk_ino=sk_ino, cgroup=cgroup)
            row = self._decoder.row(key, 1, full=True)
            row = replace(row, family=None, saddr=None, daddr=None, sport=None, dport=None,
                          owner=row.owner if self.query.owner_keyed else None)
            if len(self._capture_rows) >= CAPTURE_ROW_CACHE:
                self._capture_rows.clear()
            self._capture_rows[where] = row
        self._pcap_written += 1
        self._events.append(CapturedPacket(ts + self._wall_offset_ns, cpu, linktype, max(length, caplen), data,
                                           self.query.pcap.snaplen, row))

    def stop_capture(self) -> None:
        """The capture file took no more (a write failed): the kernel sends no more packets, its cap reads as
        reached (bpf/capture.c pcap_admit), so later drops are counted and skipped, never copied."""
        if self.prog is not None and self.query.pcap is not None:
            self.prog.update("pcap_used", INDEX0.pack(0), COUNT.pack(self.query.pcap.max_packets))

    def _pcap_health(self, stats: dict[str, int], written: int, over_max: int) -> PcapHealth | None:
        """stats, written and over_max all for the same span: an interval or the whole run."""
        if self.query.pcap is None:
            return None
        return PcapHealth(written, stats.get("pcap_over_cap", 0) + stats.get("pcap_over_rate", 0) + over_max,
                          stats.get("pcap_lost", 0))


def health(stats: dict[str, int], lost_samples: int, pcap: PcapHealth | None = None) -> DropHealth:
    """The C's counters keep their names (contract.DROP_STATS); hits is the tracepoint's probe_hits."""
    counted = {name: stats.get(name, 0) for name in contract.DROP_STATS if name != "hits"}
    return DropHealth(probe_hits={TRACEPOINT: stats.get("hits", 0)}, lost_samples=lost_samples, pcap=pcap,
                      **counted)
