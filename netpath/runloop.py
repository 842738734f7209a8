"""The interval loop every command shares: tick, stop on duration/count/signal."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType


@dataclass
class Stop:
    reason: str = ""  # duration, count, SIGINT, SIGTERM

    def __bool__(self) -> bool:
        return bool(self.reason)


class SignalStop:
    """Turns SIGINT/SIGTERM into a stop reason, so the summary still prints and probes detach."""

    def __init__(self) -> None:
        self.stop = Stop()
        self._saved: dict[int, object] = {}

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self.stop.reason = signal.Signals(signum).name

    def __enter__(self) -> Stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handler)
        return self.stop

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._saved.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


def run(
    interval_s: float,
    duration_s: float | None,
    count: int | None,
    on_interval: Callable[[int], None],
    on_idle: Callable[[float], None] | None = None,
    stop: Stop | None = None,
) -> tuple[str, int]:
    """Call on_interval(elapsed_ns) each interval; returns (stop reason, elapsed ns).

    on_idle(timeout_s) lets a caller poll perf buffers while waiting.
    """
    stop = stop if stop is not None else Stop()
    start = time.monotonic_ns()
    deadline = start + int(duration_s * 1e9) if duration_s else None
    next_tick = start + int(interval_s * 1e9)
    ticks = 0
    while not stop:
        now = time.monotonic_ns()
        wake = next_tick if deadline is None else min(next_tick, deadline)
        if now < wake:
            wait = min((wake - now) / 1e9, 0.1)
            if on_idle:
                on_idle(wait)
            else:
                time.sleep(wait)
            continue
        if now >= next_tick:
            ticks += 1
            on_interval(now - start)
            next_tick += int(interval_s * 1e9)
            if count is not None and ticks >= count:
                stop.reason = "count"
                break
        if deadline is not None and now >= deadline:
            stop.reason = "duration"
    return stop.reason, time.monotonic_ns() - start
