"""The histogram bpf/trace_common.c keeps: slots, their ranges, percentiles, log2 buckets.

Slots 0..7 hold the exact values 0..7 ns; above that every power of two is
split into 8 linear sub-buckets, so a slot is at most 12.5% wide and a
percentile read from it (interpolated inside the slot) is within about 6%.
"""

from __future__ import annotations

from collections.abc import Mapping

from netpath.contract import MAX_SLOT, SUM_SLOT
from netpath.model import Bucket, Latency

__all__ = ["MAX_SLOT", "SUM_SLOT", "latency", "log2_buckets", "percentile", "slot_of", "slot_range"]

SUB = 8


def slot_of(value: int) -> int:
    """Python twin of np_slot() in bpf/trace_common.c (unit tests pin them together)."""
    if value < SUB:
        return max(value, 0)
    log = value.bit_length() - 1
    return (log - 2) * SUB + ((value >> (log - 3)) & (SUB - 1))


def slot_range(slot: int) -> tuple[int, int]:
    """[low, high) in ns covered by a slot."""
    if slot < SUB:
        return slot, slot + 1
    log = slot // SUB + 2
    sub = slot % SUB
    width = 1 << (log - 3)
    low = (SUB + sub) * width
    return low, low + width


def percentile(slots: Mapping[int, int], pct: float, max_ns: int | None = None) -> int:
    """The pct-th percentile (0 < pct <= 100) in ns, interpolated inside its slot, capped by max."""
    total = sum(slots.values())
    if total <= 0:
        return 0
    rank = pct / 100.0 * total
    seen = 0
    for slot in sorted(slots):
        count = slots[slot]
        if count <= 0:
            continue
        if seen + count >= rank:
            low, high = slot_range(slot)
            frac = (rank - seen) / count
            value = int(low + frac * (high - low))
            if max_ns is not None and max_ns > 0:
                value = min(value, max_ns)
            return value
        seen += count
    low, high = slot_range(max(slots))
    return min(high, max_ns) if max_ns else high


def log2_buckets(slots: Mapping[int, int]) -> list[dict[str, int]]:
    """Collapse slots into log2 buckets: [{lo_ns, hi_ns, count}], bucket i = [2^i, 2^(i+1)), 0 in the first."""
    out: dict[int, int] = {}
    for slot, count in slots.items():
        if count <= 0:
            continue
        low, _ = slot_range(slot)
        index = max(low.bit_length() - 1, 0)
        out[index] = out.get(index, 0) + count
    return [{"lo_ns": 0 if i == 0 else 1 << i, "hi_ns": 1 << (i + 1), "count": out[i]} for i in sorted(out)]


def latency(slots: Mapping[int, int], max_ns: int, sum_ns: int) -> Latency:
    """The finished numbers of one distribution (slots hold counts only)."""
    count = sum(slots.values())
    if count == 0:
        return Latency(max_ns=max_ns, sum_ns=sum_ns)
    buckets = tuple(Bucket(b["lo_ns"], b["hi_ns"], b["count"]) for b in log2_buckets(slots))
    return Latency(count, percentile(slots, 50, max_ns or None), percentile(slots, 90, max_ns or None),
                   percentile(slots, 99, max_ns or None), max_ns, sum_ns, sum_ns // count, buckets)
