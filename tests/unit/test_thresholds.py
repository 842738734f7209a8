"""--fail-on-latency and duration parsing: numbers out, one-line BadInput for anything else."""

from __future__ import annotations

import pytest

from netpath.errors import EXIT_USAGE, BadInput
from netpath.model import Latency, StageRow, TraceHealth, TraceSnapshot
from netpath.thresholds import parse_duration, parse_fail_on_latency


@pytest.mark.parametrize(("text", "ns"), [("10ms", 10_000_000), ("500us", 500_000), ("1s", 1_000_000_000),
                                          ("250ns", 250), ("1.5ms", 1_500_000), (" 2 s ", 2_000_000_000)])
def test_durations(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["10", "ms", "-1ms", "0ms", "10 min", "1e3ms", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(BadInput) as exc:
        parse_duration(text)
    assert exc.value.exit_code == EXIT_USAGE
    assert repr(text) in str(exc.value) and "\n" not in str(exc.value)


def test_fail_on_latency() -> None:
    t = parse_fail_on_latency("socket_queue:p99:10ms")
    assert (t.stage, t.pct, t.limit_ns) == ("socket_queue", "p99", 10_000_000)
    assert parse_fail_on_latency("stack_total:MAX:1s").pct == "max"


@pytest.mark.parametrize(("spec", "needle"), [
    ("socket_queue:p99", "STAGE:PCT:DURATION"),
    ("sockets:p99:10ms", "unknown stage 'sockets'"),
    ("socket_queue:p42:10ms", "'p42'"),
    ("socket_queue:p99:10", "duration"),
    ("a:b:c:d", "STAGE:PCT:DURATION"),
])
def test_bad_fail_on_latency(spec: str, needle: str) -> None:
    with pytest.raises(BadInput) as exc:
        parse_fail_on_latency(spec)
    msg = str(exc.value)
    assert needle in msg and repr(spec) in msg and "\n" not in msg


def snap(count: int, p99_ns: int) -> TraceSnapshot:
    row = StageRow("socket_queue", "sock:sk_data_ready", "raw_tracepoint", Latency(count, 1, 2, p99_ns, p99_ns))
    return TraceSnapshot((row,), (), {}, TraceHealth(), 10**9)


def test_crossed() -> None:
    t = parse_fail_on_latency("socket_queue:p99:10ms")
    assert t.check(snap(3, 11_000_000)) == 11_000_000
    assert t.check(snap(3, 10_000_000)) is None
    assert t.check(snap(0, 10**12)) is None


def test_cli_bad_spec_is_exit_2_before_any_bpf(capsys: pytest.CaptureFixture[str]) -> None:
    from netpath.cli.main import main

    assert main(["trace", "--fail-on-latency", "socket_queue:p42:10ms"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "p42" in err and "Traceback" not in err
    assert main(["trace", "--slower", "fast"]) == EXIT_USAGE
    assert "'fast'" in capsys.readouterr().err
