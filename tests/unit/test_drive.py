"""The one loop every command runs: intervals, --count/--duration, signals, thresholds, late ticks."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from netpath.collect.session import Beside, Clock, drive
from netpath.errors import EXIT_OK, EXIT_THRESHOLD, MissingCapability
from netpath.model import DropHealth, DropSnapshot, DropsStart, Filters, TraceHealth, TraceSnapshot
from netpath.thresholds import DropsThreshold, parse_fail_on_latency


class ScriptedSession:
    """Snapshots with a growing total; records the calls the driver makes."""

    def __init__(self, per_interval: int = 10, on_interval=None) -> None:
        self.per_interval = per_interval
        self.on_interval = on_interval
        self.calls: list[str] = []
        self.total = 0

    def start(self) -> DropsStart:
        self.calls.append("start")
        return DropsStart(kernel="6.18", headers="shim", attached=(), unavailable=(), filters=Filters())

    def wait(self, timeout_s: float) -> None:
        self.calls.append("wait0" if timeout_s == 0 else "wait")

    def events(self):
        return []

    def interval(self, elapsed_ns: int) -> DropSnapshot:
        self.calls.append("interval")
        self.total += self.per_interval
        if self.on_interval:
            self.on_interval()
        return DropSnapshot([], [], DropHealth(), self.per_interval, elapsed_ns)

    def summary(self, elapsed_ns: int) -> DropSnapshot:
        self.calls.append("summary")
        return DropSnapshot([], [], DropHealth(), self.total, elapsed_ns)

    def close(self) -> None:
        self.calls.append("close")


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def started(self, start):
        self.seen.append(("start",))

    def events(self, events):
        pass

    def interval(self, snap, seq):
        self.seen.append(("interval", seq))

    def summary(self, snap, stop_reason, verdicts):
        self.seen.append(("summary", stop_reason, snap.total, [(v.crossed, v.value) for v in verdicts]))


def test_count_stops_after_n_intervals_then_summarises_and_closes():
    session, sink = ScriptedSession(), Recorder()
    assert drive(session, sink, 0.05, None, 3) == EXIT_OK
    assert sink.seen == [("start",), ("interval", 1), ("interval", 2), ("interval", 3), ("summary", "count", 30, [])]
    assert session.calls[-3:] == ["wait0", "summary", "close"]  # pending events are delivered before the summary


def test_duration_stops_and_reports_elapsed():
    sink = Recorder()
    drive(ScriptedSession(), sink, 0.05, 0.12, None)
    assert sink.seen[-1][1] == "duration"
    assert [s for s in sink.seen if s[0] == "interval"] == [("interval", 1), ("interval", 2)]


def test_sigterm_still_summarises():
    sink = Recorder()
    session = ScriptedSession(on_interval=lambda: os.kill(os.getpid(), signal.SIGTERM))
    drive(session, sink, 0.05, None, None)
    assert sink.seen[-1][1] == "SIGTERM" and session.calls[-1] == "close"


def test_drops_threshold_reads_the_whole_run():
    sink = Recorder()
    assert drive(ScriptedSession(), sink, 0.02, None, 3, [DropsThreshold(25)]) == EXIT_THRESHOLD
    assert sink.seen[-1] == ("summary", "count", 30, [(True, 30)])
    sink = Recorder()
    assert drive(ScriptedSession(), sink, 0.02, None, 2, [DropsThreshold(25)]) == EXIT_OK
    assert sink.seen[-1][3] == [(False, None)]


def test_latency_threshold_reads_trace_snapshots_not_json():
    from netpath.model import Latency, StageRow

    t = parse_fail_on_latency("socket_queue:p99:10ms")
    row = StageRow("socket_queue", "h", "raw_tracepoint", Latency(count=3, p99_ns=12_000_000, max_ns=13_000_000))
    snap = TraceSnapshot((row,), (), {}, TraceHealth(), 10**9)
    assert t.check(snap) == 12_000_000
    quiet = TraceSnapshot((StageRow("socket_queue", "h", "raw_tracepoint", Latency()),), (), {}, TraceHealth(), 1)
    assert t.check(quiet) is None
    v = t.verdict(12_000_000)
    assert v.crossed and v.spec == {"spec": "socket_queue:p99:10ms", "stage": "socket_queue", "percentile": "p99",
                                    "limit_ns": 10_000_000}


def test_a_late_tick_is_one_interval_not_a_burst_of_catch_up_intervals():
    """After SIGSTOP/SIGCONT (or starvation) the next report covers the gap; --count is not eaten up."""
    clock = Clock(1.0, None, 0)
    assert not clock.tick(999_999_999)
    assert clock.tick(1_000_000_000)
    assert clock.tick(9_500_000_000)  # stopped for 8.5 s
    assert not clock.tick(9_600_000_000)  # not another catch-up report right away
    assert clock.next_ns == 10_500_000_000
    assert clock.tick(10_500_000_000)


def test_duration_deadline():
    clock = Clock(1.0, 2.5, 0)
    assert clock.wake_ns() == 1_000_000_000
    assert not clock.expired(2_499_999_999) and clock.expired(2_500_000_000)


def test_beside_runs_a_start_on_its_own_thread_and_hands_back_its_result_or_error() -> None:
    main = threading.get_ident()
    assert Beside(threading.get_ident).result() != main

    def refused() -> int:
        raise MissingCapability("no BPF here")

    pending = Beside(refused)
    pending.wait()
    with pytest.raises(MissingCapability, match="no BPF here"):
        pending.result()
