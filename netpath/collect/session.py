"""The Session protocol every consumer drives, and the one loop that drives it.

A session owns one loaded BPF program and what it reads beside it:
`start()` compiles and attaches (and returns the start line's data),
`interval()` returns what happened since the last call, `summary()` the
whole run, `events()` the sampled packets delivered meanwhile, `close()`
detaches. `drive()` runs that lifecycle for the CLI: the interval clock,
SIGINT/SIGTERM, --duration/--count and the --fail-on thresholds, which
read snapshots. `netpath export` calls the same methods at scrape time.
"""

from __future__ import annotations

import signal
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Generic, Protocol, TypeVar

from netpath import bpf
from netpath.errors import EXIT_OK, EXIT_THRESHOLD
from netpath.kernel.facts import KernelFacts
from netpath.model import Event, Snapshot, Start, Verdict


class Session(Protocol):
    def start(self) -> Start: ...

    def wait(self, timeout_s: float) -> None:
        """Sleep up to timeout_s while delivering perf events."""

    def events(self) -> list[Event]:
        """Sampled packets delivered since the last call."""

    def interval(self, elapsed_ns: int) -> Snapshot: ...

    def summary(self, elapsed_ns: int) -> Snapshot: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Where a driven session's output goes (a terminal, JSON lines)."""

    def started(self, start: Start) -> None: ...

    def events(self, events: list[Event]) -> None: ...

    def interval(self, snap: Snapshot, seq: int) -> None: ...

    def summary(self, snap: Snapshot, stop_reason: str, verdicts: list[Verdict]) -> None: ...


class Threshold(Protocol):
    @property
    def per_interval(self) -> bool:
        """Also judged on every interval, not only on the whole run."""

    def check(self, snap: Snapshot) -> int | None:
        """The measured value when snap crosses the threshold, else None."""

    def verdict(self, value: int | None) -> Verdict: ...


T = TypeVar("T")


class Beside(Generic[T]):
    """`start` run on a thread of its own while the caller starts another session.

    A start's time is mostly the kernel's verifier, inside bpf(2) with the GIL released, so two
    programs (the doctor's drops and trace, the exporter's) verify at once on two CPUs instead of one
    after the other. result() waits for it and raises what it raised. The thread is a daemon: a load
    stuck in the kernel cannot hold the exit."""

    def __init__(self, start: Callable[[], T]) -> None:
        self._start = start
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="netpath-start", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._start()
        except BaseException as exc:  # handed to the caller's thread by result()
            self._error = exc

    def wait(self) -> None:
        """Until it has finished, whatever it returned or raised."""
        self._thread.join()

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


IFACE_KEY = struct.Struct("<Q")  # bpf/where.c: netns inode << 32 | ifindex


class ProgramSession:
    """What every session has in common: one loaded program, its perf events, the device filter."""

    def __init__(self, loader: bpf.Loader) -> None:
        self._loader = loader
        self.prog: bpf.Program | None = None
        self._events: list[Event] = []

    def _load(self, source: bpf.ProgramSource, facts: KernelFacts,
              iface_keys: Iterable[tuple[int, int]]) -> bpf.Program:
        self.prog = prog = self._loader(source, facts)
        for ns_inode, ifindex in iface_keys:
            prog.update("iface_filter", IFACE_KEY.pack((ns_inode << 32) | ifindex), b"\x01")
        return prog

    def wait(self, timeout_s: float) -> None:
        if self.prog is not None:
            self.prog.poll(timeout_s)

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def close(self) -> None:
        if self.prog is not None:
            self.prog.close()
            self.prog = None


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


class Clock:
    """Interval ticks against the monotonic clock.

    A tick that comes late (the process was stopped, or starved) is one
    report covering the whole gap, never a burst of near-empty catch-up
    reports counted towards --count.
    """

    def __init__(self, interval_s: float, duration_s: float | None, now_ns: int) -> None:
        self.step_ns = int(interval_s * 1e9)
        self.start_ns = now_ns
        self.next_ns = now_ns + self.step_ns
        self.deadline_ns = now_ns + int(duration_s * 1e9) if duration_s else None

    def wake_ns(self) -> int:
        return self.next_ns if self.deadline_ns is None else min(self.next_ns, self.deadline_ns)

    def tick(self, now_ns: int) -> bool:
        """True when an interval ends at now_ns; schedules the next one."""
        if now_ns < self.next_ns:
            return False
        self.next_ns += self.step_ns
        if self.next_ns <= now_ns:
            self.next_ns = now_ns + self.step_ns
        return True

    def expired(self, now_ns: int) -> bool:
        return self.deadline_ns is not None and now_ns >= self.deadline_ns


def drive(session: Session, sink: Sink, interval_s: float, duration_s: float | None, count: int | None,
          thresholds: Sequence[Threshold] = (), done: Callable[[], bool] | None = None) -> int:
    """Run a session to its end; the exit code says whether a threshold was crossed. `done`: the session
    has what it was asked for (netpath follow's --count packets), which ends the run as `count`."""
    crossed: dict[int, int] = {}

    def judge(snap: Snapshot, whole_run: bool) -> None:
        for i, t in enumerate(thresholds):
            if not (whole_run or t.per_interval):
                continue
            value = t.check(snap)
            if value is not None:
                crossed.setdefault(i, value)

    with SignalStop() as stop:
        try:
            sink.started(session.start())
            clock = Clock(interval_s, duration_s, time.monotonic_ns())
            seq = 0
            while not stop:
                now = time.monotonic_ns()
                if clock.tick(now):
                    seq += 1
                    sink.events(session.events())
                    snap = session.interval(now - clock.start_ns)
                    judge(snap, False)
                    sink.interval(snap, seq)
                    if count is not None and seq >= count:
                        stop.reason = "count"
                        break
                if clock.expired(now):
                    stop.reason = "duration"
                    break
                if done is not None and done():
                    stop.reason = "count"
                    break
                wait_ns = clock.wake_ns() - time.monotonic_ns()
                if wait_ns > 0:
                    session.wait(min(wait_ns / 1e9, 0.1))
            elapsed = time.monotonic_ns() - clock.start_ns
            session.wait(0)  # deliver what is still pending, and count what was lost
            sink.events(session.events())
            final = session.summary(elapsed)
        finally:
            session.close()
    judge(final, True)
    verdicts = [t.verdict(crossed.get(i)) for i, t in enumerate(thresholds)]
    sink.summary(final, stop.reason, verdicts)
    return EXIT_THRESHOLD if crossed else EXIT_OK
