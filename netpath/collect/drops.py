"""netpath drops: build the kfree_skb program from a query, read and decode its maps."""

from __future__ import annotations

import ctypes
import ipaddress
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from netpath import bpf, netns
from netpath.errors import MissingCapability
from netpath.filter_defines import filter_defines
from netpath.kernel import offsets as kernel_offsets
from netpath.kernel import reasons as reasons_mod
from netpath.kernel.facts import KernelFacts
from netpath.kernel.reasons import DropReasons
from netpath.links import IfaceNames
from netpath.model import DropRow, DropSample, Health

TRACEPOINT = "skb:kfree_skb"
GROUP_FIELDS = ("reason", "location", "iface", "proto", "flow")
DEFAULT_BY = ("reason", "location", "iface", "proto")
MAX_ROWS = 16384

# struct drop_full_key in bpf/drops.c; struct drop_key is its first 24 bytes unless rows group by flow
KEY_FORMAT = struct.Struct("<QIIIHBB16s16sHHi")
SHORT_KEY_SIZE = 24
# struct drop_sample: key, ts_ns, len, pid, cpu, stackid, comm
SAMPLE_FORMAT = struct.Struct(f"<{KEY_FORMAT.size}sQIIIi16s")
STAT_NAMES = ("hits", "matched", "map_full", "sampled", "sample_budget")

L4_NAMES = {0: "hopopt", 1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 58: "icmpv6", 132: "sctp"}
L3_NAMES = {0x0800: "ipv4", 0x86DD: "ipv6", 0x0806: "arp", 0x8100: "vlan", 0x88CC: "lldp", 0x8035: "rarp"}


@dataclass
class DropsQuery:
    netns: netns.Netns | None = None
    ifaces: list[str] = field(default_factory=list)
    iface_keys: list[tuple[int, int]] = field(default_factory=list)  # (netns inode, ifindex)
    proto: str | None = None
    port: int | None = None
    host: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    reason_code: int | None = None
    by: tuple[str, ...] = DEFAULT_BY
    stack: bool = False
    samples: int = 0  # per CPU per interval

    @property
    def flow_keyed(self) -> bool:
        return "flow" in self.by or self.port is not None or self.host is not None


def drop_reasons(facts: KernelFacts) -> DropReasons:
    """This kernel's reason names: BTF first, the kfree_skb tracepoint's own table without it."""
    fmt = facts.tracepoint_format(TRACEPOINT)
    return reasons_mod.load(facts.btf_path, fmt.symbols.get("reason") if fmt else None)


def has_reason_field(facts: KernelFacts) -> bool:
    fmt = facts.tracepoint_format(TRACEPOINT)
    return bool(fmt and fmt.has("reason"))


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
    defines["SAMPLE_BUDGET"] = query.samples
    if query.stack:
        defines["WITH_STACK"] = 1
    if query.reason_code is not None:
        defines["FILTER_REASON"] = query.reason_code
    defines.update(filter_defines(query.netns, query.iface_keys, query.proto, query.port, query.host))
    return bpf.ProgramSource(["where.c", "drops.c"], defines)


def proto_name(family: int, l3proto: int, l4proto: int) -> str | None:
    if family:
        return L4_NAMES.get(l4proto, f"ipproto-{l4proto}")
    if l3proto:
        return L3_NAMES.get(l3proto, f"0x{l3proto:04x}")
    return None


def _addr(family: int, raw: bytes) -> str | None:
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

    @classmethod
    def unpack(cls, raw: bytes) -> DecodedKey:
        fields = KEY_FORMAT.unpack(raw[: KEY_FORMAT.size].ljust(KEY_FORMAT.size, b"\0"))
        return cls(*fields[:11])


class RowDecoder:
    """Turns a decoded key and count into a DropRow with names from the kernel."""

    def __init__(self, query: DropsQuery, reasons: DropReasons, facts: KernelFacts, ifaces: IfaceNames,
                 has_reason: bool) -> None:
        self.query = query
        self.reasons = reasons
        self.facts = facts
        self.ifaces = ifaces
        self.has_reason = has_reason

    def row(self, key: DecodedKey, count: int, full: bool = False) -> DropRow:
        by = set(self.query.by) | ({"reason", "location", "iface", "proto", "flow"} if full else set())
        flow = full or self.query.flow_keyed
        reason = code = None
        if "reason" in by and self.has_reason:
            code = key.reason
            reason = self.reasons.name(key.reason)
        location = self.facts.kallsyms.symbolize(key.location) if "location" in by else None
        iface = ifindex = ns = None
        if "iface" in by:
            ifindex = key.ifindex or None
            ns = key.netns or None
            iface = self.ifaces.name(key.netns, key.ifindex)
        proto = proto_name(key.family, key.l3proto, key.l4proto) if ("proto" in by or flow) else None
        extra: dict[str, Any] = {}
        if flow:
            extra = {
                "family": key.family or None,
                "saddr": _addr(key.family, key.saddr),
                "daddr": _addr(key.family, key.daddr),
                "sport": key.sport if key.family and key.l4proto in (6, 17) else None,
                "dport": key.dport if key.family and key.l4proto in (6, 17) else None,
            }
        return DropRow(reason, code, location, iface, ifindex, ns, proto, count, **extra)


class DropsCollector:
    """Owns the loaded program; read() returns cumulative counts per raw key."""

    def __init__(self, query: DropsQuery, facts: KernelFacts, source: bpf.ProgramSource) -> None:
        self.query = query
        self.facts = facts
        self.source = source
        self.prog: Any = None
        self.samples: list[DropSample] = []
        self.samples_lost = 0
        self._decoder: RowDecoder | None = None

    def start(self, decoder: RowDecoder) -> None:
        self._decoder = decoder
        self.prog = bpf.compile_program(self.source, self.facts)
        if self.query.iface_keys:
            table = self.prog["iface_filter"]
            for ns_inode, ifindex in self.query.iface_keys:
                table[table.Key((ns_inode << 32) | ifindex)] = table.Leaf(1)
        if self.query.samples:
            self.prog["samples"].open_perf_buffer(self._on_sample, page_cnt=64, lost_cb=self._on_lost)

    def attached(self) -> list[dict[str, str]]:
        return [{"hook": TRACEPOINT, "method": "raw_tracepoint", "program": "kfree_skb"}]

    def counts(self) -> dict[bytes, int]:
        return bpf.read_percpu_hash(self.prog["drops"])

    def stats(self) -> dict[str, int]:
        return dict(zip(STAT_NAMES, bpf.read_percpu_array(self.prog["stats"], len(STAT_NAMES)), strict=True))

    def poll(self, timeout_s: float) -> None:
        if self.query.samples:
            self.prog.perf_buffer_poll(timeout=int(timeout_s * 1000))
        else:
            time.sleep(timeout_s)

    def reset_sample_budget(self) -> None:
        if self.query.samples:
            self.prog["sample_used"].clear()

    def stack_of(self, raw_key: bytes) -> list[str] | None:
        if not self.query.stack:
            return None
        table = self.prog["drop_stack"]
        leaf = table.get(table.Key.from_buffer_copy(raw_key))
        if leaf is None or leaf.value < 0:
            return None
        frames = [self.facts.kallsyms.symbolize(addr) for addr in self.prog["stacks"].walk(leaf.value)]
        # drop netpath's own frames: the BPF program and the tracepoint trampoline
        while frames and frames[0].startswith(("bpf_prog_", "bpf_trace_run", "__bpf_trace_", "__traceiter_")):
            frames.pop(0)
        return frames

    def _on_sample(self, _cpu: int, data: Any, size: int) -> None:
        raw = ctypes.string_at(data, min(size, SAMPLE_FORMAT.size))
        if len(raw) < SAMPLE_FORMAT.size or self._decoder is None:
            return
        key_raw, ts, length, pid, cpu, _stackid, comm = SAMPLE_FORMAT.unpack(raw)
        row = self._decoder.row(DecodedKey.unpack(key_raw), 1, full=True)
        self.samples.append(DropSample(ts, cpu, pid, comm.split(b"\0")[0].decode(errors="replace"), length, row))

    def _on_lost(self, lost: int) -> None:
        self.samples_lost += lost

    def close(self) -> None:
        if self.prog is not None:
            self.prog.cleanup()
            self.prog = None


def health(stats: dict[str, int], samples_lost: int) -> Health:
    return Health(
        probe_hits={TRACEPOINT: stats.get("hits", 0)},
        matched=stats.get("matched", 0),
        lost_rows=stats.get("map_full", 0),
        samples=stats.get("sampled", 0),
        samples_lost=samples_lost,
        samples_skipped=stats.get("sample_budget", 0),
    )
