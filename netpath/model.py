"""Plain snapshot dataclasses handed from collectors to renderers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DropRow:
    reason: str | None
    reason_code: int | None
    location: str | None
    iface: str | None
    ifindex: int | None
    netns: int | None
    proto: str | None
    count: int
    family: int | None = None
    saddr: str | None = None
    daddr: str | None = None
    sport: int | None = None
    dport: int | None = None
    stack: list[str] | None = None

    def as_json(self, with_flow: bool) -> dict[str, object]:
        out: dict[str, object] = {
            "reason": self.reason,
            "reason_code": self.reason_code,
            "location": self.location,
            "iface": self.iface,
            "ifindex": self.ifindex,
            "netns": self.netns,
            "proto": self.proto,
            "count": self.count,
        }
        if with_flow:
            out.update(
                family=self.family, saddr=self.saddr, daddr=self.daddr, sport=self.sport, dport=self.dport
            )
        if self.stack is not None:
            out["stack"] = self.stack
        return out


@dataclass(frozen=True)
class Counter:
    source: str  # link, softnet, qdisc, snmp
    name: str
    count: int
    iface: str | None = None
    cpu: int | None = None

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"source": self.source, "name": self.name}
        if self.iface is not None:
            out["iface"] = self.iface
        if self.cpu is not None:
            out["cpu"] = self.cpu
        out["count"] = self.count
        return out


@dataclass(frozen=True)
class DropSample:
    ts_ns: int
    cpu: int
    pid: int
    comm: str
    len: int
    row: DropRow


@dataclass
class Health:
    """netpath's own account of itself for one interval or the whole run."""

    probe_hits: dict[str, int] = field(default_factory=dict)
    matched: int = 0
    lost_rows: int = 0  # drops not counted because the aggregation map was full
    samples: int = 0
    samples_lost: int = 0  # perf buffer overflow
    samples_skipped: int = 0  # over the per-CPU sample budget

    def as_json(self) -> dict[str, object]:
        return {
            "probe_hits": dict(self.probe_hits),
            "matched": self.matched,
            "lost_rows": self.lost_rows,
            "samples": self.samples,
            "lost_samples": self.samples_lost,
            "skipped_samples": self.samples_skipped,
        }


@dataclass
class DropSnapshot:
    rows: list[DropRow]
    counters: list[Counter]
    health: Health
    total: int
    elapsed_ns: int
    other_rows: int = 0  # rows beyond --top, folded out of `rows`
    other_count: int = 0
