"""Pure: turn cumulative map readings into per-interval and whole-run stage statistics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from netpath.collect import hist
from netpath.collect.trace import HistKey, Reading
from netpath.plan import AttachPlan

NapiKey = tuple[int, int, int]  # ifindex, netns, cpu


@dataclass
class Dist:
    """One distribution: counts per slot, the maximum seen and the sum of all samples."""

    slots: dict[int, int] = field(default_factory=dict)
    max_ns: int = 0
    sum_ns: int = 0

    @classmethod
    def of(cls, slots: dict[int, int], max_ns: int) -> Dist:
        """From map slots, where SUM_SLOT carries the sum rather than a count."""
        counts = dict(slots)
        return cls(counts, max_ns, counts.pop(hist.SUM_SLOT, 0))

    @property
    def count(self) -> int:
        return sum(self.slots.values())

    def add(self, other: Dist) -> None:
        for slot, n in other.slots.items():
            self.slots[slot] = self.slots.get(slot, 0) + n
        self.max_ns = max(self.max_ns, other.max_ns)
        self.sum_ns += other.sum_ns

    def pct(self, p: float) -> int:
        return hist.percentile(self.slots, p, self.max_ns or None)

    def as_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "p50_ns": self.pct(50),
            "p90_ns": self.pct(90),
            "p99_ns": self.pct(99),
            "max_ns": self.max_ns,
            "sum_ns": self.sum_ns,
            "mean_ns": self.sum_ns // self.count if self.count else 0,
            "buckets": hist.log2_buckets(self.slots),
        }


@dataclass
class NapiStat:
    polls: int = 0
    work: int = 0
    exhausted: int = 0
    budget: int = 0
    max_work: int = 0

    def add(self, other: NapiStat) -> None:
        self.polls += other.polls
        self.work += other.work
        self.exhausted += other.exhausted
        self.budget = max(self.budget, other.budget)
        self.max_work = max(self.max_work, other.max_work)

    def as_json(self) -> dict[str, object]:
        return {"polls": self.polls, "work": self.work, "budget": self.budget, "exhausted": self.exhausted,
                "max_work": self.max_work}


@dataclass
class StageStat:
    stage: str
    hook: str
    method: str | None
    total: Dist
    parts: dict[tuple[int, int, int], Dist] = field(default_factory=dict)  # (ifindex, netns, cpu) -> dist
    napi: NapiStat | None = None
    napi_parts: dict[NapiKey, NapiStat] = field(default_factory=dict)


@dataclass
class TraceSnapshot:
    stages: list[StageStat]
    unavailable: list[dict[str, str]]
    hits: dict[str, int]
    stats: dict[str, int]
    slow_lost: int
    softnet: dict[str, int]
    elapsed_ns: int

    def stage(self, stage_id: str) -> StageStat | None:
        return next((s for s in self.stages if s.stage == stage_id), None)


class Accumulator:
    """Keeps the previous cumulative reading; step() returns the interval's dists, totals() the run's."""

    def __init__(self) -> None:
        self.prev_slots: dict[HistKey, dict[int, int]] = {}
        self.prev_napi: dict[NapiKey, dict[str, int]] = {}
        self.prev_hits: dict[str, int] = {}
        self.prev_stats: dict[str, int] = {}
        self.run_max: dict[HistKey, int] = {}
        self.last: Reading | None = None

    def step(self, reading: Reading) -> tuple[dict[HistKey, Dist], dict[NapiKey, NapiStat], dict[str, int],
                                               dict[str, int]]:
        dists: dict[HistKey, Dist] = {}
        for key, slots in reading.slots.items():
            before = self.prev_slots.get(key, {})
            delta = {s: n - before.get(s, 0) for s, n in slots.items() if n - before.get(s, 0) > 0}
            if delta:
                dists[key] = Dist.of(delta, reading.maxima.get(key, 0))
        for key, value in reading.maxima.items():
            self.run_max[key] = max(self.run_max.get(key, 0), value)
        napi = {k: _napi_delta(v, self.prev_napi.get(k)) for k, v in reading.napi.items()}
        hits = {k: v - self.prev_hits.get(k, 0) for k, v in reading.hits.items()}
        stats = {k: v - self.prev_stats.get(k, 0) for k, v in reading.stats.items()}
        self.prev_slots = {k: dict(v) for k, v in reading.slots.items()}
        self.prev_napi = {k: dict(v) for k, v in reading.napi.items()}
        self.prev_hits, self.prev_stats = dict(reading.hits), dict(reading.stats)
        self.last = reading
        return dists, {k: v for k, v in napi.items() if v.polls}, hits, stats

    def totals(self) -> tuple[dict[HistKey, Dist], dict[NapiKey, NapiStat], dict[str, int], dict[str, int]]:
        if self.last is None:
            return {}, {}, {}, {}
        dists = {k: Dist.of(v, self.run_max.get(k, 0)) for k, v in self.last.slots.items()}
        napi = {k: _napi_delta(v, None) for k, v in self.last.napi.items()}
        return dists, napi, dict(self.last.hits), dict(self.last.stats)


def _napi_delta(now: dict[str, int], before: dict[str, int] | None) -> NapiStat:
    b = before or {}
    return NapiStat(now["polls"] - b.get("polls", 0), now["work"] - b.get("work", 0),
                    now["exhausted"] - b.get("exhausted", 0), now["budget"], now["max_work"])


def stage_stats(plan: AttachPlan, dists: dict[HistKey, Dist], napi: dict[NapiKey, NapiStat],
                keep_parts: bool) -> list[StageStat]:
    """One StageStat per available stage, path order; parts when --per-iface/--per-cpu."""
    out: list[StageStat] = []
    for choice in plan.available:
        index = choice.stage.index
        total = Dist()
        parts: dict[tuple[int, int, int], Dist] = {}
        for (stage, ifindex, ns_inode, cpu), dist in dists.items():
            if stage != index:
                continue
            total.add(dist)
            if keep_parts:
                parts.setdefault((ifindex, ns_inode, cpu), Dist()).add(dist)
        row = StageStat(choice.stage.id, "+".join(choice.hooks), choice.method, total, parts)
        if choice.stage.id == "napi_poll":
            row.napi = NapiStat()
            for key, stat in napi.items():
                row.napi.add(stat)
                if keep_parts:
                    row.napi_parts.setdefault(key, NapiStat()).add(stat)
        out.append(row)
    return out


def stage_json(row: StageStat, names: Callable[[int, int], str | None], per_iface: bool,
               per_cpu: bool) -> dict[str, object]:
    out: dict[str, object] = {"stage": row.stage, "hook": row.hook, "method": row.method, **row.total.as_json()}
    if row.parts:
        parts = []
        for (ifindex, ns_inode, cpu), dist in sorted(row.parts.items()):
            part: dict[str, object] = {}
            if per_iface:
                part.update(iface=names(ns_inode, ifindex) if ifindex else None, ifindex=ifindex or None,
                            netns=ns_inode or None)
            if per_cpu:
                part["cpu"] = cpu
            parts.append({**part, **dist.as_json()})
        out["breakdown"] = parts
    if row.napi is not None:
        out["napi"] = row.napi.as_json()
        if row.napi_parts:
            devs = []
            for (ifindex, ns_inode, cpu), stat in sorted(row.napi_parts.items()):
                dev: dict[str, object] = {}
                if per_iface:
                    dev.update(iface=names(ns_inode, ifindex) if ifindex else None, ifindex=ifindex or None)
                if per_cpu:
                    dev["cpu"] = cpu
                devs.append({**dev, **stat.as_json()})
            out["napi_breakdown"] = devs
    return out
