"""netpath doctor as a Session: the drops and trace sessions over one window, then the rules.

start() starts both sessions and reads the window counters; interval()
reports progress only; summary() reads every session's whole-run summary,
the counters again (deltas: nothing from before the window counts), the
settings as they are now, and runs the rules (netpath/diagnose/rules.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from netpath import bpf, netns
from netpath.collect import drops as drops_mod
from netpath.collect import factory, netns_counters
from netpath.collect import trace as trace_mod
from netpath.collect.owners import OwnerResolver
from netpath.collect.session import Beside
from netpath.diagnose import rules, saved
from netpath.diagnose.window import diff_drops
from netpath.errors import MissingCapability
from netpath.kernel import settings as settings_mod
from netpath.kernel.clock import tai_offset_ns
from netpath.kernel.facts import KernelFacts
from netpath.model import (
    Attached,
    Diagnosis,
    DoctorStart,
    DropSample,
    DropSnapshot,
    Event,
    Finding,
    NetnsCounters,
    Settings,
    TraceStart,
    Unavailable,
)
from netpath.query import Filters

# drops: everything the socket and policy rules need to name whose packet it was and where
DOCTOR_BY = ("reason", "location", "iface", "proto", "socket")
# trace: the per-reader socket queue (slow-reader) and the softirq wait (softirq-wait); nothing per hop
DOCTOR_STAGES = ("softirq_wait", "socket_queue")
MAX_NICS = 16  # interfaces whose ethtool settings are read (each costs two ethtool runs)
MAX_NAMESPACES = 8  # other namespaces whose settings are read for their drops' knobs
# sampled drops per CPU per second: their source addresses name the senders of bad packets (checksum-errors)
DOCTOR_SAMPLES = 8


@dataclass(frozen=True)
class DoctorQuery:
    """Everything `netpath doctor` asks: the user's filters, and whether the latency rules run."""

    filters: Filters = field(default_factory=Filters)
    trace: bool = True

    def drops_query(self) -> drops_mod.DropsQuery:
        return drops_mod.DropsQuery(self.filters, by=DOCTOR_BY, samples=DOCTOR_SAMPLES)

    def trace_query(self) -> trace_mod.TraceQuery:
        return trace_mod.TraceQuery(self.filters, DOCTOR_STAGES, per_socket=True, tai_offset_ns=tai_offset_ns())


class DoctorSession:
    """The drops session (required), the trace session (when its stages can attach here), the rules."""

    def __init__(self, query: DoctorQuery, drops: drops_mod.DropsSession, trace: trace_mod.TraceSession | None,
                 unavailable: list[Unavailable] | None = None) -> None:
        self.query = query
        self.drops = drops
        self.trace = trace
        self._unavailable = list(unavailable or [])
        self._before: settings_mod.Raw | None = None
        self._owners: OwnerResolver | None = None
        self._base: tuple[dict[bytes, int], int] = ({}, 0)
        self._namespaces: list[NetnsCounters] = []  # every namespace's counters at the start (host-wide runs)
        self.observation: rules.Observation | None = None  # what the rules read (netpath doctor --save)
        self.holders: list[saved.Holder] = []  # sockets named from /proc after the rules (saved with it)
        self._sources: dict[tuple[str, str], int] = {}  # (reason, source address) -> sampled drops

    def start(self) -> DoctorStart:
        # both programs load at once (collect.session.Beside: each start is mostly the verifier, in the
        # kernel), then the counters right after the drops program: the drop rows and the counters they
        # are compared with cover the same window
        attached: list[Attached] = []
        pending = Beside(self.trace.start) if self.trace is not None else None
        try:
            start = self.drops.start()
        except BaseException:
            if pending is not None:
                pending.wait()  # what it attached is detached by close(), with the rest
            raise
        tstart: TraceStart | MissingCapability | None = None
        if pending is not None:
            try:
                tstart = pending.result()
            except MissingCapability as exc:
                tstart = exc
        if isinstance(tstart, MissingCapability):
            assert self.trace is not None
            self._unavailable.append(Unavailable("trace", str(tstart)))
            self.trace.close()
            self.trace = None
        elif tstart is not None:
            attached += tstart.attached
            self._unavailable += tstart.unavailable
        # the window starts here, for the counters and the drop rows alike: drops counted while drops.start()
        # was still reading its own counters are taken off at the end
        self._before, self._base = settings_mod.read_window_raw_marked(self.query.filters.netns, self._drop_counts)
        if self._every_namespace:
            self._namespaces = self._read_namespaces()
        return DoctorStart(kernel=start.kernel, headers=start.headers, attached=tuple(start.attached) + tuple(attached),
                           unavailable=start.unavailable + tuple(self._unavailable), filters=start.filters,
                           rules=rules.RULE_IDS)

    @property
    def _every_namespace(self) -> bool:
        """A run not narrowed to one namespace reads every namespace's counters (netns_counters)."""
        return self.query.filters.netns is None

    def _read_namespaces(self) -> list[NetnsCounters]:
        found, skipped = netns_counters.read_every_namespace()
        if skipped:
            self._unavailable.append(Unavailable("counters", f"{skipped} network namespaces beyond the first "
                                                 f"{netns_counters.MAX_NAMESPACES} were not read"))
        return found

    def wait(self, timeout_s: float) -> None:
        self.drops.wait(timeout_s)

    def events(self) -> list[Event]:
        """Sampled drops are the doctor's own: their sources are counted, nothing is printed."""
        for e in self.drops.events():
            if isinstance(e, DropSample) and e.row.reason and e.row.saddr:
                key = (e.row.reason, e.row.saddr)
                self._sources[key] = self._sources.get(key, 0) + 1
        return []

    def interval(self, elapsed_ns: int) -> Diagnosis:
        return Diagnosis((), rules.RULE_IDS, elapsed_ns, final=False)

    def summary(self, elapsed_ns: int) -> Diagnosis:
        assert self._before is not None
        ns = self.query.filters.netns
        try:
            after, (end, end_matched) = settings_mod.read_window_raw_marked(ns, self._drop_counts)
        except OSError as exc:  # the namespace went away during the run: its counters stop where they were
            if ns is None:
                raise
            self._unavailable.append(Unavailable("counters", f"network namespace {ns.label!r} is gone "
                                                 f"({exc.strerror}): its counters and settings were not read"))
            after, (end, end_matched) = self._before, self._drop_counts()
        win = settings_mod.window(self._before, after)
        run = self.drops.summary(elapsed_ns)  # the link, qdisc and NIC counters; rows come from the marks
        base, base_matched = self._base
        drops = diff_drops(replace(run, rows=self.drops.decode_rows(end), total=end_matched),
                           replace(run, rows=self.drops.decode_rows(base), counters=[], total=base_matched,
                                   elapsed_ns=0))
        trace = self.trace.summary(elapsed_ns) if self.trace is not None else None
        namespaces: list[NetnsCounters] = []
        if self._every_namespace:
            deltas = netns_counters.window(self._namespaces, self._read_namespaces())
            namespaces = netns_counters.active(deltas, (r.netns for r in drops.rows if r.netns))
        try:
            settings = settings_mod.read_settings(ns, self._nics(drops, win.rx_packets))
        except OSError:  # gone (said above): the rules still run, knob values are unknown
            settings = Settings(ns.inode if ns else None, ns.label if ns else "host")
        moved = {c.inode: sum(c.snmp.values()) for c in namespaces if c.snmp or c.conntrack}
        others = self._other_settings(drops, settings.netns, moved)
        f = self.query.filters
        scoped = f.netns is not None or bool(f.ifaces) or f.proto is not None or f.narrows_flow
        self.events()
        sources = tuple((r, a, n) for (r, a), n in sorted(self._sources.items(), key=lambda kv: -kv[1])[:64])
        obs = rules.Observation(drops, trace, win, settings, elapsed_ns, others, scoped,
                                tuple(c for c in namespaces if c.inode != settings.netns), sources)
        self.observation = obs
        findings = rules.diagnose(obs)
        findings = [self._named(f, settings, others) for f in findings]
        checked = tuple(r for r in rules.RULE_IDS if self.trace is not None or r not in rules.LATENCY_RULES)
        return Diagnosis(tuple(findings), checked, elapsed_ns, drops.total, tuple(self._unavailable))

    def _drop_counts(self) -> tuple[dict[bytes, int], int]:
        return self.drops.counts(), self.drops.stats().get("matched", 0)

    def _named(self, f: Finding, settings: Settings, others: dict[int, Settings]) -> Finding:
        """A socket finding that sock_diag placed (a full listener) but no drop row named: its holder, looked
        up by the socket's inode now (the one /proc scan the doctor makes)."""
        w = f.where
        if w.lport is None or w.pid is not None:
            return f
        where_settings = others.get(w.netns, settings) if w.netns is not None else settings
        sock = next((s for s in where_settings.sockets
                     if (s.laddr, s.lport, s.proto) == (w.laddr, w.lport, w.proto or s.proto)), None)
        if sock is None:
            return f
        if self._owners is None:
            self._owners = OwnerResolver()
        owner = self._owners.of_socket(sock.inode, sock.cgroup_id or 0, w.netns)
        holder = (w.netns, w.laddr or "", w.lport, w.proto, owner.pid, owner.comm, owner.cgroup or w.cgroup,
                  owner.container or w.container)
        self.holders.append(holder)
        return saved.apply_holders(f, [holder])

    def _other_settings(self, drops: DropSnapshot, here: int | None,
                        moved: dict[int, int] | None = None) -> dict[int, Settings]:
        """Settings of the other namespaces drops happened in or whose counters moved (without --netns every
        namespace is watched), the busiest first, at most MAX_NAMESPACES; one that is gone is left out."""
        busy: dict[int, int] = {}
        for row in drops.rows:
            if row.netns and row.netns != here:
                busy[row.netns] = busy.get(row.netns, 0) + row.count
        for inode, n in (moved or {}).items():
            if inode != here:
                busy[inode] = busy.get(inode, 0) + n
        if not busy:
            return {}
        known = {ns.inode: ns for ns in netns.known_namespaces()}
        out = {}
        for inode in sorted(busy, key=lambda i: -busy[i])[:MAX_NAMESPACES]:
            ns = known.get(inode)
            if ns is None:
                continue
            ifaces = [r.iface for r in drops.rows if r.netns == inode and r.iface]
            try:
                out[inode] = settings_mod.read_settings(ns, list(dict.fromkeys(ifaces))[:MAX_NICS])
            except OSError:
                continue
        return out

    def _nics(self, drops: DropSnapshot, rx: dict[str, int]) -> list[str]:
        """The interfaces worth reading ethtool for: those named, else those with drops or traffic."""
        if self.query.filters.ifaces:
            return list(self.query.filters.ifaces)[:MAX_NICS]
        ns_inode = self.query.filters.netns.inode if self.query.filters.netns else None
        seen = [r.iface for r in drops.rows if r.iface and (ns_inode is None or r.netns == ns_inode)]
        seen += [c.iface for c in drops.counters if c.iface]
        seen += sorted(rx, key=lambda i: -rx[i])
        return [i for i in dict.fromkeys(seen) if i != "lo"][:MAX_NICS]

    def close(self) -> None:
        try:
            self.drops.close()
        finally:
            if self.trace is not None:
                self.trace.close()


def doctor_session(query: DoctorQuery, facts: KernelFacts, *,
                   loader: bpf.Loader = bpf.compile_program) -> DoctorSession:
    """The drops session, and the trace session when any of the doctor's stages can attach here: without it
    the latency rules are reported as not checked, and every other rule still runs."""
    if not facts.has_tracepoint(drops_mod.TRACEPOINT):
        raise MissingCapability("this kernel has no skb:kfree_skb tracepoint (needs Linux 4.x+ with tracefs mounted)")
    drops = factory.drops_session(query.drops_query(), facts, loader=loader)
    unavailable: list[Unavailable] = []
    trace = None
    if query.trace:
        tq = query.trace_query()
        plan = tq.plan(facts)
        if plan.available:
            try:
                trace = factory.trace_session(tq, facts, loader=loader)  # its start line lists what it could not attach
            except MissingCapability as exc:
                unavailable.append(Unavailable("trace", str(exc)))
        else:
            unavailable += [Unavailable(c.hook, c.reason, c.stage.id) for c in plan.unavailable]
    return DoctorSession(query, drops, trace, unavailable)
