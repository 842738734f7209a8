"""netpath doctor against a real driver: the receive-path rules that need a NIC (issue 31), provoked for
real on the lab's two virtio-net NICs (vm/run.sh joins them with a qemu hub) and held to the kernel's
own counters read in the same window: `ethtool -S`, /proc/net/softnet_stat, /proc/softirqs.

One doctor window (`netpath doctor --netns B`, stopped with SIGINT once the traffic is over) sees:
- an XDP program on B's NIC (tests/vm/xdp_rx_test.c) dropping N_DROP datagrams and aborting N_ABORT:
  xdp-drop, evidence equal to the driver's xdp_drops and the xdp:xdp_exception hits;
- a pktgen flood of N_FLOOD frames (sent by kpktgend_1) into B with net.core.netdev_budget=4, both
  NICs' receive IRQs on CPU 0 and no RPS, while a busy loop holds CPU 0 and B's raw PREROUTING holds
  N_RULES iptables rules the flood walks past (a host with a large rule set): napi-budget-squeeze
  (softnet time_squeeze), rx-imbalance (softnet processed: CPU 0 does it all) and softirq-wait (NET_RX
  runs deferred to ksoftirqd wait behind the busy loop; its runs equal /proc/softirqs NET_RX).

Why the rules: softirq-wait needs NET_RX runs that wait. __do_softirq hands pending work to ksoftirqd
once it has restarted MAX_SOFTIRQ_RESTART times or run past MAX_SOFTIRQ_TIME (kernel/softirq.c), and the
handed-over run starts at ksoftirqd's turn behind the busy loop or at the next tick's irq_exit. On 6.1
every later raise waits for ksoftirqd too (ksoftirqd_running() in invoke_softirq); 6.5 reverted that
("Revert 'softirq: Let ksoftirqd do its job'"), so on 6.12 only the handed-over runs wait, and only while
NAPI never runs dry. A receiver as fast as the sender (no rules) left about 2% of 6.12's runs waiting 1 ms
or more, against the rule's p99 threshold; 100 rules slow each packet enough that the ring stays full
through the flood and 15% did (68 of 444; p99 8.9 ms), whatever the host's load.

nic-ring-overrun cannot be provoked here: virtio-net's guest driver has no counter for a full receive
ring. With no free descriptor the device cannot place the frame: qemu's virtio-net says it cannot receive
and qemu's net layer queues the frame (flow-controlling the sending NIC) or drops it on the host's side,
where the guest sees nothing; the driver's rxN_drops counts only packets it failed to build (and, see
below, XDP's drops). What is tested instead is the half
a real host gets wrong: virtio_net counts every XDP drop in rxN_drops too (drivers/net/virtio_net.c:
err_xdp counts xdp_drops and falls through to drops++), and doctor must not call those a ring overrun.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vmlab
from netpath_testlib import NetpathRun, run_netpath

DROP_PORT, ABORT_PORT, FLOOD_PORT = 7101, 7102, 9
N_DROP, N_ABORT, N_FLOOD = 300, 100, 20000
CPU_IRQ, CPU_SENDER = 0, 1
BUDGET = 4
N_RULES = 100
HOG = "while True:\n    pass\n"


def _softirqs_net_rx() -> list[int]:
    """/proc/softirqs NET_RX per CPU: kstat_incr_softirqs_this_cpu, once per NET_RX run (kernel/softirq.c)."""
    for line in Path("/proc/softirqs").read_text().splitlines():
        if line.split(":")[0].strip() == "NET_RX":
            return [int(x) for x in line.split(":", 1)[1].split()]
    raise AssertionError("no NET_RX line in /proc/softirqs")


def _rx_dropped(p: vmlab.RealNics) -> int:
    """The link's rx_dropped as `ip -s link` prints it (ndo_get_stats64: virtnet_stats)."""
    link = json.loads(subprocess.run(["ip", "-n", p.b, "-j", "-s", "link", "show", p.if_b], capture_output=True,
                                     text=True, check=True).stdout)[0]
    return int(link["stats64"]["rx"]["dropped"])


def _slow_receive_path(p: vmlab.RealNics) -> None:
    """N_RULES rules in B's raw PREROUTING that every flood frame is checked against and none matches."""
    rules = "".join(f"-A PREROUTING -p udp --dport {20000 + i} -j ACCEPT\n" for i in range(N_RULES))
    subprocess.run(["ip", "netns", "exec", p.b, "iptables-restore"], input=f"*raw\n{rules}COMMIT\n", text=True,
                   check=True, capture_output=True)


def _truth(p: vmlab.RealNics) -> dict[str, Any]:
    return {"ethtool": vmlab.ethtool_stats(p, p.b, p.if_b), "softnet": vmlab.softnet(),
            "net_rx": _softirqs_net_rx(), "rx_dropped": _rx_dropped(p)}


@pytest.fixture(scope="module")
def nics() -> Iterator[vmlab.RealNics]:
    with vmlab.realnic_pair(subnet=251) as pair:
        assert pair.input_a and pair.input_b, "no virtio input IRQ lines in /proc/interrupts"
        yield pair


@pytest.fixture(scope="module")
def window(nics: vmlab.RealNics, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    p = nics
    saved = tmp_path_factory.mktemp("doctor") / "virtio.window.json"
    budget = Path("/proc/sys/net/core/netdev_budget")
    old_budget = budget.read_text().strip()
    mac_b = json.loads(subprocess.run(["ip", "-n", p.b, "-j", "link", "show", p.if_b], capture_output=True,
                                      text=True, check=True).stdout)[0]["address"]
    for irq in p.input_a + p.input_b:
        Path(f"/proc/irq/{irq}/smp_affinity_list").write_text(str(CPU_IRQ))
    # x86 moves an MSI's affinity at its next interrupt: take one on each NIC first
    vmlab.send_udp(p, p.a, p.addr_b, FLOOD_PORT, 3)
    vmlab.send_udp(p, p.b, p.addr_a, FLOOD_PORT, 3)
    vmlab.attach_rx_programs(p, p.b, p.if_b, DROP_PORT, ABORT_PORT)
    hog: subprocess.Popen[bytes] | None = None
    run: NetpathRun | None = None
    try:
        run = NetpathRun(["doctor", "--netns", p.b, "--duration", "900", "--json", "--save", str(saved)])
        run.wait_start(timeout=400)  # TCG: two programs to compile
        time.sleep(1)
        before = _truth(p)
        budget.write_text(str(BUDGET))  # read back by the doctor at the end of the window: kept until then
        vmlab.send_udp(p, p.a, p.addr_b, DROP_PORT, N_DROP, burst=50, pause=0.02)
        vmlab.send_udp(p, p.a, p.addr_b, ABORT_PORT, N_ABORT, burst=50, pause=0.02)
        _slow_receive_path(p)
        hog = subprocess.Popen(["taskset", "-c", str(CPU_IRQ), sys.executable, "-c", HOG])
        vmlab.pktgen(p, p.a, p.if_a, p.addr_b, mac_b, N_FLOOD, FLOOD_PORT, cpu=CPU_SENDER)
        time.sleep(1)
        hog.kill()
        hog.wait()
        time.sleep(1)
        after = _truth(p)
        run.proc.send_signal(2)
        rc, records, err = run.finish(timeout=400)
        assert rc == 0, err
        replay = run_netpath("doctor", "--load", str(saved), "--json", timeout=120)
    finally:
        if hog is not None and hog.poll() is None:
            hog.kill()
        if run is not None and run.proc.poll() is None:  # a failure above: no doctor left behind
            run.proc.kill()
            run.proc.wait()
        budget.write_text(old_budget)
        subprocess.run(["ip", "netns", "exec", p.b, "iptables", "-t", "raw", "-F"], check=False, capture_output=True)
        vmlab.detach_rx_programs(p, p.b, p.if_b)
    findings = [r for r in records if r["type"] == "finding"]
    for f in findings:  # the numbers seen, for the record (pytest -s)
        print(f"\n{f['id']} {f['severity']}: {f['title']}\n  " + "\n  ".join(
            f"{e['value']} = {e['counter']}" for e in f["evidence"]))
    assert replay.returncode == rc, replay.stderr
    assert [json.loads(x) for x in replay.stdout.splitlines() if '"finding"' in x] == findings
    corpus = os.environ.get("NETPATH_DOCTOR_CORPUS")  # as the live tier's: tests/unit/data/doctor-windows
    if corpus:
        case = f"virtio-nic-{os.uname().release.split('.', 2)[0]}.{os.uname().release.split('.', 2)[1]}"
        shutil.copyfile(saved, Path(corpus) / f"{case}.window.json")
        (Path(corpus) / f"{case}.findings.jsonl").write_text(
            "".join(json.dumps(f, sort_keys=True) + "\n" for f in findings))
    yield {"findings": findings, "before": before, "after": after}


def _one(w: dict[str, Any], rule: str) -> dict[str, Any]:
    mine = [f for f in w["findings"] if f["id"] == rule]
    assert len(mine) == 1, [(f["id"], f["title"]) for f in w["findings"]]
    return mine[0]


def _evidence(f: dict[str, Any], counter: str) -> int:
    return next(e["value"] for e in f["evidence"] if e["counter"] == counter)


def _knob(f: dict[str, Any], name: str) -> str | None:
    return next(k["value"] for k in f["knobs"] if k["name"] == name)


def _ethtool(w: dict[str, Any], name: str) -> int:
    return w["after"]["ethtool"][name] - w["before"]["ethtool"].get(name, 0)


def _softnet(w: dict[str, Any], col: int) -> list[int]:
    return [a[col] - b[col] for a, b in zip(w["after"]["softnet"], w["before"]["softnet"], strict=True)]


def _queue_names(w: dict[str, Any]) -> tuple[str, str]:
    """virtio_net's per-queue names: rx0_drops / rx0_xdp_drops (6.12), rx_queue_0_... (6.1)."""
    stats = w["after"]["ethtool"]
    prefix = "rx0_" if "rx0_drops" in stats else "rx_queue_0_"
    return f"{prefix}drops", f"{prefix}xdp_drops"


def test_xdp_drop_equals_the_drivers_xdp_counters(nics: vmlab.RealNics, window: dict[str, Any]) -> None:
    drops, xdp_drops = _queue_names(window)
    f = _one(window, "xdp-drop")
    assert f["where"]["iface"] == nics.if_b
    assert _ethtool(window, xdp_drops) == N_DROP + N_ABORT  # an aborted program's packet is an XDP drop too
    assert _evidence(f, f"ethtool -S {xdp_drops}") == N_DROP + N_ABORT
    assert _evidence(f, "tracepoint xdp:xdp_exception xdp_exception") == N_ABORT
    assert f["severity"] == "warn"  # XDP_ABORTED: the program failed
    # the driver counts the same packets in its drop counter; the finding says so, with the number
    assert _ethtool(window, drops) == N_DROP + N_ABORT
    assert _evidence(f, f"ethtool -S {drops}") == N_DROP + N_ABORT
    assert window["after"]["rx_dropped"] - window["before"]["rx_dropped"] == N_DROP + N_ABORT
    assert _evidence(f, "ip -s link rx_dropped") == N_DROP + N_ABORT


def test_xdp_drops_in_virtio_rx_drops_are_not_a_ring_overrun(window: dict[str, Any]) -> None:
    ids = [f["id"] for f in window["findings"]]
    assert "nic-ring-overrun" not in ids
    assert "unexplained-drops" not in ids  # nor are they drops nobody explains


def test_napi_budget_squeeze_equals_softnet_time_squeeze(window: dict[str, Any]) -> None:
    squeeze, processed = _softnet(window, 2), _softnet(window, 0)
    f = _one(window, "napi-budget-squeeze")
    assert sum(squeeze) > 0
    assert _evidence(f, "/proc/net/softnet_stat time_squeeze (column 3)") == sum(squeeze)
    for cpu, s in enumerate(squeeze):
        if s:
            assert _evidence(f, f"/proc/net/softnet_stat time_squeeze, CPU {cpu}") == s
    on_time = sum(max(s - p // BUDGET, 0) for s, p in zip(squeeze, processed, strict=True))
    assert _evidence(f, "time_squeeze - processed / netdev_budget, per CPU") == on_time
    assert _knob(f, "net.core.netdev_budget") == str(BUDGET)
    # each NAPI poll may take its weight (64) whatever is left of netdev_budget: with 4 the budget binds
    assert "packet budget exhausted" in f["title"] and f["knobs"][0]["name"] == "net.core.netdev_budget"


def test_rx_imbalance_equals_softnet_processed(window: dict[str, Any]) -> None:
    processed = _softnet(window, 0)
    f = _one(window, "rx-imbalance")
    assert f["where"]["cpu"] == CPU_IRQ
    # the flood reached the stack on the IRQ's CPU and nowhere else; not all of it: once B's ring is full,
    # qemu's hub drops frames on the host's side, where the guest counts nothing (the module docstring),
    # and the rules that slow B's receive path make that common (17,238 of 20,000 arrived in one 6.1 run)
    assert processed[CPU_IRQ] >= N_FLOOD // 2
    assert sum(processed) - processed[CPU_IRQ] <= processed[CPU_IRQ] // 100
    assert _evidence(f, f"/proc/net/softnet_stat processed, CPU {CPU_IRQ}") == processed[CPU_IRQ]
    assert _evidence(f, "/proc/net/softnet_stat processed (column 1)") == sum(processed)


def test_softirq_wait_counts_every_net_rx_run(window: dict[str, Any]) -> None:
    runs = sum(a - b for a, b in zip(window["after"]["net_rx"], window["before"]["net_rx"], strict=True))
    f = _one(window, "softirq-wait")
    seen = next(e["value"] for e in f["evidence"] if e["name"] == "softirq runs")
    timed = next(e["value"] for e in f["evidence"] if e["name"] == "softirq runs timed")
    p99 = next(e["value"] for e in f["evidence"] if e["name"] == "p99 wait")
    assert seen == runs > 0
    # a run raised again after __do_softirq took the pending bits (while an earlier vector of the same pass
    # ran) has no raise of its own: counted, untimed; 7 of 441 runs here (6.12)
    assert 0.95 * runs <= timed <= runs
    assert p99 >= 1_000_000  # the rule's threshold: NET_RX waited behind the busy loop
    names = [k["name"] for k in f["knobs"]]
    assert "net.core.netdev_budget_usecs" not in names and "net.core.busy_read" in names
