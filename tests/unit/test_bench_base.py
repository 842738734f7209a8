"""make bench's untraced base: each round opens and closes with an untraced run, and ratios are to their mean."""
from __future__ import annotations

from typing import Any

from bench import suite, tools


def run(rnd: int, variant: str, pps: float | None, **extra: Any) -> dict[str, Any]:
    return {"round": rnd, "workload": "udp", "variant": variant, "pps": pps, "bpf_stats": "off", **extra}


def test_a_traced_run_is_measured_against_the_mean_of_the_opening_and_closing_untraced_runs() -> None:
    recs = [run(0, "untraced", 200_000.0), run(0, "netpath export", 171_000.0, pps_stats_on=150_000.0),
            run(0, "untraced", 180_000.0, bracket="closing")]
    suite.bracket_ratios(recs)
    assert suite.untraced_base(recs) == 190_000.0
    assert recs[1]["ratio"] == 0.9
    assert recs[1]["ratio_stats_on"] == round(150_000 / 190_000, 4)


def test_a_round_from_before_the_closing_run_keeps_its_single_base() -> None:
    assert suite.untraced_base([run(3, "untraced", 150_000.0), run(3, "netpath trace", 140_000.0)]) == 150_000.0
    assert suite.untraced_base([run(3, "untraced", None), run(3, "netpath trace", 140_000.0)]) is None


def test_the_untraced_row_counts_one_run_a_round_and_the_ratios_use_both() -> None:
    active = [tools.Variant("untraced", "untraced"), tools.Variant("netpath export", "netpath")]
    runs = []
    for rnd, (opening, traced, closing) in enumerate([(200_000.0, 171_000.0, 180_000.0),
                                                      (100_000.0, 99_000.0, 120_000.0),
                                                      (150_000.0, 147_000.0, 150_000.0)]):
        runs += [run(rnd, "untraced", opening), run(rnd, "netpath export", traced),
                 run(rnd, "untraced", closing, bracket="closing")]
    rows = {r["variant"]: r for r in suite.aggregate(runs, active)["throughput"] if r["workload"] == "udp"}
    assert rows["untraced"]["rounds"] == 3
    assert rows["untraced"]["pps_median"] == 150_000.0
    assert rows["netpath export"]["ratio_min_max"] == [0.9, 0.98]
    assert rows["netpath export"]["ratio_median"] == 0.9
