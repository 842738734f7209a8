"""Pure: cumulative map readings -> per-interval and whole-run stage rows of the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from netpath.collect import hist
from netpath.model import Latency, Napi, StageRow, Where
from netpath.plan import AttachPlan

HistKey = tuple[int, int, int, int]  # stage index, ifindex, netns, cpu
NapiKey = tuple[int, int, int]  # ifindex, netns, cpu
OwnerKey = tuple[int, int]  # cgroup id, reader tgid
Names = Callable[[int, int], str | None]


@dataclass
class Reading:
    """Cumulative slot counts, this interval's maxima, NAPI counters and hook hits."""

    slots: dict[HistKey, dict[int, int]]
    maxima: dict[HistKey, int]
    napi: dict[NapiKey, dict[str, int]]
    hits: dict[str, int]
    stats: dict[str, int]
    owner_slots: dict[OwnerKey, dict[int, int]] = field(default_factory=dict)  # socket_queue per reader
    owner_maxima: dict[OwnerKey, int] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)  # stage index -> exact count (sampled builds)


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

    def add(self, other: Dist) -> None:
        for slot, n in other.slots.items():
            self.slots[slot] = self.slots.get(slot, 0) + n
        self.max_ns = max(self.max_ns, other.max_ns)
        self.sum_ns += other.sum_ns

    def latency(self) -> Latency:
        return hist.latency(self.slots, self.max_ns, self.sum_ns)


def napi_sum(a: Napi, b: Napi) -> Napi:
    """Two devices' or CPUs' NAPI counters as one: counts add, budget and largest poll are maxima."""
    return Napi(a.polls + b.polls, a.work + b.work, max(a.budget, b.budget), a.exhausted + b.exhausted,
                max(a.max_work, b.max_work))


Step = tuple[dict[HistKey, Dist], dict[NapiKey, Napi], dict[str, int], dict[str, int]]


class Histograms:
    """Cumulative slot counts of some histograms (by any key) -> per-step and whole-run Dists."""

    def __init__(self) -> None:
        self.prev: dict[Any, dict[int, int]] = {}
        self.run_max: dict[Any, int] = {}

    def step(self, slots: dict[Any, dict[int, int]], maxima: dict[Any, int]) -> dict[Any, Dist]:
        """This step's part; maxima are the step's own (the kernel zeroes them at each read)."""
        out: dict[Any, Dist] = {}
        for key, now in slots.items():
            before = self.prev.get(key, {})
            delta = {s: n - before.get(s, 0) for s, n in now.items() if n - before.get(s, 0) > 0}
            if delta:
                out[key] = Dist.of(delta, maxima.get(key, 0))
        for key, value in maxima.items():
            self.run_max[key] = max(self.run_max.get(key, 0), value)
        self.prev = {k: dict(v) for k, v in slots.items()}
        return out

    def totals(self) -> dict[Any, Dist]:
        return {k: Dist.of(v, self.run_max.get(k, 0)) for k, v in self.prev.items()}


class Accumulator:
    """Keeps the previous cumulative reading; step() returns the interval's dists, totals() the run's."""

    def __init__(self) -> None:
        self.stages = Histograms()
        self.owners = Histograms()  # socket_queue per reader
        self.prev_napi: dict[NapiKey, dict[str, int]] = {}
        self.prev_hits: dict[str, int] = {}
        self.prev_stats: dict[str, int] = {}
        self.last: Reading | None = None
        self.owner_step: dict[OwnerKey, Dist] = {}  # the last step's socket_queue per reader
        self.prev_seen: dict[int, int] = {}
        self.seen_step: dict[int, int] = {}  # the last step's exact count per stage (sampled builds)

    def step(self, reading: Reading) -> Step:
        dists = self.stages.step(reading.slots, reading.maxima)
        self.owner_step = self.owners.step(reading.owner_slots, reading.owner_maxima)
        napi = {k: _napi_delta(v, self.prev_napi.get(k)) for k, v in reading.napi.items()}
        hits = {k: v - self.prev_hits.get(k, 0) for k, v in reading.hits.items()}
        stats = {k: v - self.prev_stats.get(k, 0) for k, v in reading.stats.items()}
        self.prev_napi = {k: dict(v) for k, v in reading.napi.items()}
        self.prev_hits, self.prev_stats = dict(reading.hits), dict(reading.stats)
        self.seen_step = {k: v - self.prev_seen.get(k, 0) for k, v in reading.seen.items()}
        self.prev_seen = dict(reading.seen)
        self.last = reading
        return dists, {k: v for k, v in napi.items() if v.polls}, hits, stats

    def owner_totals(self) -> dict[OwnerKey, Dist]:
        return self.owners.totals()

    def seen_totals(self) -> dict[int, int]:
        return dict(self.prev_seen)

    def totals(self) -> Step:
        if self.last is None:
            return {}, {}, {}, {}
        napi = {k: _napi_delta(v, None) for k, v in self.last.napi.items()}
        return self.stages.totals(), napi, dict(self.last.hits), dict(self.last.stats)


def _napi_delta(now: dict[str, int], before: dict[str, int] | None) -> Napi:
    b = before or {}
    return Napi(now["polls"] - b.get("polls", 0), now["work"] - b.get("work", 0), now["budget"],
                now["exhausted"] - b.get("exhausted", 0), now["max_work"])


def _where(ifindex: int, ns_inode: int, cpu: int, names: Names) -> Where:
    return Where(names(ns_inode, ifindex) if ifindex else None, ifindex or None, ns_inode or None, cpu)


def stage_rows(plan: AttachPlan, dists: dict[HistKey, Dist], napi: dict[NapiKey, Napi], keep_parts: bool,
               names: Names, keep_napi_parts: bool | None = None, sample_every: int = 1,
               seen: dict[int, int] | None = None, typed: frozenset[str] = frozenset()) -> list[StageRow]:
    """One row per available stage, path order; breakdown parts with --per-iface/--per-cpu.

    keep_napi_parts (default: keep_parts) keeps NAPI counters per device on their own. With sample_every > 1,
    the stages the trace program samples (Stage.sampled) take their exact count from `seen`.
    """
    keep_napi = keep_parts if keep_napi_parts is None else keep_napi_parts
    out: list[StageRow] = []
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
        napi_total: Napi | None = None
        napi_parts: dict[NapiKey, Napi] = {}
        if choice.stage.napi:
            napi_total = Napi()
            for key, stat in napi.items():
                napi_total = napi_sum(napi_total, stat)
                if keep_napi:
                    napi_parts[key] = napi_sum(napi_parts.get(key, Napi()), stat)
        sampled = sample_every > 1 and choice.stage.sampled
        exact: int | None = None
        if sampled:
            exact = (seen or {}).get(index, 0)
        elif choice.stage.seen_always:
            # the C bumps seen on every timed run too, so seen >= timed; the two maps are not read at one
            # instant, so a run between the reads can leave seen one short: the larger is the count
            exact = max((seen or {}).get(index, 0), total.latency().count)
        out.append(StageRow(
            choice.stage.id, "+".join(choice.hooks), choice.attached_method(typed), total.latency(),
            tuple((_where(*k, names), d.latency()) for k, d in sorted(parts.items())), napi_total,
            tuple((_where(*k, names), n) for k, n in sorted(napi_parts.items())),
            seen=exact, sample_every=sample_every if sampled else 1,
        ))
    return out
