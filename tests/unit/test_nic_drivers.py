"""nic-ring-overrun's per-driver table on `ethtool -S` outputs (tests/unit/data/ethtool-S): each driver's
own counters are collected (collect/nic_counters.classify_ethtool, what `netpath drops` and the doctor
read), classified by the driver `ethtool -i` names, and the advice follows what they count."""

from __future__ import annotations

from pathlib import Path

import pytest

from netpath.collect.nic_counters import classify_ethtool, parse_ethtool_text
from netpath.diagnose.nic import DRIVERS, classify
from netpath.diagnose.rules import Observation, diagnose
from netpath.model import Counter, DropHealth, DropSnapshot, NicSettings, Settings, Window

DATA = Path(__file__).parent / "data" / "ethtool-S"


def ring_finding(driver: str, fixture: str):  # type: ignore[no-untyped-def]
    stats = parse_ethtool_text((DATA / fixture).read_text())
    counters = [Counter(source, name, value, iface) for (source, name, iface, _cpu), value
                in classify_ethtool("eth0", stats).items() if value]  # a window that started at zero
    snap = DropSnapshot([], counters, DropHealth(), 0, 10_000_000_000)
    nic = NicSettings("eth0", 1024, 8192, driver=driver)
    found = diagnose(Observation(snap, None, Window(rx_packets={"eth0": 10_000_000}),
                                 Settings(1, "host", {"net.core.netdev_budget": "300"}, nics=(nic,)), 10_000_000_000))
    ring = [f for f in found if f.id == "nic-ring-overrun"]
    return ring[0] if ring else None


def evidence(f) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {e.counter.removeprefix("ethtool -S "): e.value for e in f.evidence}


def knob_names(f) -> list[str]:  # type: ignore[no-untyped-def]
    return [k.name for k in f.knobs]


CASES = [
    ("mlx5_core", "mlx5_core.txt", {"rx_out_of_buffer": 20412, "rx_discards_phy": 3305}, {"ring", "port"}),
    ("ixgbe", "ixgbe.txt", {"rx_no_dma_resources": 7781, "rx_missed_errors": 512}, {"ring", "port"}),
    ("igb", "igb.txt", {"rx_no_buffer_count": 644}, {"ring"}),
    ("e1000", "e1000.txt", {"rx_no_buffer_count": 214699, "rx_missed_errors": 214699}, {"ring", "port"}),
    ("e1000e", "e1000e.txt", {"rx_missed_errors": 91, "rx_no_buffer_count": 35}, {"ring", "port"}),
    ("i40e", "i40e.txt", {"port.rx_dropped": 15006}, {"ring"}),
    ("ice", "ice.txt", {"port.rx_dropped": 44210}, {"ring"}),
    ("ena", "ena.txt", {"bw_in_allowance_exceeded": 9120, "pps_allowance_exceeded": 312}, {"policer"}),
    ("bnxt_en", "bnxt_en.txt", {"[0]: rx_discards": 2301, "[1]: rx_discards": 1877, "rx_total_discard_pkts": 4178},
     {"ring"}),
    ("virtio_net", "virtio_net-6.1-drops.txt", {"rx_queue_0_drops": 1377}, {"ring"}),
    ("8139cp", "8139cp.txt", {"rx_fifo": 17436}, {"ring"}),
]


@pytest.mark.parametrize(("driver", "fixture", "want", "kinds"), CASES, ids=[c[0] for c in CASES])
def test_each_driver_s_own_drop_counters(driver: str, fixture: str, want: dict[str, int], kinds: set[str]) -> None:
    f = ring_finding(driver, fixture)
    assert f is not None
    assert evidence(f) == want
    assert {classify(driver, name).kind for name in want} == kinds  # type: ignore[union-attr]
    assert f"({driver})" in f.title
    if kinds == {"policer"}:
        assert "allowance" in f.title and knob_names(f) == ["the instance's network allowance"]
    else:
        assert knob_names(f)[0] == "ethtool -G eth0 rx" and ("ethtool -L eth0" in knob_names(f)) == ("port" in kinds)


def test_counters_of_other_meanings_are_not_ring_overruns() -> None:
    """mlx5's rx_buffer_passed_thres_phy counts packets over a buffer threshold, not drops; ixgbe's
    fdir_overflow and rx_crc_errors are something else: none of them is in the ring finding."""
    assert classify("mlx5_core", "rx_buffer_passed_thres_phy") is None
    assert classify("ixgbe", "rx_crc_errors") is None and classify("ixgbe", "fdir_overflow") is None


def test_the_recorded_virtio_net_without_drops_has_no_finding() -> None:
    assert ring_finding("virtio_net", "virtio_net-6.18.txt") is None


def test_an_unknown_driver_falls_back_to_names_that_say_missed_or_no_buffer() -> None:
    assert classify("newnic", "rx_missed_packets") is not None and classify("newnic", "rx_dropped") is None
    assert classify("mlx5_core", "rx_missed_packets") is None  # a known driver: only its table


def test_every_driver_in_the_table_has_a_fixture() -> None:
    assert {c[0] for c in CASES} == set(DRIVERS)
