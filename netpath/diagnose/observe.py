"""What a doctor rule reads (Observation: one window's snapshots and the settings read at its end) and the
small helpers every rule module shares: where a finding is, whose socket it is, a knob with its value."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from netpath.diagnose.severity import RANK, SEVERITIES, grade
from netpath.model import (
    Counter,
    DropRow,
    DropSnapshot,
    Finding,
    Knob,
    NetnsCounters,
    Owner,
    Settings,
    SocketState,
    TraceSnapshot,
    Window,
)

__all__ = ["RANK", "SEVERITIES", "Observation", "Rule", "grade"]


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
    # every other namespace's counters over the window (host-wide runs): each is diagnosed as its own scope
    namespaces: tuple[NetnsCounters, ...] = ()
    # sampled drops' source addresses: (reason, saddr, samples), for the rules that name senders
    sources: tuple[tuple[str, str, int], ...] = ()
    # one of the other namespaces of a host-wide run (rules.scopes): host-wide levels are the first scope's
    other_namespace: bool = False

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

    def received(self, iface: str | None) -> int | None:
        """Packets the interface received in the window (drops included: the link counts before the stack),
        else the namespace's IP input (IpInReceives + Ip6InReceives, drops after IP included), else None."""
        if iface and iface in self.window.rx_packets:
            return self.window.rx_packets[iface]
        ip_in = self.snmp("IpInReceives", "Ip6InReceives")
        return ip_in or None

    def grade(self, policy: str, n: int, received: int | None = None) -> str:
        return grade(policy, n, self.seconds, received)


Check = Callable[[Observation], list[Finding]]


@dataclass(frozen=True)
class Rule:
    id: str
    check: Check
    trigger: str  # for netpath-doctor(8) and `--help`: what makes it fire
    knob: str
    severity: str  # the policy, in words
    reasons: tuple[str, ...] = field(default=())  # kernel drop reasons it claims
    counters: tuple[str, ...] = field(default=())  # counters it claims: "snmp:Name", "link:rx_crc", "conntrack:drop"


def knob(settings: Settings, name: str, advice: str) -> Knob:
    return Knob(name, settings.sysctl(name), advice)


def ns_where(obs: Observation, row: DropRow | None = None, iface: str | None = None) -> dict[str, object]:
    if row is not None and row.netns is not None:
        return {"iface": row.iface, "netns": row.netns, "netns_label": row.netns_label or obs.settings.netns_label}
    return {"iface": iface, "netns": obs.settings.netns, "netns_label": obs.settings.netns_label}


def owner_where(owner: Owner | None) -> dict[str, object]:
    if owner is None:
        return {}
    sock = owner.sock
    return {"pid": owner.pid, "comm": owner.comm, "cgroup": owner.cgroup, "container": owner.container,
            "pod": owner.pod, "pod_namespace": owner.pod_namespace,
            "laddr": sock.laddr if sock else None, "lport": sock.lport if sock else None,
            "proto": sock.proto if sock else None}


def by_owner(rows: list[DropRow]) -> list[tuple[Owner | None, DropRow, int]]:
    """Rows of the same socket (inode, else pid/comm) summed: (owner, a representative row, count), busiest first."""
    groups: dict[object, tuple[Owner | None, DropRow, int]] = {}
    for row in rows:
        o = row.owner
        key = (o.sock.inode if o and o.sock else None, o.pid if o else None, o.comm if o else None, row.netns)
        owner, first, n = groups.get(key, (o, row, 0))
        groups[key] = (owner, first, n + row.count)
    return sorted(groups.values(), key=lambda g: -g[2])


def by_iface(rows: list[DropRow]) -> list[tuple[DropRow, int]]:
    groups: dict[tuple[int | None, str | None], tuple[DropRow, int]] = {}
    for row in rows:
        first, n = groups.get((row.netns, row.iface), (row, 0))
        groups[(row.netns, row.iface)] = (first, n + row.count)
    return sorted(groups.values(), key=lambda g: -g[1])


def socket_of(settings: Settings, owner: Owner | None) -> SocketState | None:
    """The socket sock_diag read at the end for a drop's owner: by inode, else (UDP: one socket per port)
    by address and port. A TCP socket gone by the end is not guessed: its listener shares the port."""
    if owner is None or owner.sock is None:
        return None
    return next((s for s in settings.sockets if s.inode == owner.sock.inode), None) or next(
        (s for s in settings.sockets if s.lport == owner.sock.lport and s.proto == owner.sock.proto == "udp"
         and s.laddr == owner.sock.laddr), None)


def who(where: dict[str, object]) -> str:
    if where.get("comm"):
        return f"{where['comm']}[{where['pid']}]"
    if where.get("lport"):
        return f"the socket on port {where['lport']}"
    return "a socket"


def sysctl_int(settings: Settings, name: str, index: int = 0) -> int | None:
    """A sysctl's number (index: which of tcp_rmem's three), None when unread or not a number."""
    value = settings.sysctl(name)
    parts = value.split() if value else []
    return int(parts[index]) if len(parts) > index and parts[index].lstrip("-").isdigit() else None
