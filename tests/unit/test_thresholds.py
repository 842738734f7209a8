"""--fail-on-latency and duration parsing: numbers out, one-line BadInput for anything else."""

from __future__ import annotations

import pytest

from netpath.errors import EXIT_USAGE, BadInput
from netpath.thresholds import crossed, parse_duration, parse_fail_on_latency


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


def test_crossed() -> None:
    t = parse_fail_on_latency("socket_queue:p99:10ms")
    stages = [{"stage": "socket_queue", "count": 3, "p50_ns": 1, "p90_ns": 2, "p99_ns": 11_000_000, "max_ns": 1}]
    assert crossed(t, stages) == 11_000_000
    stages[0]["p99_ns"] = 10_000_000
    assert crossed(t, stages) is None
    assert crossed(t, [{"stage": "socket_queue", "count": 0, "p99_ns": 10**12}]) is None


def test_cli_bad_spec_is_exit_2_before_any_bpf(capsys: pytest.CaptureFixture[str]) -> None:
    from netpath.cli.main import main

    assert main(["trace", "--fail-on-latency", "socket_queue:p42:10ms"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "p42" in err and "Traceback" not in err
    assert main(["trace", "--slower", "fast"]) == EXIT_USAGE
    assert "'fast'" in capsys.readouterr().err
