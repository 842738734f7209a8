"""A rolling window over cumulative drops snapshots: what `netpath export` diagnoses at each scrape.

The exporter's drops session reports run totals; the doctor's rules want
what happened over the last few minutes. `RollingWindow` keeps timed
readings (the drops summary and the window counters) and diffs the newest
against the oldest one still inside the window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from netpath.kernel import settings as settings_mod
from netpath.model import Counter, DropRow, DropSnapshot, Window

RowKey = tuple[object, ...]


def _row_key(r: DropRow) -> RowKey:
    return (r.reason, r.reason_code, r.location, r.iface, r.ifindex, r.netns, r.proto, r.owner)


def _counter_key(c: Counter) -> tuple[str, str, str | None, int | None]:
    return (c.source, c.name, c.iface, c.cpu)


def diff_drops(later: DropSnapshot, earlier: DropSnapshot | None) -> DropSnapshot:
    """later - earlier, row by row and counter by counter (a row or counter gone since counts as 0)."""
    if earlier is None:
        return later
    before_rows = {_row_key(r): r.count for r in earlier.rows}
    rows = [replace(r, count=r.count - before_rows.get(_row_key(r), 0)) for r in later.rows]
    before_counters = {_counter_key(c): c.count for c in earlier.counters}
    counters = [replace(c, count=c.count - before_counters.get(_counter_key(c), 0)) for c in later.counters]
    rows = [r for r in rows if r.count > 0]
    return replace(later, rows=rows, counters=[c for c in counters if c.count > 0],
                   total=max(later.total - earlier.total, 0), elapsed_ns=later.elapsed_ns - earlier.elapsed_ns)


@dataclass
class Reading:
    t_ns: int
    drops: DropSnapshot
    raw: settings_mod.Raw


class RollingWindow:
    """Readings over the last `span_ns`; `add()` returns (drops delta, counters window, its length in ns)."""

    def __init__(self, span_ns: int, read_raw: Callable[[], settings_mod.Raw]) -> None:
        self.span_ns = span_ns
        self.read_raw = read_raw
        self.readings: deque[Reading] = deque()

    def add(self, t_ns: int, drops: DropSnapshot, raw: settings_mod.Raw | None = None
            ) -> tuple[DropSnapshot, Window, int]:
        """raw: the counters read with `drops` (read now when not given)."""
        now = Reading(t_ns, drops, self.read_raw() if raw is None else raw)
        self.readings.append(now)
        # keep the newest reading at or before the window's start: it is the base
        while len(self.readings) > 2 and self.readings[1].t_ns <= t_ns - self.span_ns:
            self.readings.popleft()
        base = self.readings[0]
        if base is now:
            return diff_drops(drops, drops), Window(), 0
        return (diff_drops(drops, base.drops), settings_mod.window(base.raw, now.raw), t_ns - base.t_ns)
