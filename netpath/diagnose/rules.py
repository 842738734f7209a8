"""The doctor's rules as data: each a pure function of one window's snapshots and the settings read now.

A rule returns findings; severity is about harm, not about a counter moving:
data an application asked for and lost is at least `warn`, traffic nobody
listens for or a filter someone wrote is `info` unless it takes most of an
interface's traffic. Every number comes from this window (deltas), and where
the kernel keeps a counter for it the evidence says which one and carries its
value, so a reader can check it with nstat or /proc. The table at the end
(RULES) is the contract: its ids are listed in netpath-doctor(8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from netpath.model import (
    Counter,
    DropRow,
    DropSnapshot,
    Evidence,
    Finding,
    FindingWhere,
    Knob,
    Owner,
    Settings,
    SocketState,
    TraceSnapshot,
    Window,
)

SEVERITIES = ("info", "warn", "crit")
RANK = {name: i for i, name in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Observation:
    """Everything one doctor window saw: the drops and trace summaries, extra counters, settings read now."""

    drops: DropSnapshot | None
    trace: TraceSnapshot | None
    window: Window
    settings: Settings  # the namespace the run looked at (the host's without --netns)
    elapsed_ns: int
    others: dict[int, Settings] = field(default_factory=dict)  # netns inode -> settings, for rows elsewhere
    # the run was narrowed (--netns, --iface, ...): host-wide counters (softnet) then say nothing of its scope,
    # so they never raise a finding above info on their own
    scoped: bool = False

    def settings_for(self, netns: int | None) -> Settings:
        """The settings of the namespace a drop happened in (knob values are per namespace)."""
        if netns is None:
            return self.settings
        return self.others.get(netns, self.settings)

    @property
    def seconds(self) -> float:
        return max(self.elapsed_ns / 1e9, 1e-9)

    def rows(self, *reasons: str) -> list[DropRow]:
        return [r for r in (self.drops.rows if self.drops else []) if r.reason in reasons]

    def counters(self, source: str, names: Iterable[str] | None = None) -> list[Counter]:
        wanted = set(names) if names is not None else None
        return [c for c in (self.drops.counters if self.drops else [])
                if c.source == source and (wanted is None or c.name in wanted)]

    def snmp(self, *names: str) -> int:
        return sum(self.window.snmp.get(n, 0) for n in names)

    def rate(self, n: int) -> float:
        return n / self.seconds


Check = Callable[[Observation], list[Finding]]


@dataclass(frozen=True)
class Rule:
    id: str
    check: Check
    trigger: str  # for netpath-doctor(8) and `--help`: what makes it fire
    knob: str
    severity: str  # the policy, in words
    reasons: tuple[str, ...] = field(default=())  # kernel drop reasons it reads


# thresholds, in one place
CRIT_DROPS_PER_S = 1000.0  # lost data at this rate is an outage in progress, not a blip
POLICY_WARN_SHARE = 0.5  # a filter that drops at least half of an interface's packets is likely a mistake
IMBALANCE_SHARE = 0.9  # one CPU did at least this share of the receive work ...
IMBALANCE_MIN_PACKETS = 10_000  # ... over at least this many packets in the window
SLOW_READER_INFO_NS = 10_000_000  # socket_queue p99 per reader
SLOW_READER_WARN_NS = 100_000_000
SLOW_READER_MIN = 20  # packets timed for that reader
SOFTIRQ_INFO_NS = 1_000_000  # softirq_wait p99
SOFTIRQ_WARN_NS = 10_000_000


def _loss_severity(obs: Observation, n: int) -> str:
    return "crit" if obs.rate(n) >= CRIT_DROPS_PER_S else "warn"


def _knob(settings: Settings, name: str, advice: str) -> Knob:
    return Knob(name, settings.sysctl(name), advice)


def _ns_where(obs: Observation, row: DropRow | None = None, iface: str | None = None) -> dict[str, object]:
    if row is not None and row.netns is not None:
        return {"iface": row.iface, "netns": row.netns, "netns_label": row.netns_label or obs.settings.netns_label}
    return {"iface": iface, "netns": obs.settings.netns, "netns_label": obs.settings.netns_label}


def _owner_where(owner: Owner | None) -> dict[str, object]:
    if owner is None:
        return {}
    sock = owner.sock
    return {"pid": owner.pid, "comm": owner.comm, "cgroup": owner.cgroup, "container": owner.container,
            "laddr": sock.laddr if sock else None, "lport": sock.lport if sock else None,
            "proto": sock.proto if sock else None}


def _by_owner(rows: list[DropRow]) -> list[tuple[Owner | None, DropRow, int]]:
    """Rows of the same socket (inode, else pid/comm) summed: (owner, a representative row, count), busiest first."""
    groups: dict[object, tuple[Owner | None, DropRow, int]] = {}
    for row in rows:
        o = row.owner
        key = (o.sock.inode if o and o.sock else None, o.pid if o else None, o.comm if o else None, row.netns)
        owner, first, n = groups.get(key, (o, row, 0))
        groups[key] = (owner, first, n + row.count)
    return sorted(groups.values(), key=lambda g: -g[2])


def _by_iface(rows: list[DropRow]) -> list[tuple[DropRow, int]]:
    groups: dict[tuple[int | None, str | None], tuple[DropRow, int]] = {}
    for row in rows:
        first, n = groups.get((row.netns, row.iface), (row, 0))
        groups[(row.netns, row.iface)] = (first, n + row.count)
    return sorted(groups.values(), key=lambda g: -g[1])


def _socket(settings: Settings, owner: Owner | None) -> SocketState | None:
    if owner is None or owner.sock is None:
        return None
    return next((s for s in settings.sockets if s.inode == owner.sock.inode), None) or next(
        (s for s in settings.sockets if s.lport == owner.sock.lport and s.proto == owner.sock.proto
         and s.laddr == owner.sock.laddr), None)


def _who(where: dict[str, object]) -> str:
    if where.get("comm"):
        return f"{where['comm']}[{where['pid']}]"
    if where.get("lport"):
        return f"the socket on port {where['lport']}"
    return "a socket"


# ---------------------------------------------------------------- socket-level rules


def socket_rcvbuf_overflow(obs: Observation) -> list[Finding]:
    rows = obs.rows("SOCKET_RCVBUFF", "SOCKET_BACKLOG")
    if not rows:
        return []
    udp_errors = obs.snmp("UdpRcvbufErrors", "Udp6RcvbufErrors")
    backlog_drops = obs.snmp("TcpExtTCPBacklogDrop")
    out = []
    for owner, row, n in _by_owner(rows):
        settings = obs.settings_for(row.netns)
        rmem_max = settings.sysctl("net.core.rmem_max")
        where = _ns_where(obs, row) | _owner_where(owner)
        sock = _socket(settings, owner)
        tcp = row.reason == "SOCKET_BACKLOG"
        evidence = [Evidence("dropped at the socket's receive buffer", n,
                             f"kfree_skb reason {row.reason}")]
        if tcp:
            evidence.append(Evidence("TCP backlog drops, all sockets", backlog_drops, "nstat TcpExtTCPBacklogDrop"))
        else:
            evidence.append(Evidence("UDP receive-buffer errors, all sockets", udp_errors,
                                     "nstat UdpRcvbufErrors + Udp6RcvbufErrors"))
        evidence.append(Evidence("drops per second", round(obs.rate(n)), None, "packets/s"))
        capped = sock is not None and sock.rcvbuf is not None and rmem_max is not None and rmem_max.isdigit() \
            and sock.rcvbuf >= 2 * int(rmem_max)
        knobs = [Knob("SO_RCVBUF", str(sock.rcvbuf) if sock and sock.rcvbuf is not None else None,
                      "raise it in the application (setsockopt; the kernel doubles the value asked for)"
                      + ("; it is at net.core.rmem_max's cap" if capped else "")),
                 _knob(settings, "net.core.rmem_max", "raise it first: SO_RCVBUF cannot exceed it"
                       if capped else "SO_RCVBUF requests are capped at it"),
                 _knob(settings, "net.core.rmem_default", "the buffer of sockets that never set SO_RCVBUF")]
        if tcp:
            knobs.append(_knob(settings, "net.ipv4.tcp_rmem", "raise the max (third value)"))
        out.append(Finding(
            "socket-rcvbuf-overflow", _loss_severity(obs, n),
            f"{_who(where)} drops {'segments' if tcp else 'datagrams'} at its full receive buffer",
            tuple(evidence), FindingWhere(**where), tuple(knobs),  # type: ignore[arg-type]
            "the application reads slower than data arrives and its buffer is full, so the kernel throws away "
            "what it was sent"))
    return out


def _listener_for(settings: Settings, owner: Owner | None) -> SocketState | None:
    sock = _socket(settings, owner)
    if sock is not None:
        return sock
    full = [s for s in settings.sockets if s.proto == "tcp" and s.listening and s.wqueue and s.rqueue >= s.wqueue]
    return full[0] if len(full) == 1 else None


def listen_overflow(obs: Observation) -> list[Finding]:
    overflows = obs.snmp("TcpExtListenOverflows")
    rows = obs.rows("TCP_LISTEN_OVERFLOW")
    if not rows and not overflows:
        return []
    groups: list[tuple[Owner | None, DropRow | None, int]] = [*_by_owner(rows)] or [(None, None, 0)]
    out = []
    for owner, row, n in groups:
        settings = obs.settings_for(row.netns if row else None)
        listener = _listener_for(settings, owner)
        where = _ns_where(obs, row) | _owner_where(owner)
        if listener is not None and not where.get("lport"):
            where |= {"laddr": listener.laddr, "lport": listener.lport, "proto": "tcp"}
        evidence = [Evidence("connection attempts dropped: accept queue full", overflows,
                             "nstat TcpExtListenOverflows"),
                    Evidence("listen drops (overflows and other SYN/ACK refusals)", obs.snmp("TcpExtListenDrops"),
                             "nstat TcpExtListenDrops")]
        if rows:
            evidence.insert(0, Evidence("packets dropped at this listener", n, "kfree_skb reason TCP_LISTEN_OVERFLOW"))
        if listener is not None:
            evidence.append(Evidence("accept queue now", listener.rqueue, "sock_diag idiag_rqueue", "connections"))
        knobs = (Knob("listen() backlog", str(listener.wqueue) if listener else None,
                      "raise the backlog the application passes to listen(), or accept() faster"),
                 _knob(settings, "net.core.somaxconn", "caps every listen() backlog: raise it with the backlog"),
                 _knob(settings, "net.ipv4.tcp_max_syn_backlog", "half-open connections allowed (SYN queue)"))
        out.append(Finding(
            "listen-overflow", "warn", f"{_who(where)} cannot accept connections fast enough: accept queue full",
            tuple(evidence), FindingWhere(**where), knobs,  # type: ignore[arg-type]
            "the listener's accept queue is full, so the kernel drops new connection attempts; clients wait "
            "for a SYN retransmit or give up"))
    return out


def no_listener(obs: Observation) -> list[Finding]:
    rows = obs.rows("NO_SOCKET")
    out = []
    for row, n in _by_iface(rows):
        by_proto: dict[str, int] = {}
        for r in rows:
            if (r.netns, r.iface) == (row.netns, row.iface):
                by_proto[r.proto or "?"] = by_proto.get(r.proto or "?", 0) + r.count
        evidence = [Evidence("packets to a port nobody listens on", n, "kfree_skb reason NO_SOCKET")]
        if "udp" in by_proto:
            evidence.append(Evidence("UDP datagrams to closed ports, all interfaces",
                                     obs.snmp("UdpNoPorts", "Udp6NoPorts"), "nstat UdpNoPorts + Udp6NoPorts"))
        protos = ", ".join(f"{p} {c:,}" for p, c in sorted(by_proto.items()))
        out.append(Finding(
            "no-listener", "info", f"packets to closed ports ({protos})", tuple(evidence),
            FindingWhere(**_ns_where(obs, row)), (),  # type: ignore[arg-type]
            "no socket is bound to the destination port (a service down, or a scan); the kernel answers with "
            "an RST or ICMP port unreachable and nothing an application asked for is lost"))
    return out


def slow_reader(obs: Observation) -> list[Finding]:
    stage = obs.trace.stage("socket_queue") if obs.trace else None
    if stage is None:
        return []
    out = []
    for owner, lat in stage.owners:
        if lat.count < SLOW_READER_MIN or lat.p99_ns < SLOW_READER_INFO_NS:
            continue
        where = _ns_where(obs) | _owner_where(owner)
        sock = _socket(obs.settings, owner)
        out.append(Finding(
            "slow-reader", "warn" if lat.p99_ns >= SLOW_READER_WARN_NS else "info",
            f"{_who(where)} reads its data late: p99 {lat.p99_ns / 1e6:.1f} ms in the socket queue",
            (Evidence("packets timed in the socket queue", lat.count, None),
             Evidence("p99 time in the socket queue", lat.p99_ns, None, "ns"),
             Evidence("max time in the socket queue", lat.max_ns, None, "ns")),
            FindingWhere(**where),  # type: ignore[arg-type]
            (Knob("SO_RCVBUF", str(sock.rcvbuf) if sock and sock.rcvbuf is not None else None,
                  "a larger buffer only lets data wait longer: make the reader faster (more threads, "
                  "SO_REUSEPORT)"),),
            "packets sit in the socket's receive queue waiting for the application to read them"))
    return out


# ---------------------------------------------------------------- policy: netfilter, tc, rp_filter, xdp


def _policy_severity(obs: Observation, iface: str | None, n: int) -> str:
    received = obs.window.rx_packets.get(iface or "", 0)
    return "warn" if received and n >= POLICY_WARN_SHARE * received else "info"


def netfilter_drop(obs: Observation) -> list[Finding]:
    rows = obs.rows("NETFILTER_DROP")
    conntrack = obs.window.conntrack.get("drop", 0) + obs.window.conntrack.get("early_drop", 0)
    out = []
    for row, n in _by_iface(rows):
        n_rules = n - conntrack if conntrack else n  # packets conntrack refused are conntrack-full's
        conntrack = max(conntrack - n, 0)
        if n_rules <= 0:
            continue
        received = obs.window.rx_packets.get(row.iface or "", 0)
        evidence = [Evidence("packets dropped by a netfilter rule", n_rules,
                             "kfree_skb reason NETFILTER_DROP")]
        if received:
            evidence.append(Evidence(f"packets received on {row.iface}", received, "link rx_packets"))
        rules = obs.settings_for(row.netns).netfilter_rules
        out.append(Finding(
            "netfilter-drop", _policy_severity(obs, row.iface, n_rules),
            f"a firewall rule drops received packets on {row.iface or '?'}", tuple(evidence),
            FindingWhere(**_ns_where(obs, row)),  # type: ignore[arg-type]
            (Knob("iptables-save / nft list ruleset", None if rules is None else f"{rules} drop/reject rules",
                  "find the rule whose counter grows (iptables -L -v -n) and narrow or remove it if the "
                  "traffic is wanted"),),
            "an iptables/nftables rule in this namespace decided to drop these packets"))
    return out


TC_REASONS = ("TC_INGRESS", "TC_EGRESS", "TC_CHAIN_NOTFOUND", "TC_RECLASSIFY_LOOP", "TC_COOKIE_ERROR")


def tc_drop(obs: Observation) -> list[Finding]:
    rows = obs.rows(*TC_REASONS)
    out = []
    for row, n in _by_iface(rows):
        qdisc = sum(c.count for c in obs.counters("qdisc") if c.iface == row.iface and c.name.startswith(
            ("ingress", "clsact")))
        evidence = [Evidence("packets dropped by a tc filter", n, f"kfree_skb reason {row.reason}")]
        evidence.append(Evidence("ingress qdisc drops", qdisc, f"tc -s qdisc show dev {row.iface} ingress"))
        filters = obs.settings_for(row.netns).tc_ingress.get(row.iface or "")
        out.append(Finding(
            "tc-drop", _policy_severity(obs, row.iface, n),
            f"a tc filter drops packets on {row.iface or '?'}", tuple(evidence),
            FindingWhere(**_ns_where(obs, row)),  # type: ignore[arg-type]
            (Knob(f"tc filter show dev {row.iface} ingress", None if filters is None else f"{filters} filters",
                  "find the filter with action drop and narrow or delete it if the traffic is wanted"),),
            "a traffic-control filter on the interface's ingress hook returned 'shot' for these packets"))
    return out


def rp_filter(obs: Observation) -> list[Finding]:
    out = []
    for row, n in _by_iface(obs.rows("IP_RPFILTER")):
        settings = obs.settings_for(row.netns)
        knobs = (_knob(settings, f"net.ipv4.conf.{row.iface}.rp_filter",
                       "2 (loose) accepts a source reachable by any route; 0 turns the check off"),
                 _knob(settings, "net.ipv4.conf.all.rp_filter",
                       "the interface uses the larger of this and its own value: lower both"))
        out.append(Finding(
            "rp-filter", "warn", f"reverse-path filtering drops packets on {row.iface or '?'}",
            (Evidence("packets dropped by the reverse-path check", n, "kfree_skb reason IP_RPFILTER"),
             Evidence("reverse-path filter drops, all interfaces", obs.snmp("TcpExtIPReversePathFilter"),
                      "nstat TcpExtIPReversePathFilter")),
            FindingWhere(**_ns_where(obs, row)), knobs,  # type: ignore[arg-type]
            "the route back to these packets' source does not leave through the interface they came in on, "
            "and strict rp_filter drops them (asymmetric routing, multihoming, or spoofed sources)"))
    return out


def xdp_drop(obs: Observation) -> list[Finding]:
    by_iface: dict[str, list[Counter]] = {}
    for c in obs.counters("xdp"):
        if "drop" in c.name or c.name == "xdp_exception":
            by_iface.setdefault(c.iface or "?", []).append(c)
    for row in obs.rows("XDP"):
        by_iface.setdefault(row.iface or "?", []).append(Counter("xdp", "kfree_skb reason XDP", row.count,
                                                                 row.iface))
    out = []
    for iface, counters in sorted(by_iface.items()):
        n = sum(c.count for c in counters)
        errors = any(c.name == "xdp_exception" for c in counters)
        out.append(Finding(
            "xdp-drop", "warn" if errors else _policy_severity(obs, iface, n),
            f"the XDP program on {iface} drops packets" + (" (XDP errors)" if errors else ""),
            tuple(Evidence(f"XDP {c.name}", c.count, c.name if c.name.startswith("kfree_skb")
                           else f"{'tracepoint xdp:xdp_exception' if c.name == 'xdp_exception' else 'ethtool -S'} "
                           f"{c.name}") for c in counters),
            FindingWhere(**_ns_where(obs, iface=iface)),  # type: ignore[arg-type]
            (Knob(f"ip link show dev {iface} (xdp)", "attached", "check the program's verdicts; an aborted or "
                  "errored program drops everything it cannot handle"),),
            "an XDP program returned XDP_DROP or failed (XDP_ABORTED) before the stack saw the packets"))
    return out


# ---------------------------------------------------------------- conntrack, backlog, NAPI, NIC


def conntrack_full(obs: Observation) -> list[Finding]:
    ct = obs.window.conntrack
    n = ct.get("drop", 0) + ct.get("early_drop", 0)
    if not n:
        return []
    drops = sum(r.count for r in obs.rows("NETFILTER_DROP"))
    evidence = [Evidence("new connections refused: conntrack table full", ct.get("drop", 0),
                         "/proc/net/stat/nf_conntrack drop"),
                Evidence("entries evicted early to make room", ct.get("early_drop", 0),
                         "/proc/net/stat/nf_conntrack early_drop"),
                Evidence("packets dropped by netfilter (all causes)", drops, "kfree_skb reason NETFILTER_DROP")]
    count, top = obs.settings.sysctl("net.netfilter.nf_conntrack_count"), obs.settings.sysctl(
        "net.netfilter.nf_conntrack_max")
    return [Finding(
        "conntrack-full", "crit" if ct.get("drop", 0) else "warn",
        f"the connection-tracking table is full ({count or '?'} of {top or '?'} entries)", tuple(evidence),
        FindingWhere(**_ns_where(obs)),  # type: ignore[arg-type]
        (_knob(obs.settings, "net.netfilter.nf_conntrack_max", "raise it (each entry costs ~300 bytes), or "
               "exempt busy traffic from tracking (NOTRACK)"),
         _knob(obs.settings, "net.netfilter.nf_conntrack_count", "entries in use now"),
         _knob(obs.settings, "net.netfilter.nf_conntrack_buckets", "raise with nf_conntrack_max")),
        "every new flow needs a conntrack entry, and with the table full the kernel drops the packet that "
        "would create one")]


def backlog_overflow(obs: Observation) -> list[Finding]:
    rows = obs.rows("CPU_BACKLOG")
    softnet = {cpu: cols.get("dropped", 0) for cpu, cols in obs.window.softnet.items() if cols.get("dropped", 0)}
    n = sum(r.count for r in rows)
    total = sum(softnet.values())
    if not n and (not total or obs.scoped):  # softnet is host-wide: a narrowed run needs its own drops
        return []
    evidence = [Evidence("packets dropped: per-CPU input backlog full", n, "kfree_skb reason CPU_BACKLOG"),
                Evidence("softnet backlog drops, all CPUs", total, "/proc/net/softnet_stat dropped (column 2)")]
    for cpu, d in sorted(softnet.items()):
        evidence.append(Evidence(f"softnet drops on CPU {cpu}", d, f"/proc/net/softnet_stat dropped, CPU {cpu}"))
    iface = _by_iface(rows)[0][0].iface if rows else None
    return [Finding(
        "backlog-overflow", _loss_severity(obs, max(n, total)),
        "the per-CPU input backlog overflows: packets dropped before the stack", tuple(evidence),
        FindingWhere(**_ns_where(obs, _by_iface(rows)[0][0] if rows else None, iface)),  # type: ignore[arg-type]
        (_knob(obs.settings, "net.core.netdev_max_backlog", "raise it (e.g. to 2-4x) for bursts; "
               "spread the load with RPS if one CPU takes it all"),
         _knob(obs.settings, "net.core.dev_weight", "packets one backlog poll may take")),
        "packets handed to a CPU's backlog queue (RPS, veth, netif_rx) arrived faster than NET_RX drained it")]


def napi_budget_squeeze(obs: Observation) -> list[Finding]:
    squeeze = {cpu: cols.get("time_squeeze", 0) for cpu, cols in obs.window.softnet.items()
               if cols.get("time_squeeze", 0)}
    total = sum(squeeze.values())
    if not total:
        return []
    # the loss a squeeze makes worse is the NIC ring's (nobody drained it in time); backlog drops are
    # backlog-overflow's own finding, with its own knob, and are only mentioned here
    backlog = bool(obs.rows("CPU_BACKLOG")) if obs.scoped else any(
        cols.get("dropped", 0) for cols in obs.window.softnet.values())
    lost = bool(_ring_counters(obs))
    evidence = [Evidence("NET_RX runs that ran out of budget or time", total,
                         "/proc/net/softnet_stat time_squeeze (column 3)")]
    for cpu, s in sorted(squeeze.items()):
        evidence.append(Evidence(f"time_squeeze on CPU {cpu}", s, f"/proc/net/softnet_stat time_squeeze, CPU {cpu}"))
    return [Finding(
        "napi-budget-squeeze", "warn" if lost else "info",
        "NET_RX softirq stops with work left (budget or time exhausted)"
        + (", and the NIC ring overflowed" if lost else ", beside backlog drops" if backlog else ""),
        tuple(evidence), FindingWhere(**_ns_where(obs)),  # type: ignore[arg-type]
        (_knob(obs.settings, "net.core.netdev_budget", "raise it (e.g. 600) so one run processes more packets"),
         _knob(obs.settings, "net.core.netdev_budget_usecs", "raise it so one run may take longer")),
        "the receive softirq hit its packet budget or time limit and deferred the rest to ksoftirqd; alone "
        "that is latency, with backlog or ring drops it is loss")]


RING_LINK = ("rx_missed", "rx_fifo", "rx_over")
RING_QSTATS = ("rx-hw-drops", "rx-hw-drop-overruns", "rx-alloc-fail")


def _ring_counters(obs: Observation) -> list[Counter]:
    out = obs.counters("link", RING_LINK)
    out += [c for c in obs.counters("qstats") if any(c.name.endswith(n) for n in RING_QSTATS)]
    out += [c for c in obs.counters("ethtool") if any(w in c.name for w in ("missed", "fifo", "no_buf", "nobuf",
                                                                             "overrun", "rx_dropped"))]
    return out


def nic_ring_overrun(obs: Observation) -> list[Finding]:
    by_iface: dict[str, list[Counter]] = {}
    for c in _ring_counters(obs):
        by_iface.setdefault(c.iface or "?", []).append(c)
    out = []
    for iface, counters in sorted(by_iface.items()):
        n = max(c.count for c in counters)
        nic = obs.settings.nic(iface)
        ring = None if nic is None or nic.rx_ring is None else f"{nic.rx_ring} (max {nic.rx_ring_max})"
        source = {"link": "ip -s link", "qstats": "netdev qstats", "ethtool": "ethtool -S"}
        out.append(Finding(
            "nic-ring-overrun", _loss_severity(obs, n), f"{iface}'s receive ring overflows: the NIC drops packets",
            tuple(Evidence(f"{c.source} {c.name}", c.count, f"{source.get(c.source, c.source)} {c.name}")
                  for c in counters),
            FindingWhere(**_ns_where(obs, iface=iface)),  # type: ignore[arg-type]
            (Knob(f"ethtool -G {iface} rx", ring, "raise the RX ring toward its maximum"
                  + ("" if nic is None or nic.rx_ring is None or nic.rx_ring < (nic.rx_ring_max or 0)
                     else "; it is at the maximum: add queues (ethtool -L) or CPUs for the IRQs")),
             _knob(obs.settings, "net.core.netdev_budget", "a bigger budget drains the ring faster")),
            "the NIC had no free descriptor when packets arrived: the host did not drain the ring fast enough"))
    return out


def rx_imbalance(obs: Observation) -> list[Finding]:
    processed = {cpu: cols.get("processed", 0) for cpu, cols in obs.window.softnet.items()}
    total = sum(processed.values())
    if len(processed) < 2 or total < IMBALANCE_MIN_PACKETS:
        return []
    cpu, top = max(processed.items(), key=lambda kv: kv[1])
    if top < IMBALANCE_SHARE * total:
        return []
    # squeezes alone are napi-budget-squeeze's (latency); drops on the busy CPU make the imbalance harmful
    hurt = obs.window.softnet[cpu].get("dropped", 0)
    harmful = hurt > 0 and not obs.scoped  # host-wide numbers: a narrowed run cannot tell whose drops they were
    busiest = max(obs.window.rx_packets.items(), key=lambda kv: kv[1], default=(None, 0))[0]
    nic = obs.settings.nic(busiest)
    knobs = []
    # Each knob only where it applies and was read. RPS applies to virtual devices too (net/core/dev.c:
    # netif_rx_internal() and netif_receive_skb_internal() call get_rps_cpu(); veth hands packets over
    # with netif_rx), but a device in another namespace has no sysfs entry here: no "unreadable" advice.
    # IRQ affinity applies only to a device with IRQ lines of its own (a NIC), never to veth/bridge/lo.
    if busiest is not None and nic is not None and nic.rps_cpus:
        knobs.append(Knob(f"/sys/class/net/{busiest}/queues/rx-*/rps_cpus",
                          ", ".join(f"{q}={m}" for q, m in nic.rps_cpus),
                          "set a mask of several CPUs (RPS) to spread the protocol work"))
    if busiest is not None and nic is not None and nic.irqs:
        knobs.append(Knob("/proc/irq/N/smp_affinity_list", ", ".join(f"{irq}:{aff}" for irq, aff in nic.irqs),
                          "spread the NIC queues' IRQs over CPUs (or let irqbalance do it)"))
    return [Finding(
        "rx-imbalance", "warn" if harmful else "info",
        f"CPU {cpu} does {100 * top // total}% of the receive work", (
            Evidence(f"packets processed by CPU {cpu}", top, f"/proc/net/softnet_stat processed, CPU {cpu}"),
            Evidence("packets processed, all CPUs", total, "/proc/net/softnet_stat processed (column 1)"),
            Evidence(f"backlog drops on CPU {cpu}", hurt, f"/proc/net/softnet_stat dropped, CPU {cpu}")),
        FindingWhere(**_ns_where(obs, iface=busiest), cpu=cpu),  # type: ignore[arg-type]
        tuple(knobs),
        "one CPU takes the receive softirq for nearly all packets while others idle; it saturates first")]


def softirq_wait(obs: Observation) -> list[Finding]:
    stage = obs.trace.stage("softirq_wait") if obs.trace else None
    if stage is None or stage.latency.count == 0 or stage.latency.p99_ns < SOFTIRQ_INFO_NS:
        return []
    lat = stage.latency
    return [Finding(
        "softirq-wait", "warn" if lat.p99_ns >= SOFTIRQ_WARN_NS else "info",
        f"NET_RX softirqs wait {lat.p99_ns / 1e6:.1f} ms (p99) between being raised and running",
        (Evidence("softirq runs timed", lat.count, None, "runs"),
         Evidence("p99 wait", lat.p99_ns, None, "ns"), Evidence("max wait", lat.max_ns, None, "ns")),
        FindingWhere(**_ns_where(obs)),  # type: ignore[arg-type]
        (_knob(obs.settings, "net.core.netdev_budget_usecs", "shorter runs let other softirqs and tasks in; "
               "long waits usually mean a busy CPU: check ksoftirqd and IRQ affinity"),),
        "the receive softirq was raised but ran late: the CPU was busy with other work or ksoftirqd "
        "was not scheduled")]


def reassembly_failure(obs: Observation) -> list[Finding]:
    rows = obs.rows("FRAG_REASM_TIMEOUT", "FRAG_TOO_FAR", "DUP_FRAG")
    fails = obs.snmp("IpReasmFails", "Ip6ReasmFails")
    if not rows and not fails:
        return []
    n = sum(r.count for r in rows)
    row = _by_iface(rows)[0][0] if rows else None
    settings = obs.settings_for(row.netns if row else None)
    return [Finding(
        "reassembly-failure", "warn", "fragmented datagrams could not be reassembled",
        (Evidence("fragments dropped", n, "kfree_skb reasons FRAG_REASM_TIMEOUT, FRAG_TOO_FAR, DUP_FRAG"),
         Evidence("datagrams that failed reassembly", fails, "nstat IpReasmFails + Ip6ReasmFails", "datagrams"),
         Evidence("of them, timed out", obs.snmp("IpReasmTimeout", "Ip6ReasmTimeout"),
                  "nstat IpReasmTimeout + Ip6ReasmTimeout", "datagrams")),
        FindingWhere(**_ns_where(obs, row)),  # type: ignore[arg-type]
        (_knob(settings, "net.ipv4.ipfrag_time", "seconds a partial datagram waits for its missing "
               "fragments; the real fix is a path MTU that needs no fragments"),
         _knob(settings, "net.ipv4.ipfrag_high_thresh", "memory for fragments being reassembled")),
        "a fragment of these datagrams never arrived (or came too late), so the ones that did were thrown away")]


CSUM_REASONS = ("UDP_CSUM", "TCP_CSUM", "IP_CSUM", "ICMP_CSUM", "SKB_CSUM")


def checksum_errors(obs: Observation) -> list[Finding]:
    out = []
    for row, n in _by_iface(obs.rows(*CSUM_REASONS)):
        nic = obs.settings_for(row.netns).nic(row.iface)
        rx_csum = dict(nic.offloads).get("rx-checksumming") if nic else None
        out.append(Finding(
            "checksum-errors", "warn", f"packets with bad checksums arrive on {row.iface or '?'}",
            (Evidence("packets dropped for a bad checksum", n, "kfree_skb reasons " + "/".join(CSUM_REASONS)),
             Evidence("UDP checksum errors, all interfaces", obs.snmp("UdpInCsumErrors", "Udp6InCsumErrors"),
                      "nstat UdpInCsumErrors + Udp6InCsumErrors"),
             Evidence("TCP checksum errors, all interfaces", obs.snmp("TcpInCsumErrors"), "nstat TcpInCsumErrors")),
            FindingWhere(**_ns_where(obs, row)),  # type: ignore[arg-type]
            (Knob(f"ethtool -K {row.iface} rx", rx_csum, "the NIC's receive checksum offload; errors with it on "
                  "are corruption on the wire or a broken sender: check cabling, the peer and its offloads"),),
            "the packets were damaged on the way (or built wrong by the sender), so the stack discards them"))
    return out


RULES: tuple[Rule, ...] = (
    Rule("socket-rcvbuf-overflow", socket_rcvbuf_overflow,
         "kfree_skb SOCKET_RCVBUFF (UDP) or SOCKET_BACKLOG (TCP) drops, by receiving socket",
         "SO_RCVBUF, net.core.rmem_max, net.core.rmem_default, net.ipv4.tcp_rmem",
         "warn; crit at 1000 drops/s or more", ("SOCKET_RCVBUFF", "SOCKET_BACKLOG")),
    Rule("listen-overflow", listen_overflow, "TcpExtListenOverflows grew, or TCP_LISTEN_OVERFLOW drops",
         "the listen() backlog, net.core.somaxconn, net.ipv4.tcp_max_syn_backlog", "warn",
         ("TCP_LISTEN_OVERFLOW",)),
    Rule("no-listener", no_listener, "kfree_skb NO_SOCKET drops", "none (start the service, or ignore a scan)",
         "info: nothing an application asked for is lost", ("NO_SOCKET",)),
    Rule("netfilter-drop", netfilter_drop, "kfree_skb NETFILTER_DROP drops not explained by a full conntrack table",
         "the ruleset (iptables-save / nft list ruleset)",
         "info; warn when it drops at least half of the interface's packets", ("NETFILTER_DROP",)),
    Rule("tc-drop", tc_drop, "kfree_skb TC_INGRESS/TC_EGRESS (and tc error) drops", "tc filter show dev IFACE ingress",
         "info; warn when it drops at least half of the interface's packets", TC_REASONS),
    Rule("rp-filter", rp_filter, "kfree_skb IP_RPFILTER drops", "net.ipv4.conf.IFACE.rp_filter, "
         "net.ipv4.conf.all.rp_filter", "warn", ("IP_RPFILTER",)),
    Rule("conntrack-full", conntrack_full, "/proc/net/stat/nf_conntrack drop or early_drop grew",
         "net.netfilter.nf_conntrack_max", "crit when new flows were refused; warn for early drops alone"),
    Rule("backlog-overflow", backlog_overflow, "kfree_skb CPU_BACKLOG drops or softnet_stat dropped grew",
         "net.core.netdev_max_backlog", "warn; crit at 1000 drops/s or more", ("CPU_BACKLOG",)),
    Rule("napi-budget-squeeze", napi_budget_squeeze, "softnet_stat time_squeeze grew",
         "net.core.netdev_budget, net.core.netdev_budget_usecs",
         "info; warn when the NIC ring overflowed in the same window"),
    Rule("nic-ring-overrun", nic_ring_overrun, "link rx_missed/rx_fifo/rx_over, netdev qstats hw drops or "
         "ethtool -S missed/no-buffer counters grew", "ethtool -G IFACE rx", "warn; crit at 1000 drops/s or more"),
    Rule("rx-imbalance", rx_imbalance, f"one CPU processed {int(IMBALANCE_SHARE * 100)}% or more of at least "
         f"{IMBALANCE_MIN_PACKETS:,} packets", "rps_cpus, /proc/irq/N/smp_affinity_list",
         "info; warn when that CPU also dropped packets (softnet dropped)"),
    Rule("slow-reader", slow_reader, "socket_queue p99 of a reading process at or above "
         f"{SLOW_READER_INFO_NS // 1_000_000} ms (at least {SLOW_READER_MIN} packets)", "the application; SO_RCVBUF",
         f"info; warn at {SLOW_READER_WARN_NS // 1_000_000} ms"),
    Rule("softirq-wait", softirq_wait, f"softirq_wait p99 at or above {SOFTIRQ_INFO_NS // 1_000_000} ms",
         "net.core.netdev_budget_usecs, IRQ affinity", f"info; warn at {SOFTIRQ_WARN_NS // 1_000_000} ms"),
    Rule("reassembly-failure", reassembly_failure, "kfree_skb FRAG_REASM_TIMEOUT/FRAG_TOO_FAR/DUP_FRAG drops or "
         "IpReasmFails grew", "net.ipv4.ipfrag_time, net.ipv4.ipfrag_high_thresh", "warn",
         ("FRAG_REASM_TIMEOUT", "FRAG_TOO_FAR", "DUP_FRAG")),
    Rule("checksum-errors", checksum_errors, "kfree_skb UDP_CSUM/TCP_CSUM/IP_CSUM/ICMP_CSUM/SKB_CSUM drops",
         "ethtool -K IFACE rx", "warn", CSUM_REASONS),
    Rule("xdp-drop", xdp_drop, "XDP drop counters (ethtool -S), xdp:xdp_exception or kfree_skb XDP drops",
         "the XDP program (ip link show)", "info; warn on XDP errors or when it drops at least half of the "
         "interface's packets", ("XDP",)),
)
RULE_IDS = tuple(r.id for r in RULES)
LATENCY_RULES = ("slow-reader", "softirq-wait")  # they need the trace program (netpath doctor --no-trace: not run)


def diagnose(obs: Observation) -> list[Finding]:
    """Every rule's findings, worst first (severity, then the first evidence number)."""
    found = [f for rule in RULES for f in rule.check(obs)]
    return sorted(found, key=lambda f: (-RANK[f.severity], -(f.evidence[0].value if f.evidence else 0), f.id))


def counts(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}


def at_least(findings: list[Finding], level: str) -> bool:
    return any(RANK[f.severity] >= RANK[level] for f in findings)
