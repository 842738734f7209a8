"""Durations and --fail-on-latency specs: parsed into numbers, checked against snapshots."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from netpath.errors import BadInput
from netpath.model import DropSnapshot, Snapshot, TraceSnapshot, Verdict
from netpath.stages import STAGE_IDS

UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
PCTS = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s)\s*$", re.ASCII)

# The longest run netpath accepts (--duration) and so the longest latency it can ever observe: both
# checkpoints of a packet fall inside one run. It keeps every ns value far inside int64/u64 (292 years),
# so a --slower or --fail-on-latency value reaches the BPF program as a plain 64-bit constant.
LONGEST_S = 365 * 24 * 3600
LONGEST_NS = LONGEST_S * UNITS["s"]


def parse_duration(value: str, what: str = "duration") -> int:
    """'10ms' -> 10_000_000 ns. A unit is required: ns, us, ms or s; at most one year."""
    m = _DURATION.match(value)
    if not m:
        raise BadInput(f"bad {what} {value!r}: expected a number with a unit, e.g. 500us, 10ms, 1s")
    ns_float = float(m.group(1)) * UNITS[m.group(2)]
    if not math.isfinite(ns_float) or ns_float > LONGEST_NS:
        raise BadInput(f"bad {what} {value!r}: at most one year ({LONGEST_S}s), the longest run netpath accepts")
    ns = int(ns_float)
    if ns <= 0:
        raise BadInput(f"bad {what} {value!r}: must be at least 1ns")
    return ns


@dataclass(frozen=True)
class LatencyThreshold:
    spec: str
    stage: str
    pct: str  # p50, p90, p99, max
    limit_ns: int
    per_interval: bool = True

    def as_json(self) -> dict[str, object]:
        return {"spec": self.spec, "stage": self.stage, "percentile": self.pct, "limit_ns": self.limit_ns}

    def check(self, snap: Snapshot) -> int | None:
        """The measured value when the stage's percentile is above the limit, else None."""
        if not isinstance(snap, TraceSnapshot):
            return None
        row = snap.stage(self.stage)
        if row is None or row.latency.count == 0:
            return None
        lat = row.latency
        value = {"p50": lat.p50_ns, "p90": lat.p90_ns, "p99": lat.p99_ns, "max": lat.max_ns}[self.pct]
        return value if value > self.limit_ns else None

    def verdict(self, value: int | None) -> Verdict:
        return Verdict(self.as_json(), value is not None, value)


def parse_fail_on_latency(value: str) -> LatencyThreshold:
    """STAGE:PCT:DURATION, e.g. socket_queue:p99:10ms."""
    parts = value.split(":")
    if len(parts) != 3:
        raise BadInput(f"bad --fail-on-latency {value!r}: expected STAGE:PCT:DURATION, e.g. socket_queue:p99:10ms")
    stage, pct, duration = (p.strip() for p in parts)
    if stage not in STAGE_IDS:
        raise BadInput(f"bad --fail-on-latency {value!r}: unknown stage {stage!r} (one of {', '.join(STAGE_IDS)})")
    if pct.lower() not in PCTS:
        raise BadInput(f"bad --fail-on-latency {value!r}: percentile {pct!r} is not one of p50, p90, p99, max")
    limit = parse_duration(duration, f"--fail-on-latency {value!r} duration")
    return LatencyThreshold(value, stage, pct.lower(), limit)


@dataclass(frozen=True)
class DropsThreshold:
    """--fail-on-drops N: at least N matching drops in the whole run."""

    limit: int
    per_interval: bool = False

    def check(self, snap: Snapshot) -> int | None:
        if isinstance(snap, DropSnapshot) and snap.total >= self.limit:
            return snap.total
        return None

    def verdict(self, value: int | None) -> Verdict:
        return Verdict({"fail_on_drops": self.limit}, value is not None, value)

