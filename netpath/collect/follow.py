"""netpath follow: build bpf/follow.c from a query, gather its hops into packets, say how each ended.

The C sends one `contract.FOLLOW_HOP` per hook a followed skb passes into a
ring buffer; this session groups them by the packet's id, names what the
kernel gave as numbers (namespace and device by cookie, drop reason, code
location, the reading process) and hands out a `model.FollowedPacket` when
its fate arrives. Packets still going when the run ends are in the summary.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

from netpath import bpf, contract, untrusted
from netpath.collect import owners as owners_mod
from netpath.collect.drops import addr_text
from netpath.collect.owners import OwnerResolver
from netpath.collect.session import ProgramSession
from netpath.errors import MissingCapability
from netpath.filter_defines import filter_defines
from netpath.kernel.facts import KernelFacts
from netpath.kernel.reasons import DropReasons
from netpath.links import IfaceNames
from netpath.model import (
    Attached,
    Event,
    Fate,
    Flow,
    FollowedPacket,
    FollowHealth,
    FollowSnapshot,
    FollowStart,
    Hop,
    Owner,
    Unavailable,
)
from netpath.query import Filters

HOOKS = contract.FOLLOW_HOOKS
FATES = contract.FOLLOW_FATES
HOOK_NAMES = tuple(h.name for h in HOOKS)
# bpf/: what a hop says and the maps, which skb is which packet, the tracepoint handlers, the kprobe hops
FOLLOW_UNITS = ("follow.c", "follow_table.c", "follow_hooks.c", "follow_kprobe.c")
# where software GSO frees the skb it cut into segments (validate_xmit_skb, and its .isra clones)
GSO_FUNCTIONS = ("validate_xmit_skb", "__skb_gso_segment", "skb_gso_segment")
# frames of a `freed` hop that say how, not who: the slab free, the skb free helpers, the BPF trampoline
FREE_FRAMES = ("bpf_", "__bpf_", "bpf_trace_run", "__traceiter_", "kmem_cache_free", "kfree_skbmem", "__kfree_skb",
               "skb_release", "__slab_free", "0x", "_einittext", "kfree_skb_partial", "napi_skb_cache")
# frames of a consume that say how, not who: the tracing machinery and consume_skb's own helpers
CONSUME_FRAMES = ("BPF", "0x", "bpf_", "__bpf_", "bpf_trace_run", "__traceiter_", "consume_skb",
                  "__consume_stateless_skb")
# who frees a datagram once a process has read it (net/ipv4/udp.c skb_consume_udp from udp_recvmsg and
# udpv6_recvmsg; net/core/datagram.c skb_free_datagram from raw, ping and packet sockets' recvmsg): a consume
# there is a read in the reader's own context, where a softirq's free would show its own callers first
READ_FUNCTIONS = frozenset(("skb_consume_udp", "udp_recvmsg", "udpv6_recvmsg", "skb_free_datagram"))
L4_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
# the receiving socket's owner (bpf/drops_owner.c) and its receive queue's tail (sk_data_ready)
OWNER_FIELDS = ("OFF_SK_STATE", "OFF_SK_SOCKET", "OFF_SK_CGROUP", "OFF_CGROUP_KN", "OFF_KN_ID", "OFF_SOCKET_INODE",
                "OFF_INODE_INO", "OFF_SK_FAMILY", "OFF_SK_RCVQ", "OFF_SK_RCVQ_PREV")
NEEDED = (*OWNER_FIELDS, "OFF_SKB_DEV", "OFF_SKB_LEN", "OFF_SKB_HEAD", "OFF_SKB_DATA", "OFF_SKB_PROTOCOL",
          "OFF_SKB_NETWORK_HEADER", "OFF_SKB_SKB_IIF", "OFF_SKB_SK", "OFF_SK_NET", "OFF_DEV_IFINDEX", "OFF_DEV_ND_NET",
          "OFF_NET_NS_INUM", "OFF_NET_COOKIE")


@dataclass(frozen=True)
class FollowQuery:
    filters: Filters = field(default_factory=Filters)
    count: int = contract.FOLLOW_MAX_DEFAULT


def ring_pages(page: int) -> int:
    """The hop ring in pages: a power of two, as BPF requires."""
    pages = 1
    while pages * page < contract.FOLLOW_RING_BYTES:
        pages *= 2
    return pages


# a tracepoint whose skb argument came later than the tracepoint: the field its format gained with it
SKB_ARG_SINCE = {"udp:udp_fail_queue_rcv_skb": ("saddr", "this kernel's udp_fail_queue_rcv_skb passes no skb "
                                                         "(it does since Linux 6.7, with the addresses)")}


def available_hooks(facts: KernelFacts) -> tuple[tuple[contract.FollowHook, ...], tuple[Unavailable, ...]]:
    have, missing = [], []
    for hook in HOOKS:
        if hook.is_kprobe:
            continue  # kprobe_hooks()
        fmt = facts.tracepoint_format(hook.name)
        field_, why = SKB_ARG_SINCE.get(hook.name, ("", ""))
        if not facts.has_tracepoint(hook.name):
            missing.append(Unavailable(hook.name, "no such tracepoint in this kernel"))
        elif field_ and fmt is not None and not fmt.has(field_):
            missing.append(Unavailable(hook.name, why))
        else:
            have.append(hook)
    missing += [Unavailable(name, why) for name, why in contract.FOLLOW_NOT_SKB.items()]
    return tuple(have), tuple(missing)


def kprobe_hooks(facts: KernelFacts) -> tuple[dict[str, tuple[contract.FollowHook, str]], tuple[Unavailable, ...]]:
    """The function hops this kernel can give: hook name -> (hook, the symbol to probe), and why not the rest."""
    have: dict[str, tuple[contract.FollowHook, str]] = {}
    missing: list[Unavailable] = []
    for hook in HOOKS:
        if not hook.is_kprobe:
            continue
        if not facts.has_kprobes:
            missing.append(Unavailable(hook.name, f"kprobe {hook.name}: {facts.kprobe_reason}"))
            continue
        sym = facts.kallsyms.resolve(hook.name)
        if sym is None:
            missing.append(Unavailable(hook.name, f"kprobe {hook.name}: no such symbol in kallsyms "
                                                  "(inlined, renamed, or its module is not loaded)"))
        else:
            have[hook.name] = (hook, sym)
    return have, tuple(missing)


def program_source(query: FollowQuery, facts: KernelFacts, offsets: dict[str, int]) -> bpf.ProgramSource:
    """Pure: the C files and every number they are compiled with; user values only as -D numbers."""
    missing = [n for n in NEEDED if n not in offsets]
    if missing:
        raise MissingCapability(f"this kernel's BTF lacks struct fields netpath follow reads: {', '.join(missing)}")
    hooks, _ = available_hooks(facts)
    if not any(h.entry for h in hooks):
        raise MissingCapability("this kernel has none of the tracepoints a packet is first seen at "
                                "(net:net_dev_queue, net:netif_rx, net:netif_receive_skb): is tracefs mounted?")
    defines = {name: offsets[name] for name in NEEDED}
    defines.update({name: offsets.get(name, 0) for name in ("OFF_NFSTATE_HOOK", "OFF_NFSTATE_PF")})
    defines.update({f"HOOK_{h.c_id}": 1 for h in hooks})
    fmt = facts.tracepoint_format("skb:kfree_skb")
    defines["TP_HAS_REASON"] = int(bool(fmt and fmt.has("reason")))
    fmt = facts.tracepoint_format("skb:consume_skb")  # a raw tracepoint may read only the arguments it has
    defines["CONSUME_HAS_LOCATION"] = int(fmt is None or fmt.has("location"))
    page = os.sysconf("SC_PAGE_SIZE")
    defines.update(FOLLOW_MAX=query.count, NP_PAGE_SIZE=page, FOLLOW_RING_PAGES=ring_pages(page))
    defines.update(filter_defines(query.filters))
    if query.filters.netns is not None and query.filters.netns.cookie:
        defines["FILTER_NETNS_COOKIE"] = query.filters.netns.cookie
    # the function hops are compiled always and loaded only where they attach (FollowSession.start)
    return bpf.ProgramSource(["where.c", "drops_owner.c", *FOLLOW_UNITS], defines)


def nf_hook_name(rc: int) -> str:
    """nf_hook_slow's hop: family << 8 | hook, as people name them ("ipv4 PREROUTING")."""
    family, number = contract.NF_FAMILIES.get(rc >> 8, str(rc >> 8)), rc & 0xFF
    inet = family in ("ipv4", "ipv6") and number < len(contract.NF_INET_HOOKS)
    return f"{family} {contract.NF_INET_HOOKS[number] if inet else number}"


@dataclass
class _Raw:
    """A hop as the C sent it, decoded but not yet named."""

    id: int
    skb: int
    offset_ns: int
    cookie: int
    location: int
    cgroup: int
    sk_ino: int
    clone_of: int
    netns: int
    ifindex: int
    length: int
    cpu: int
    reason: int
    pid: int
    rc: int
    hook: int
    fate: int
    family: int
    saddr: bytes
    daddr: bytes
    sport: int
    dport: int
    l3proto: int
    l4proto: int
    comm: bytes
    frames: tuple[int, ...] = ()

    @classmethod
    def unpack(cls, raw: bytes) -> _Raw:
        (id_, skb, offset, cookie, location, cgroup, sk_ino, clone_of, netns, ifindex, length, cpu, reason, pid, rc,
         hook, fate, family, saddr, daddr, sport, dport, l3proto, l4proto, _pad, comm,
         *frames) = contract.FOLLOW_HOP.unpack(raw)
        return cls(id_, skb, offset, cookie, location, cgroup, sk_ino, clone_of, netns, ifindex, length, cpu, reason,
                   pid, rc, hook, fate, family, saddr, daddr, sport, dport, l3proto, l4proto, comm, tuple(frames))

    def flow(self) -> Flow:
        if self.family not in (4, 6):
            return Flow()
        ports = self.l4proto in (6, 17, 132)
        return Flow(self.family, L4_NAMES.get(self.l4proto, f"ipproto-{self.l4proto}"),
                    addr_text(self.family, self.saddr), addr_text(self.family, self.daddr),
                    self.sport if ports else None, self.dport if ports else None)


class PacketBuilder:
    """Turns one packet's raw hops into a FollowedPacket with names."""

    def __init__(self, facts: KernelFacts, reasons: DropReasons | None, ifaces: IfaceNames,
                 owners: OwnerResolver | None) -> None:
        self.facts = facts
        self.reasons = reasons
        self.ifaces = ifaces
        self.owners = owners

    def _where(self, r: _Raw) -> tuple[int | None, str | None, str | None, int | None]:
        """(netns inode, its label, device name, ifindex), names found by the namespace's cookie."""
        netns = r.netns or None
        label = self.ifaces.netns_label(r.netns, r.cookie) if r.netns else None
        iface = self.ifaces.name(r.netns, r.ifindex, r.cookie) if r.netns and r.ifindex else None
        return netns, label, iface, r.ifindex or None

    def hop(self, r: _Raw, last: Flow | None) -> Hop:
        netns, label, iface, ifindex = self._where(r)
        flow = r.flow()
        changed = bool(last is not None and flow.family is not None and last.family is not None and flow != last)
        hook = HOOK_NAMES[r.hook] if r.hook < len(HOOK_NAMES) else f"hook-{r.hook}"
        rc = r.rc if hook in ("net:net_dev_xmit", "net:napi_gro_receive_exit", "udp:udp_fail_queue_rcv_skb",
                              "nf_hook_slow") else None
        return Hop(r.offset_ns, r.cpu, hook, netns, r.cookie or None, label, iface, ifindex, r.length, flow, changed,
                   rc, nf_hook_name(r.rc) if hook == "nf_hook_slow" else None)

    def fate(self, end: _Raw | None, hops: list[Hop]) -> Fate:
        if end is None:
            return Fate("in_flight")
        kind = FATES[end.fate] if end.fate < len(FATES) else "in_flight"
        hook = HOOK_NAMES[end.hook] if end.hook < len(HOOK_NAMES) else None
        netns, label, iface, ifindex = self._where(end)
        if kind == "dropped":
            code = end.reason if self._has_reason() else None
            reason = self.reasons.name(end.reason) if (self.reasons is not None and code is not None) else None
            return Fate(kind, hook, reason, code, self.facts.kallsyms.symbolize(end.location), netns, label, iface,
                        ifindex)
        if kind == "delivered":
            return Fate(kind, hook, netns=netns, netns_label=label, iface=iface, ifindex=ifindex,
                        owner=self._owner(end))
        if kind == "consumed":
            sent = self._sent_by(hops[:-1] if hops and hops[-1].hook == "skb:consume_skb" else hops)
            if sent is not None:
                return sent
            read = self._read_by(end)
            if read is not None:  # a process's read freed it: delivered to that process (no sk_data_ready)
                return Fate("delivered", hook, location=read, netns=netns, netns_label=label, iface=iface,
                            ifindex=ifindex, owner=self._owner(end))
            location = self.facts.kallsyms.symbolize(end.location) if end.location else None  # none before 6.3
            if location is not None and location.startswith(GSO_FUNCTIONS):
                kind = "segmented"
            return Fate(kind, hook, location=location, netns=netns, netns_label=label, iface=iface,
                        ifindex=ifindex)
        if kind == "freed":
            return Fate(kind, hook, location=self._freed_by(end), netns=netns, netns_label=label)
        return Fate(kind, hook, netns=netns, netns_label=label, iface=iface, ifindex=ifindex)

    def _owner(self, end: _Raw) -> Owner | None:
        """Who it was delivered to: the socket's holder when it was queued, else the process that read it."""
        owner = None
        if self.owners is not None and end.sk_ino:  # queued on a socket: whoever holds it
            owner = self.owners.of_socket(end.sk_ino, end.cgroup, end.netns or None)
        elif self.owners is not None:  # read by a process
            owner = self.owners.of_reader(end.pid, end.cgroup)
        if owner is not None and owner.comm is None and end.comm.strip(b"\0"):
            owner = replace(owner, comm=untrusted.comm(end.comm))
        return owner

    def _read_by(self, end: _Raw) -> str | None:
        """The read function (func+0xoff) when a consume was a process reading the datagram, else None.

        The first frame past the tracing machinery and consume_skb's helpers is who consumed it: a read
        function only in the reader's own context (a softirq that interrupts a read shows its own callers
        first), so the pid, comm and cgroup the hop carries are the reader's."""
        if not end.pid:
            return None
        for addr in end.frames:
            if not addr:
                return None
            sym = self.facts.kallsyms.frame(addr)
            if sym.startswith(CONSUME_FRAMES):
                continue
            return sym if sym.split("+")[0].split(".")[0] in READ_FUNCTIONS else None
        return None

    def _freed_by(self, end: _Raw) -> str:
        """Who freed it: the first frame past the free functions and the tracing machinery."""
        for addr in end.frames:
            if not addr:
                break
            sym = self.facts.kallsyms.symbolize(addr)
            if not sym.startswith(FREE_FRAMES):
                return sym
        return self.facts.kallsyms.symbolize(end.location)

    @staticmethod
    def _sent_by(hops: list[Hop]) -> Fate | None:
        """The packet left by a device when the last thing that happened to it was a driver taking it."""
        if hops and hops[-1].hook == "net:net_dev_xmit" and hops[-1].rc == 0:
            h = hops[-1]
            return Fate("sent", h.hook, netns=h.netns, netns_label=h.netns_label, iface=h.iface, ifindex=h.ifindex)
        return None

    def _has_reason(self) -> bool:
        fmt = self.facts.tracepoint_format("skb:kfree_skb")
        return bool(fmt and fmt.has("reason"))

    def packet(self, raws: list[_Raw], ended: bool) -> FollowedPacket:
        end = raws[-1] if ended else None  # the hop that carried the fate came last
        raws = sorted(raws, key=lambda r: r.offset_ns)
        hops: list[Hop] = []
        last: Flow | None = None
        for r in raws:
            if r.fate == FATES.index("untracked"):
                continue  # not a hop: the address turned up elsewhere
            h = self.hop(r, last)
            hops.append(h)
            if h.flow.family is not None:
                last = h.flow
        first = next((h.flow for h in hops if h.flow.family is not None), Flow())
        fate = self.fate(end, hops)
        if fate.kind == "in_flight":
            fate = self._sent_by(hops) or fate
        return FollowedPacket(raws[0].id, raws[0].skb, first, tuple(hops), fate, raws[0].clone_of or None)


class FollowSession(ProgramSession):
    """netpath follow as a Session: packets are events, intervals carry health, the summary the rest."""

    def __init__(self, query: FollowQuery, facts: KernelFacts, source: bpf.ProgramSource,
                 reasons: DropReasons | None, loader: bpf.Loader = bpf.compile_program) -> None:
        super().__init__(loader)
        self.query = query
        self.facts = facts
        self.source = source
        self._builder = PacketBuilder(facts, reasons, IfaceNames(), OwnerResolver())
        self._open: dict[int, list[_Raw]] = {}  # id -> hops so far
        self._unnamed: list[tuple[float, list[_Raw]]] = []  # ended, owner to be named
        self._ended = 0
        self._originals_ended = 0  # --count counts these; clones come on top
        self._last_ended = 0
        self._last_stats: dict[str, int] = {}
        self._last_ns = 0
        self._kprobes: list[str] = []  # function hops attached

    def start(self) -> FollowStart:
        hooks, unavailable = available_hooks(self.facts)
        prog = self._load(self.source, self.facts, self.query.filters.iface_keys)
        prog.open_ring_buffer("hops", self._on_hop)
        kprobes, kp_missing = kprobe_hooks(self.facts)
        attached = [Attached(h.name, "raw_tracepoint", h.name.split(":")[1]) for h in hooks]
        unavailable += kp_missing
        for name, (hook, sym) in kprobes.items():
            try:
                prog.attach_kprobe(sym, hook.kprobe_fn)
                self._kprobes.append(name)
                attached.append(Attached(name if sym == name else f"{name} ({sym})", "kprobe", hook.kprobe_fn))
            except MissingCapability as exc:  # the kernel refused this one: the rest still run
                unavailable += (Unavailable(name, f"kprobe {sym}: {exc}"),)
        _ = self.facts.kallsyms  # read once now, not inside the first packet
        return FollowStart(kernel=self.facts.release, headers=bpf.headers_mode(self.facts),
                           attached=tuple(attached), unavailable=unavailable,
                           filters=self.query.filters.report(), count=self.query.count)

    def _on_hop(self, raw: bytes) -> None:
        if len(raw) < contract.FOLLOW_HOP.size:
            return
        r = _Raw.unpack(raw)
        hops = self._open.setdefault(r.id, [])
        hops.append(r)
        if r.fate:
            del self._open[r.id]
            self._ended += 1
            self._originals_ended += not r.clone_of
            packet = self._builder.packet(hops, ended=True)
            if r.sk_ino and packet.fate.owner is not None and packet.fate.owner.pid is None:
                self._unnamed.append((time.monotonic(), hops))  # a socket born since the last look at /proc
            else:
                self._events.append(packet)

    def _named_late(self, everything: bool) -> list[FollowedPacket]:
        """Packets whose socket had no known holder yet, built again once /proc may be read again."""
        now, out, keep = time.monotonic(), [], []
        for at, hops in self._unnamed:
            if everything or now - at >= owners_mod.REFRESH_MIN_S:
                out.append(self._builder.packet(hops, ended=True))
            else:
                keep.append((at, hops))
        self._unnamed = keep
        return out

    def events(self) -> list[Event]:
        return [*super().events(), *self._named_late(False)]

    def done(self) -> bool:
        """Every packet --count asked for has ended, every clone of them too, and each has its owner named.

        A clone starts only while its original is followed, so once the originals have ended no other starts."""
        return self._originals_ended >= self.query.count and not self._open and not self._unnamed

    def stats(self) -> dict[str, int]:
        assert self.prog is not None
        names = (*contract.FOLLOW_STATS, *HOOK_NAMES)
        totals = [0] * len(names)
        for raw in self.prog.percpu_value("follow_stats", 0):
            for i in range(min(len(totals), len(raw) // 8)):
                totals[i] += int.from_bytes(raw[i * 8:i * 8 + 8], "little")
        return dict(zip(names, totals, strict=True))

    def _health(self, stats: dict[str, int]) -> FollowHealth:
        hooks, _ = available_hooks(self.facts)
        hits = {h.name: stats.get(h.name, 0) for h in hooks}
        hits.update({name: stats.get(name, 0) for name in self._kprobes})
        return FollowHealth(hits, **{name: stats.get(name, 0) for name in contract.FOLLOW_STATS})

    def interval(self, elapsed_ns: int) -> FollowSnapshot:
        stats = self.stats()
        delta = {k: v - self._last_stats.get(k, 0) for k, v in stats.items()}
        ended, self._last_ended = self._ended - self._last_ended, self._ended
        span, self._last_ns, self._last_stats = elapsed_ns - self._last_ns, elapsed_ns, stats
        return FollowSnapshot(self._health(delta), elapsed_ns, ended, span)

    def summary(self, elapsed_ns: int) -> FollowSnapshot:
        in_flight = tuple(self._builder.packet(hops, ended=False) for _, hops in sorted(self._open.items()))
        return FollowSnapshot(self._health(self.stats()), elapsed_ns, self._ended, in_flight=in_flight,
                              late=tuple(self._named_late(True)))
