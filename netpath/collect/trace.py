"""netpath trace: build bpf/trace*.c from the attach plan, run it as a Session, decode its maps."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from netpath import bpf, contract, netns, untrusted
from netpath.collect import trace_stats
from netpath.collect.owners import OwnerResolver
from netpath.collect.session import ProgramSession
from netpath.collect.trace_stats import HistKey, NapiKey, OwnerKey, Reading
from netpath.errors import MissingCapability
from netpath.filter_defines import filter_defines
from netpath.kernel import irqs
from netpath.kernel import offsets as kernel_offsets
from netpath.kernel.clock import rx_timestamping
from netpath.kernel.facts import KernelFacts
from netpath.kernel.softnet import softnet_totals
from netpath.links import IfaceNames
from netpath.model import Attached, Napi, SlowPacket, TraceHealth, TraceSnapshot, TraceStart, Unavailable
from netpath.plan import AttachPlan, make_plan
from netpath.query import Filters
from netpath.stages import PACKET_STAGES, SLOW_SLOTS, STAGE_IDS, TP_BTF_HOOKS, by_id, tp_btf_names

Names = Callable[[int, int], str | None]
K = TypeVar("K")

NEEDED = ("OFF_SKB_DEV", "OFF_SKB_TSTAMP", "OFF_SKB_HEAD", "OFF_SKB_DATA", "OFF_SKB_PROTOCOL", "OFF_SKB_NETWORK_HEADER",
          "OFF_SKB_SKB_IIF", "OFF_DEV_IFINDEX", "OFF_DEV_ND_NET", "OFF_NET_NS_INUM", "OFF_SK_NET",
          "OFF_SK_RCVQ", "OFF_SK_RCVQ_PREV", "OFF_NAPI_DEV", "OFF_SK_FAMILY", "OFF_SK_PROTOCOL",
          "OFF_SKB_NEXT")

COUNT = struct.Struct("<Q")
IRQ_ENTRY = struct.Struct("<I")


@dataclass(frozen=True)
class TraceQuery:
    """Everything `netpath trace` (or the exporter) asks of the trace program (bpf/trace_*.c), validated."""

    filters: Filters = field(default_factory=Filters)
    stages: tuple[str, ...] = PACKET_STAGES  # what to plan (--stages), path order
    exact: bool = False  # --exact: hand-off hooks and a per-skb table, not skb->tstamp
    per_iface: bool = False
    per_cpu: bool = False
    slower_ns: int = 0
    napi_by_dev: bool = False  # NAPI counters per device without a per-interface histogram (export)
    per_socket: bool = False  # socket_queue per reading process and cgroup
    tai_offset_ns: int = 0  # CLOCK_TAI - CLOCK_REALTIME, whole seconds (kernel/clock.py): skb->tstamp is REALTIME
    sample_every: int = 1  # --sample N: time one NET_RX cycle and one packet in N (a power of two)
    tp_btf: bool = True  # load stages.TP_BTF_HOOKS as BTF-typed raw tracepoints where the kernel allows it

    def breakdown(self) -> bool:
        """Rows split by interface, CPU or reader, or slow packets streamed: every packet is timed."""
        return self.per_iface or self.per_cpu or self.per_socket or self.napi_by_dev or bool(self.slower_ns)

    def sampled_every(self, plan: AttachPlan) -> int:
        """1 in how many is timed: sampling needs the receive-timestamp build and no breakdown."""
        return self.sample_every if plan.rx_tstamp and not self.breakdown() else 1

    def plan(self, facts: KernelFacts) -> AttachPlan:
        return make_plan(facts, only=self.stages, exact=self.exact)


# neighbouring fields bpf/trace_skb.c and trace_sock.c fetch with one probe read, beyond the shared ones
TRACE_SPANS: kernel_offsets.SpanGroups = {
    "SKB_RX_SPAN": (("OFF_SKB_PROTOCOL", "OFF_SKB_HEAD", "OFF_SKB_DATA"), 64),
    "SK_SPAN": (("OFF_SK_FAMILY", "OFF_SK_NET", "OFF_SK_RCVQ_PREV"), 192),
}


def trace_spans(offsets: dict[str, int]) -> dict[str, int]:
    return kernel_offsets.spans(offsets, TRACE_SPANS)


def program_source(query: TraceQuery, plan: AttachPlan, offsets: dict[str, int]) -> bpf.ProgramSource:
    """Pure: the bpf/trace_*.c units the plan needs and every number they are compiled with."""
    missing = [n for n in NEEDED if n not in offsets]
    if missing:
        raise MissingCapability(f"this kernel's BTF lacks struct fields netpath reads: {', '.join(missing)}")
    defines = {name: offsets[name] for name in NEEDED}
    defines.update(kernel_offsets.spans(offsets))
    defines.update(trace_spans(offsets))
    defines.update(plan.defines())
    defines["TRACK_SKBS"] = int(plan.per_packet)
    defines["KP_CHECKPOINTS"] = int(any(c.stage.checkpoint for c in plan.available))
    defines["MAX_SKBS"] = contract.MAX_SKBS
    defines["RING"] = contract.RING_SLOTS
    defines["HIST_ROWS"] = contract.HIST_ROWS
    defines["NAPI_ROWS"] = contract.NAPI_ROWS
    defines["BY_OWNER"] = int(query.per_socket)
    defines["OWNER_ROWS"] = contract.OWNER_ROWS
    defines["BY_IFACE"] = int(query.per_iface)
    defines["NAPI_BY_DEV"] = int(query.per_iface or query.napi_by_dev)
    defines["BY_CPU"] = int(query.per_cpu)
    defines["SLOWER_NS"] = int(query.slower_ns)
    defines["RX_TSTAMP"] = int(plan.rx_tstamp)
    defines["TAI_OFFSET_NS"] = int(query.tai_offset_ns)
    defines["SAMPLE_SHIFT"] = query.sampled_every(plan).bit_length() - 1
    defines["SOCKQ_WATCH"] = int(sockq_watch(query, plan, defines))
    defines["SOCKQ_AT_WAKEUP"] = int(sockq_at_wakeup(query, plan, defines))
    defines.update(filter_defines(query.filters))
    ns = query.filters.netns
    if ns is not None and ns.cookie and "OFF_NET_COOKIE" in offsets:  # as drops: an inode reused later is not it
        defines["FILTER_NETNS_COOKIE"] = ns.cookie
        defines["OFF_NET_COOKIE"] = offsets["OFF_NET_COOKIE"]
    tp_btf = tp_btf_functions(query, plan)
    defines["TP_BTF"] = int(bool(tp_btf))
    return bpf.ProgramSource(c_units(plan), defines, tp_btf)


def sockq_by_netns(query: TraceQuery, plan: AttachPlan, defines: dict[str, int]) -> bool:
    """socket_queue counted per namespace rather than paired datagram by datagram: where the stage is sampled,
    nothing is broken down, and no filter needs a datagram's device or headers (those a per-socket FIFO
    carries for every datagram)."""
    f = query.filters
    return (bool(defines.get("USE_SOCKQ")) and defines["SAMPLE_SHIFT"] > 0 and not query.breakdown()
            and not f.iface_keys and f.proto is None and f.port is None and f.host is None)


def sockq_watch(query: TraceQuery, plan: AttachPlan, defines: dict[str, int]) -> bool:
    """UDP's socket_queue by watched datagrams (bpf/trace_watch.c) instead of a FIFO per socket, counted at
    every UDP read of the namespace: needs sock:sock_recv_length, the read that knows its socket."""
    return sockq_by_netns(query, plan, defines) and bool(defines.get("HAS_SOCK_SOCK_RECV_LENGTH"))


def sockq_at_wakeup(query: TraceQuery, plan: AttachPlan, defines: dict[str, int]) -> bool:
    """Without sock:sock_recv_length (6.1) and without netif_receive_skb's per-CPU follow: UDP's
    socket_queue counted at each datagram's wakeup, a picked one timed at its free (bpf/trace_sock.c)."""
    return (sockq_by_netns(query, plan, defines) and not defines.get("HAS_SOCK_SOCK_RECV_LENGTH")
            and not defines.get("HAS_NET_NETIF_RECEIVE_SKB"))


# the trace program's C units in the order they are placed; each builds on the ones before it
TRACE_UNITS = ("where.c", "trace_common.c", "trace_irq.c", "trace_skb.c", "trace_kprobe.c", "trace_watch.c",
               "trace_fifo.c", "trace_sock.c", "trace_read.c")
# what a unit needs beside itself: every per-packet stage follows the skb from netif_receive_skb
# (trace_skb.c); the read side times from the enqueue (trace_sock.c), from a watched one (trace_watch.c),
# or from UDP's per-socket FIFO (trace_fifo.c)
UNIT_NEEDS = {"trace_kprobe.c": ("trace_skb.c",), "trace_sock.c": ("trace_skb.c", "trace_fifo.c"),
              "trace_read.c": ("trace_skb.c", "trace_watch.c", "trace_fifo.c", "trace_sock.c")}


def c_units(plan: AttachPlan) -> list[str]:
    """The units of the plan's available stages (Stage.c_unit), what they build on, and the shared ones."""
    wanted = {"where.c", "trace_common.c"}
    for c in plan.available:
        wanted.add(c.stage.c_unit)
        wanted.update(UNIT_NEEDS.get(c.stage.c_unit, ()))
    return [u for u in TRACE_UNITS if u in wanted]


def tp_btf_functions(query: TraceQuery, plan: AttachPlan) -> dict[str, str]:
    """C function -> tracepoint to load as tp_btf: only in the receive-timestamp build, and not with --slower
    (its perf events stay with the raw tracepoints that have always sent them), nor when sk_data_ready is a
    kprobe (HookSet.untyped: bpf/trace_common.c refuses typed pointers beside the kprobe handler)."""
    if not query.tp_btf or not plan.rx_tstamp or query.slower_ns or not plan.typed:
        return {}
    hooks = set(plan.tracepoints())
    return dict(tp_btf_names(hook) for hook in TP_BTF_HOOKS if hook in hooks)


def decode_slow(raw: bytes, names: Names) -> SlowPacket:
    f = contract.SLOW_EVENT.unpack(raw)
    nstages = len(SLOW_SLOTS)
    ts, stage_ns = f[0], f[1:1 + nstages]
    cpu, pid, ifindex, ns_inode, saddr, daddr, sport, dport, family, l4, _pad, comm = f[1 + nstages:]

    def addr(b: bytes) -> str | None:
        if family == 4:
            return str(ipaddress.IPv4Address(b[:4]))
        if family == 6:
            return str(ipaddress.IPv6Address(b))
        return None

    proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}.get(l4, f"ipproto-{l4}") if family else None
    return SlowPacket(ts, cpu, pid, untrusted.comm(comm), names(ns_inode, ifindex),
                      ifindex, ns_inode, family, proto, addr(saddr), addr(daddr), sport if family else None,
                      dport if family else None,
                      {slot.name: int(v) for slot, v in zip(SLOW_SLOTS, stage_ns, strict=True) if v},
                      {slot.name: slot.short for slot in SLOW_SLOTS})


class TraceReader:
    """Decodes the trace program's maps (raw bytes from bpf.Program) into a cumulative Reading."""

    def __init__(self, query: TraceQuery, plan: AttachPlan) -> None:
        self.query = query
        self.wanted = set(plan.tracepoints()) | {h for h, _ in plan.kprobes()}
        self.forgotten: set[tuple[int, int]] = set()  # (ifindex, netns) of devices gone: left out

    def read(self, prog: bpf.Program) -> Reading:
        slots, maxima = self._read_hash(prog) if self.query.per_iface else self._read_arrays(prog)
        per_cpu = [contract.CPU_COUNTERS.unpack(v) for v in prog.percpu_value("cpustate", 0)]
        nhits = contract.HITS
        napi: dict[NapiKey, dict[str, int]] = {}
        if self.query.per_iface or self.query.napi_by_dev:
            rows: dict[NapiKey, list[tuple]] = {}
            for key, values in prog.percpu_items("napi_stats").items():
                ifindex, ns_inode, cpu = contract.NAPI_KEY.unpack(key)
                rows.setdefault((ifindex, ns_inode, cpu), []).extend(contract.NAPI_VAL.unpack(v) for v in values)
            # each CPU's first device keeps its counters in the CPU's own state (bpf/trace_irq.c, napi_poll)
            for value in per_cpu:
                counters = value[contract.CTR_NAPI:contract.CTR_NAPI + 5]
                ifindex, ns_inode, cpu = value[contract.CTR_NAPI_KEY:contract.CTR_NAPI_KEY + 3]
                if counters[0] and (ifindex, ns_inode) not in self.forgotten:
                    rows.setdefault((ifindex, ns_inode, cpu), []).append(counters)
            napi = {key: _napi_sum(values) for key, values in rows.items()}
        else:
            by_cpu: dict[NapiKey, list[tuple]] = {}
            for cpu, value in enumerate(per_cpu):
                counters = value[contract.CTR_NAPI:contract.CTR_NAPI + 5]
                if counters[0]:  # polls
                    by_cpu.setdefault((0, 0, cpu if self.query.per_cpu else 0), []).append(counters)
            napi = {key: _napi_sum(values) for key, values in by_cpu.items()}
        counts = [sum(v[i] for v in per_cpu) for i in range(nhits)]
        nhooks = len(contract.HOOK_NAMES)
        hits = {name: counts[i] for i, name in enumerate(contract.HOOK_NAMES)
                if name.removesuffix(":return") in self.wanted}
        stats = dict(zip(contract.STAT_NAMES, counts[nhooks:], strict=True))
        seen = {stage: sum(v[contract.CTR_SEEN + stage] for v in per_cpu) for stage in range(len(STAGE_IDS))}
        reading = Reading(slots, maxima, napi, hits, stats, seen=seen)
        if self.query.per_socket:
            reading.owner_slots, reading.owner_maxima = self._read_owners(prog)
        return reading

    @staticmethod
    def _read_owners(prog: bpf.Program) -> tuple[dict[OwnerKey, dict[int, int]], dict[OwnerKey, int]]:
        def split(raw: bytes) -> tuple[OwnerKey, int]:
            cgroup, tgid, slot, _pad = contract.OWNER_HIST_KEY.unpack(raw)
            return (cgroup, tgid), slot

        return _read_hash_hist(prog, "owner_hist", split)

    def _read_arrays(self, prog: bpf.Program) -> tuple[dict[HistKey, dict[int, int]], dict[HistKey, int]]:
        """Per-CPU arrays indexed by stage, each read whole in one batch: slots cumulative, maxima zeroed after
        each read (only the stages that had one: an idle interval writes nothing)."""
        slots: dict[HistKey, dict[int, int]] = {}
        maxima: dict[HistKey, int] = {}
        hists, all_maxes = prog.percpu_array("stage_hist"), prog.percpu_array("stage_max")
        for stage in range(len(STAGE_IDS)):
            per_cpu = hists.get(stage, [])
            maxes = [COUNT.unpack(v)[0] for v in all_maxes.get(stage, [])]
            if any(maxes):
                prog.percpu_zero("stage_max", stage)
            for cpu, value in enumerate(per_cpu):
                if value.count(0) == len(value):  # a stage this run does not time, or idle on this CPU: most
                    continue                       # are, and unpacking their every slot was most of a read
                counts = {i: n for i, n in enumerate(contract.STAGE_HIST.unpack(value)) if n}
                if not counts:
                    continue
                key = (stage, 0, 0, cpu if self.query.per_cpu else 0)
                into = slots.setdefault(key, {})
                for slot, n in counts.items():
                    into[slot] = into.get(slot, 0) + n
                maxima[key] = max(maxima.get(key, 0), maxes[cpu])
        return slots, maxima

    @staticmethod
    def _read_hash(prog: bpf.Program) -> tuple[dict[HistKey, dict[int, int]], dict[HistKey, int]]:
        def split(raw: bytes) -> tuple[HistKey, int]:
            stage, slot, ifindex, ns_inode, cpu = contract.HIST_KEY.unpack(raw)
            return (stage, ifindex, ns_inode, cpu), slot

        return _read_hash_hist(prog, "hist", split)


def _read_hash_hist(prog: bpf.Program, name: str, split: Callable[[bytes], tuple[K, int]]
                    ) -> tuple[dict[K, dict[int, int]], dict[K, int]]:
    """A per-CPU hash histogram (one row per key and slot): cumulative slot counts, and the maxima of this
    interval, whose MAX_SLOT rows are deleted so the next interval starts from zero."""
    slots: dict[K, dict[int, int]] = {}
    maxima: dict[K, int] = {}
    max_keys = []
    for raw, values in prog.percpu_items(name).items():
        key, slot = split(raw)
        numbers = [COUNT.unpack(v)[0] for v in values]
        if slot == contract.MAX_SLOT:
            maxima[key] = max(numbers)
            max_keys.append(raw)
        else:
            slots.setdefault(key, {})[slot] = sum(numbers)
    prog.delete(name, max_keys)
    return slots, maxima


def _napi_sum(values: list[tuple]) -> dict[str, int]:
    """Per-CPU np_napi_val tuples (polls, work, exhausted, budget, max_work) summed."""
    return {
        "polls": sum(v[0] for v in values),
        "work": sum(v[1] for v in values),
        "exhausted": sum(v[2] for v in values),
        "budget": max(v[3] for v in values),
        "max_work": max(v[4] for v in values),
    }


class TraceSession(ProgramSession):
    """netpath trace as a Session: bpf/trace_*.c from the attach plan, its histograms and softnet beside it."""

    def __init__(self, query: TraceQuery, plan: AttachPlan, facts: KernelFacts, source: bpf.ProgramSource,
                 fail_on_latency: tuple[dict[str, object], ...] = (),
                 loader: bpf.Loader = bpf.compile_program) -> None:
        """Built by netpath/collect/factory.py, which derives plan and source from query and facts."""
        super().__init__(loader)
        self.query = query
        self.plan = plan
        self.facts = facts
        self.source = source
        self.fail_on_latency = fail_on_latency
        self._reader = TraceReader(query, plan)
        self._acc = trace_stats.Accumulator()
        self._names = _iface_names()
        self._owners = OwnerResolver() if query.per_socket else None
        self._slow_lost = 0
        self._last_lost = 0
        self._last_ns = 0
        self._unavailable: list[Unavailable] = [Unavailable(c.hook, c.reason, c.stage.id) for c in plan.unavailable]
        self._typed: frozenset[str] = frozenset()
        self._softnet_base: dict[str, int] = {}
        self._softnet_last: dict[str, int] = {}
        self._tstamp_sock: socket.socket | None = None
        chosen = {c.stage.id for c in plan.choices}
        self._not_selected = tuple(s for s in STAGE_IDS if s not in chosen)  # stages --stages left out

    def start(self) -> TraceStart:
        if self.plan.rx_tstamp and self._tstamp_sock is None:
            self._tstamp_sock = rx_timestamping()
        prog = self._load(self.source, self.facts, self.query.filters.iface_keys)
        for irq, ifindex in irqs.nic_irqs(irqs.read_interrupts(), irqs.local_devices()).items():
            prog.update("nic_irqs", IRQ_ENTRY.pack(irq), IRQ_ENTRY.pack(ifindex))
        typed = {hook for hook in TP_BTF_HOOKS if tp_btf_names(hook)[0] in prog.tp_btf}
        self._typed = frozenset(typed)  # each stage row's `method` says which of its hooks loaded as tp_btf
        attached = [Attached(tp, "tp_btf" if tp in typed else "raw_tracepoint") for tp in self.plan.tracepoints()]
        for hook, symbol in self.plan.kprobes():
            for kind, fn in contract.kprobe_programs(hook):
                try:
                    prog.attach_kprobe(symbol, fn, is_return=kind == "return")
                except MissingCapability as exc:  # the rest of the plan still runs
                    self._unavailable.append(Unavailable(symbol, f"kprobe {symbol} did not attach: {exc}",
                                                         self._stage_of(hook)))
                    continue
                attached.append(Attached(symbol if kind == "entry" else f"{symbol}:return",
                                         "kretprobe" if kind == "return" else "kprobe"))
        if self.query.slower_ns:
            prog.open_perf_buffer("slow", self._on_slow, self._on_lost)
        self._softnet_base = self._softnet_last = softnet_totals()
        q = self.query
        return TraceStart(
            kernel=self.facts.release, headers=bpf.headers_mode(self.facts), attached=tuple(attached),
            unavailable=tuple(self._unavailable), filters=q.filters.report(),
            stages=tuple(c.stage.id for c in self.plan.choices),
            unfiltered_stages=tuple(c.stage.id for c in self.plan.choices if not c.stage.filterable),
            per_iface=q.per_iface, per_cpu=q.per_cpu, sample_every=q.sampled_every(self.plan),
            not_selected=self._not_selected,
            slower_ns=q.slower_ns, fail_on_latency=self.fail_on_latency,
            handoff=self.plan.handoff if self.plan.per_packet else None,
        )

    def _stage_of(self, hook: str) -> str:
        return next((c.stage.id for c in self.plan.available if hook in c.hooks), hook)

    def interval(self, elapsed_ns: int) -> TraceSnapshot:
        assert self.prog is not None
        dists, napi, hits, stats = self._acc.step(self._reader.read(self.prog))
        owners = self._acc.owner_step
        now = softnet_totals()
        softnet = {k: v - self._softnet_last.get(k, 0) for k, v in now.items()}
        self._softnet_last = now
        lost, self._last_lost = self._slow_lost - self._last_lost, self._slow_lost
        span, self._last_ns = elapsed_ns - self._last_ns, elapsed_ns
        return self._snapshot(dists, napi, hits, stats, lost, softnet, elapsed_ns, span, owners, self._acc.seen_step)

    def summary(self, elapsed_ns: int) -> TraceSnapshot:
        assert self.prog is not None
        self._acc.step(self._reader.read(self.prog))
        dists, napi, hits, stats = self._acc.totals()
        softnet = {k: v - self._softnet_base.get(k, 0) for k, v in softnet_totals().items()}
        return self._snapshot(dists, napi, hits, stats, self._slow_lost, softnet, elapsed_ns, 0,
                              self._acc.owner_totals(), self._acc.seen_totals())

    def _snapshot(self, dists: dict[HistKey, trace_stats.Dist], napi: dict[NapiKey, Napi],
                  hits: dict[str, int], stats: dict[str, int], lost: int, softnet: dict[str, int], elapsed_ns: int,
                  span_ns: int, owners: dict[OwnerKey, trace_stats.Dist] | None = None,
                  seen: dict[int, int] | None = None) -> TraceSnapshot:
        q = self.query
        rows = trace_stats.stage_rows(self.plan, dists, napi, q.per_iface or q.per_cpu, self._names,
                                      q.per_iface or q.per_cpu or q.napi_by_dev, q.sampled_every(self.plan), seen,
                                      self._typed)
        if self._owners is not None and owners:
            owner_rows = tuple((self._owners.of_reader(tgid, cgroup), dist.latency())
                               for (cgroup, tgid), dist in sorted(owners.items(), key=lambda kv: -kv[1].sum_ns))
            rows = [replace(r, owners=owner_rows) if by_id(r.stage).owners else r for r in rows]
        counted = {name: stats.get(name, 0) for name in contract.STAT_NAMES}
        health = TraceHealth(probe_hits=hits, lost_events=lost, ring_slots=contract.RING_SLOTS, **counted)
        return TraceSnapshot(tuple(rows), tuple(self._unavailable), softnet, health, elapsed_ns, span_ns,
                             q.per_iface, q.per_cpu, self._not_selected)

    def forget_gone_devices(self, live: set[tuple[int, int]]) -> int:
        """Deletes NAPI rows of devices not in `live` ((netns inode, ifindex)), so their series go away."""
        if self.prog is None or not (self.query.per_iface or self.query.napi_by_dev):
            return 0
        gone = []
        for raw in self.prog.percpu_items("napi_stats"):
            ifindex, ns_inode, _cpu = contract.NAPI_KEY.unpack(raw)
            if ifindex and (ns_inode, ifindex) not in live:
                gone.append(raw)
        self.prog.delete("napi_stats", gone)
        # a CPU's own NAPI counters cannot be cleared under the program: a gone device's are left out
        for value in self.prog.percpu_value("cpustate", 0):
            key_at = contract.CTR_NAPI_KEY
            ifindex, ns_inode, _cpu = contract.CPU_COUNTERS.unpack(value)[key_at:key_at + 3]
            if ifindex and (ns_inode, ifindex) not in live and (ifindex, ns_inode) not in self._reader.forgotten:
                self._reader.forgotten.add((ifindex, ns_inode))
                gone.append(b"")
        return len(gone)

    def _on_slow(self, raw: bytes) -> None:
        if len(raw) >= contract.SLOW_EVENT.size:
            self._events.append(decode_slow(raw, self._names))

    def _on_lost(self, lost: int) -> None:
        self._slow_lost += lost

    def close(self) -> None:
        super().close()
        if self._tstamp_sock is not None:  # software RX timestamping stays on only while we run
            self._tstamp_sock.close()
            self._tstamp_sock = None


def _iface_names() -> Names:
    cache = IfaceNames()
    here = netns.current().inode

    def name(ns_inode: int, ifindex: int) -> str | None:
        return cache.name(ns_inode or here, ifindex)

    return name

