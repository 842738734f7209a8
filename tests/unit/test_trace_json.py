"""The JSON shape of trace stages, from synthetic map readings through the interval accumulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from netpath.collect import hist
from netpath.collect.trace_stats import Accumulator, Reading, stage_rows
from netpath.kernel.facts import KernelFacts
from netpath.model import TraceHealth, TraceSnapshot, Unavailable
from netpath.plan import make_plan
from netpath.render import records, trace_view

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "trace-6.12"
SQ = 10  # socket_queue's index
NAPI = 3


def reading(sq_values: list[int], napi_polls: int, hits: int) -> Reading:
    slots: dict[int, int] = {}
    for v in sq_values:
        slots[hist.slot_of(v)] = slots.get(hist.slot_of(v), 0) + 1
    slots[hist.SUM_SLOT] = sum(sq_values)  # the map's running total, not a count
    return Reading(
        slots={(SQ, 4, 77, 0): slots},
        maxima={(SQ, 4, 77, 0): max(sq_values)},
        napi={(0, 0, 0): {"polls": napi_polls, "work": 2 * napi_polls, "exhausted": 1, "budget": 64,
                          "max_work": 64}},
        hits={"sock:sk_data_ready": hits},
        stats={"lost_rows": 0, "lost_skbs": 0, "slow_sent": 0},
    )


def names(_ns: int, ifindex: int) -> str | None:
    return {4: "veth1"}.get(ifindex)


def test_interval_deltas_and_contract_keys() -> None:
    plan = make_plan(KernelFacts.load(FIXTURE))
    acc = Accumulator()
    acc.step(reading([20_000_000] * 5, 10, 5))
    dists, napi, hits, _stats = acc.step(reading([20_000_000] * 5 + [40_000_000] * 3, 15, 8))
    rows = stage_rows(plan, dists, napi, True, names)
    assert [r.stage for r in rows] == [c.stage.id for c in plan.available]
    sq = records.stage_row(next(r for r in rows if r.stage == "socket_queue"), True, False)
    for key in ("stage", "hook", "method", "count", "p50_ns", "p90_ns", "p99_ns", "max_ns", "buckets"):
        assert key in sq
    assert sq["count"] == 3 and sq["method"] == "raw_tracepoint"
    assert abs(int(sq["p50_ns"]) - 40_000_000) < 0.07 * 40_000_000  # type: ignore[call-overload]
    assert sq["buckets"] == [{"lo_ns": 1 << 25, "hi_ns": 1 << 26, "count": 3}]
    assert (sq["sum_ns"], sq["mean_ns"]) == (120_000_000, 40_000_000)  # exact, unlike the percentiles
    assert sq["breakdown"] == [{"iface": "veth1", "ifindex": 4, "netns": 77, **{k: sq[k] for k in (
        "count", "p50_ns", "p90_ns", "p99_ns", "max_ns", "sum_ns", "mean_ns", "buckets")}}]
    assert hits == {"sock:sk_data_ready": 3}
    napi_row = records.stage_row(next(r for r in rows if r.stage == "napi_poll"), False, False)
    assert napi_row["napi"] == {"polls": 5, "work": 10, "budget": 64, "exhausted": 0, "max_work": 64}
    assert napi_row["count"] == 0
    # the whole run: cumulative counts
    tdists, _tnapi, thits, _ = acc.totals()
    total = stage_rows(plan, tdists, {}, False, names)
    run_sq = records.stage_row(next(r for r in total if r.stage == "socket_queue"), False, False)
    assert (run_sq["count"], run_sq["sum_ns"], run_sq["mean_ns"]) == (8, 220_000_000, 27_500_000)
    assert thits == {"sock:sk_data_ready": 8}


def test_plain_view_fits_80_columns() -> None:
    plan = make_plan(KernelFacts.load(FIXTURE))
    acc = Accumulator()
    dists, napi, hits, _stats = acc.step(reading([20_000_000, 25_000, 900, 3_000_000_000], 1_000_000, 4))
    snap = TraceSnapshot(tuple(stage_rows(plan, dists, napi, True, names)), (
        Unavailable("ip_rcv", "kprobe ip_rcv: kernel built without CONFIG_KPROBES", "ip_rcv"),
        Unavailable("udp_rcv", "kprobe udp_rcv: kernel built without CONFIG_KPROBES", "udp_rcv"),
    ), {"time_squeeze": 12345, "dropped": 3}, TraceHealth(probe_hits=hits), 10**9, per_iface=True, per_cpu=True)
    lines = trace_view.plain_lines(snap, "netpath trace", "socket_queue")
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert any(line.startswith("socket_queue") for line in lines)
    assert any("time_squeeze 12,345" in line for line in lines)
    assert any("not attached: ip_rcv, udp_rcv" in line for line in lines)
    assert trace_view.fmt_ns(20_000_000) == "20.0ms" and trace_view.fmt_ns(999) == "999ns"


@pytest.mark.parametrize("width", [40, 55, 80])
def test_live_table_keeps_stage_and_count_down_to_40_columns(width: int) -> None:
    from rich.console import Console

    plan = make_plan(KernelFacts.load(FIXTURE))
    dists, napi, hits, _stats = Accumulator().step(reading([20_000_000] * 123_456, 10, 4))
    rows = tuple(stage_rows(plan, dists, napi, False, names))
    snap = TraceSnapshot(rows, (), {}, TraceHealth(probe_hits=hits), 10**9)
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(trace_view.trace_table(snap, "netpath trace", None, width))
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    assert any(line.lstrip().startswith("socket_q") and "123,456" in line for line in lines)
