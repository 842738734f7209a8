"""Histogram slots (twin of np_slot in bpf/trace_common.c), percentiles and log2 buckets."""

from __future__ import annotations

import random
import re

import pytest

from netpath import contract
from netpath.collect import hist


def c_slot(v: int) -> int:
    """bpf/trace_common.c np_slot(), transcribed: np_log2 is floor(log2)."""
    if v < 8:
        return v
    lg = v.bit_length() - 1
    return (lg - 2) * 8 + ((v >> (lg - 3)) & 7)


@pytest.mark.parametrize("v", [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 1000, 20_000_000, 2**40 + 5, 2**63 + 1])
def test_slot_matches_c_and_range_contains_value(v: int) -> None:
    s = hist.slot_of(v)
    assert s == c_slot(v)
    low, high = hist.slot_range(s)
    assert low <= v < high
    assert s < hist.MAX_SLOT


def test_sum_slot_is_above_every_count_slot_and_matches_the_c() -> None:
    c_text = contract.c_prelude()  # the C gets both numbers from the contract
    c_defines = dict(re.findall(r"^#define\s+(SUM_SLOT|NSLOTS)\s+(\d+)", c_text, re.M))
    assert int(c_defines["SUM_SLOT"]) == hist.SUM_SLOT < int(c_defines["NSLOTS"])
    assert hist.slot_of(2**64 - 1) < hist.SUM_SLOT


def test_slots_are_contiguous_and_at_most_12_5_percent_wide() -> None:
    prev_high = 0
    for s in range(0, 8 * 40):
        low, high = hist.slot_range(s)
        assert low == prev_high
        prev_high = high
        if low >= 8:
            assert (high - low) / low <= 0.125


@pytest.mark.parametrize("d_ms", [20, 100])
def test_percentile_of_a_constant_delay_is_within_7_percent(d_ms: int) -> None:
    v = d_ms * 1_000_000
    slots = {hist.slot_of(v): 10}
    p50 = hist.percentile(slots, 50)
    assert abs(p50 - v) / v < 0.07


def test_percentiles_of_a_spread_are_close_and_capped_by_max() -> None:
    rng = random.Random(7)
    values = sorted(rng.randint(1_000, 1_000_000) for _ in range(20_000))
    slots: dict[int, int] = {}
    for v in values:
        slots[hist.slot_of(v)] = slots.get(hist.slot_of(v), 0) + 1
    for pct in (50, 90, 99):
        exact = values[int(len(values) * pct / 100) - 1]
        assert abs(hist.percentile(slots, pct, values[-1]) - exact) / exact < 0.07
    assert hist.percentile(slots, 100, values[-1]) <= values[-1]
    assert hist.percentile({}, 50) == 0


def test_log2_buckets() -> None:
    slots = {hist.slot_of(1): 2, hist.slot_of(3): 1, hist.slot_of(1500): 4, hist.slot_of(1900): 1}
    assert hist.log2_buckets(slots) == [
        {"lo_ns": 0, "hi_ns": 2, "count": 2},
        {"lo_ns": 2, "hi_ns": 4, "count": 1},
        {"lo_ns": 1024, "hi_ns": 2048, "count": 5},
    ]
