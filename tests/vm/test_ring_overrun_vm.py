"""netpath doctor's nic-ring-overrun provoked for real (issue 31) on the lab's rtl8139 pair (vm/run.sh
VM_RTL8139, on by default; the guest drives it with 8139cp) and held to the driver's own counters read in
the same window.

Why rtl8139: it is the qemu 7.2 NIC that drops a frame for a full receive ring and counts it exactly.
virtio-net and e1000e never drop it (qemu holds the frame back until the guest refills the ring), and
e1000 counts it in registers qemu never clears on read (vm/README.md). In C+ mode qemu's
rtl8139_can_receive always accepts, and rtl8139_do_receive drops a frame that finds its next descriptor
owned by the host, adding one to the MissPkt tally counter and to RxMissed (hw/net/rtl8139.c). 8139cp
reports MissPkt as `ethtool -S` rx_fifo (cp_get_ethtool_stats: the chip's tally dump, absolute) and adds
RxMissed, which it clears by writing, into the link's rx_missed_errors (__cp_get_stats). Its one
64-descriptor ring cannot be grown (no set_ringparam), and a pktgen flood under TCG overruns it.

One doctor window (`netpath doctor --netns B`, stopped with SIGINT once the flood is over) sees N_FLOOD
frames from A: every one is either delivered (rx_ok) or dropped for want of a descriptor (rx_fifo), and
the finding's evidence equals both counters' deltas over the window.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import vmlab
from netpath_testlib import NetpathRun

FLOOD_PORT = 9
# MissPkt is a 16-bit tally counter (qemu's RTL8139TallyCounters, 8139cp's le16 rx_fifo): a few floods of
# this size per boot stay far from its wrap
N_FLOOD = 10000


def _missed(p: vmlab.NetnsPair) -> int:
    """The link's rx_missed_errors (dev_get_stats: 8139cp's cp_get_stats reads and clears RxMissed)."""
    return int(p.run(p.b, ["cat", f"/sys/class/net/{p.if_b}/statistics/rx_missed_errors"]).stdout)


def _truth(p: vmlab.NetnsPair) -> dict[str, Any]:
    return {"ethtool": vmlab.ethtool_stats(p, p.b, p.if_b), "rx_missed": _missed(p)}


@pytest.fixture(scope="module")
def nics() -> Iterator[vmlab.NetnsPair]:
    with vmlab.rtl8139_pair() as pair:
        yield pair


@pytest.fixture(scope="module")
def window(nics: vmlab.NetnsPair) -> Iterator[dict[str, Any]]:
    p = nics
    drv = p.run(p.b, ["ethtool", "-i", p.if_b]).stdout
    assert "driver: 8139cp" in drv, drv
    mac_b = json.loads(subprocess.run(["ip", "-n", p.b, "-j", "link", "show", p.if_b], capture_output=True,
                                      text=True, check=True).stdout)[0]["address"]
    run = NetpathRun(["doctor", "--netns", p.b, "--duration", "900", "--json"])
    try:
        run.wait_start(timeout=400)  # TCG: programs to compile
        time.sleep(1)
        before = _truth(p)
        vmlab.pktgen(p, p.a, p.if_a, p.addr_b, mac_b, N_FLOOD, FLOOD_PORT)
        time.sleep(2)  # the last frames through B's NAPI
        after = _truth(p)
        run.proc.send_signal(2)
        rc, records, err = run.finish(timeout=400)
        assert rc == 0, err
    finally:
        if run.proc.poll() is None:  # a failure above: no doctor left behind
            run.proc.kill()
            run.proc.wait()
    findings = [r for r in records if r["type"] == "finding"]
    for f in findings:  # the numbers seen, for the record (pytest -s)
        print(f"\n{f['id']} {f['severity']}: {f['title']}\n  " + "\n  ".join(
            f"{e['value']} = {e['counter']}" for e in f["evidence"]))
    yield {"findings": findings, "before": before, "after": after}


def _ethtool(w: dict[str, Any], name: str) -> int:
    return w["after"]["ethtool"][name] - w["before"]["ethtool"][name]


def _ring(w: dict[str, Any]) -> dict[str, Any]:
    mine = [f for f in w["findings"] if f["id"] == "nic-ring-overrun"]
    assert len(mine) == 1, [(f["id"], f["title"]) for f in w["findings"]]
    return mine[0]


def test_every_flood_frame_is_delivered_or_counted_missed(window: dict[str, Any]) -> None:
    dropped = _ethtool(window, "rx_fifo")
    assert _ethtool(window, "rx_ok_phys") == N_FLOOD  # the NIC saw them all
    assert _ethtool(window, "rx_ok") + dropped == N_FLOOD
    assert dropped > 0, "the flood did not overrun the 64-descriptor ring"
    assert window["after"]["rx_missed"] - window["before"]["rx_missed"] == dropped
    assert window["after"]["ethtool"]["rx_fifo"] < 65536  # no wrap of the 16-bit tally in this boot


def test_nic_ring_overrun_equals_the_drivers_counters(nics: vmlab.NetnsPair, window: dict[str, Any]) -> None:
    dropped = _ethtool(window, "rx_fifo")
    f = _ring(window)
    assert f["where"]["iface"] == nics.if_b
    assert "(8139cp)" in f["title"] and "receive ring overflows" in f["title"]
    # the NIC's counters (signals of a cause the finding folds in, time_squeeze, follow them)
    nic = {e["counter"]: e["value"] for e in f["evidence"] if e["counter"].startswith(("ethtool", "ip -s link"))}
    assert nic == {"ethtool -S rx_fifo": dropped, "ip -s link rx_missed": dropped}, f["evidence"]
    assert f["severity"] in ("warn", "crit")


def test_nic_ring_overrun_knobs_fit_8139cp(nics: vmlab.NetnsPair, window: dict[str, Any]) -> None:
    f = _ring(window)
    knobs = {k["name"]: k for k in f["knobs"]}
    ring = knobs[f"ethtool -G {nics.if_b} rx"]
    assert ring["value"] == "64 (max 64)"  # 8139cp's CP_RX_RING_SIZE, fixed
    assert "it is at the maximum" in ring["advice"] and "rps_cpus" in ring["advice"], ring  # one queue: RPS
    assert "net.core.netdev_budget" in knobs
    assert "one fixed 64-descriptor ring" in f["why"]
