"""netpath against a real driver: the lab guest's two virtio-net NICs, joined only to each other by
a qemu hub (vm/run.sh), each moved into a namespace of its own. Unlike veth and lo, they take hard
IRQs, poll through the driver's NAPI with a budget, coalesce TCP through GRO, can steer the stack
to another CPU with RPS, keep ethtool/qstats counters and run XDP before any skb exists.

Every number is held to the kernel's own: /proc/interrupts, the interface's rx_packets,
/proc/net/softnet_stat, `ethtool -S`, what was sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vmlab
from netpath_testlib import NetpathRun, rx_packets

N_UDP = 1000
TCP_BYTES = 1 << 20
CPU_IRQ, CPU_STACK = 0, 1  # the NICs' receive interrupts go to CPU 0; RPS moves B's stack to CPU 1


def _start(args: list[str], netns: str | None = None) -> NetpathRun:
    argv = [*args, "--json", "--interval", "1"]
    run = NetpathRun(argv if netns is None else [*argv[:1], "--netns", netns, *argv[1:]])
    run.wait_start(timeout=300)  # TCG: compiling and attaching is ~20x slower
    return run


def _stop(run: NetpathRun) -> dict[str, Any]:
    run.proc.send_signal(2)
    rc, _records, err = run.finish(timeout=300)
    assert rc == 0, err
    return run.summary()


def _stage(summary: dict[str, Any], stage: str) -> dict[str, Any]:
    return next(s for s in summary["stages"] if s["stage"] == stage)


def _parts(row: dict[str, Any], iface: str, key: str = "breakdown") -> dict[int, int]:
    """cpu -> count (or NAPI work) of one interface's rows in a --per-iface --per-cpu breakdown."""
    field = "work" if key == "napi_breakdown" else "count"
    out: dict[int, int] = {}
    for part in row.get(key, []):
        if part.get("iface") == iface:
            out[part.get("cpu", 0)] = out.get(part.get("cpu", 0), 0) + part[field]
    return out


def _irq_delta(before: dict[int, list[int]], after: dict[int, list[int]]) -> list[int]:
    """Per-CPU sum of the listed lines' increments."""
    total = [0] * len(next(iter(after.values())))
    for irq, counts in after.items():
        for cpu, n in enumerate(counts):
            total[cpu] += n - before[irq][cpu]
    return total


def _softnet_delta(before: list[list[int]], after: list[list[int]], col: int) -> list[int]:
    return [a[col] - b[col] for a, b in zip(after, before, strict=True)]


def _set_irq_cpu(irqs: tuple[int, ...], cpu: int) -> None:
    for irq in irqs:
        Path(f"/proc/irq/{irq}/smp_affinity_list").write_text(str(cpu))


def _rps(nics: vmlab.RealNics, mask: int) -> None:
    nics.run(nics.b, ["sh", "-c", f"echo {mask:x} > /sys/class/net/{nics.if_b}/queues/rx-0/rps_cpus"])


@pytest.fixture(scope="module")
def nics() -> Iterator[vmlab.RealNics]:
    with vmlab.realnic_pair() as pair:
        assert pair.input_a and pair.input_b, "no virtio input IRQ lines in /proc/interrupts"
        yield pair


# --- one trace run with RPS: hardirq, napi_poll, gro, and the CPU split ---

@pytest.fixture(scope="module")
def rps_run(nics: vmlab.RealNics) -> dict[str, Any]:
    """UDP then a TCP bulk transfer A -> B with both NICs' interrupts on CPU 0 and RPS sending B's
    packets to CPU 1, under `netpath trace --per-iface --per-cpu`; ground truth before and after."""
    p = nics
    _set_irq_cpu(p.input_a + p.input_b, CPU_IRQ)
    # x86 moves an MSI's affinity at its next interrupt, on the old CPU: take one on each NIC first
    vmlab.send_udp(p, p.a, p.addr_b, 9, 3)
    vmlab.send_udp(p, p.b, p.addr_a, 9, 3)
    time.sleep(0.5)
    _rps(p, 1 << CPU_STACK)
    irqs = list(p.input_a + p.input_b)
    try:
        run = _start(["trace", "--stages", "all", "--per-iface", "--per-cpu"])
        before = {"irq": vmlab.irq_counts(irqs), "rx_a": rx_packets(p.if_a, p.a), "rx_b": rx_packets(p.if_b, p.b),
                  "softnet": vmlab.softnet()}
        sink = vmlab.UdpSink(p, p.b, p.addr_b, 5201, want=N_UDP, timeout=60)
        vmlab.send_udp(p, p.a, p.addr_b, 5201, N_UDP, burst=50, pause=0.02)
        got = sink.wait()
        assert vmlab.tcp_transfer(p, p.b, p.addr_b, 5202, p.a, TCP_BYTES) == TCP_BYTES
        time.sleep(1)
        after = {"irq": vmlab.irq_counts(irqs), "rx_a": rx_packets(p.if_a, p.a), "rx_b": rx_packets(p.if_b, p.b),
                 "softnet": vmlab.softnet()}
        summary = _stop(run)
    finally:
        _rps(p, 0)
    # a loaded host can starve CPU 1 long enough for its backlog (netdev_max_backlog) to overflow:
    # every datagram is then either read by the sink or counted as a softnet drop
    dropped = sum(_softnet_delta(before["softnet"], after["softnet"], 1))
    assert got + dropped == N_UDP, (got, dropped)
    assert got > N_UDP // 2
    return {"summary": summary, "before": before, "after": after, "udp": got}


def test_hardirq_counts_equal_virtio_input_interrupts(nics: vmlab.RealNics, rps_run: dict[str, Any]) -> None:
    b, a = rps_run["before"], rps_run["after"]
    fired = sum(_irq_delta(b["irq"], a["irq"]))
    hardirq = _stage(rps_run["summary"], "hardirq")
    print(f"hardirq: netpath {hardirq['count']}, /proc/interrupts {fired} on "
          f"{nics.bus_a}/{nics.bus_b}-input; rx {a['rx_b'] - b['rx_b']}")
    assert fired > 0
    assert hardirq["count"] == fired
    assert hardirq["p50_ns"] > 0


def test_napi_work_per_device_equals_rx_packets(nics: vmlab.RealNics, rps_run: dict[str, Any]) -> None:
    b, a, napi = rps_run["before"], rps_run["after"], _stage(rps_run["summary"], "napi_poll")
    work_b = sum(_parts(napi, nics.if_b, "napi_breakdown").values())
    work_a = sum(_parts(napi, nics.if_a, "napi_breakdown").values())
    print(f"napi_poll: {nics.if_b} work {work_b} rx_packets +{a['rx_b'] - b['rx_b']}; "
          f"{nics.if_a} work {work_a} rx_packets +{a['rx_a'] - b['rx_a']}; all polls {napi['napi']}")
    assert work_b == a["rx_b"] - b["rx_b"] > rps_run["udp"]
    assert work_a == a["rx_a"] - b["rx_a"] > 0  # the TCP ACKs
    assert napi["napi"]["budget"] == 64  # the driver's NAPI weight


def test_gro_coalesces_tcp_and_netpath_shows_segments_and_skbs(nics: vmlab.RealNics,
                                                               rps_run: dict[str, Any]) -> None:
    b, a, s = rps_run["before"], rps_run["after"], rps_run["summary"]
    segments = sum(_parts(_stage(s, "gro"), nics.if_b).values())
    skbs = sum(_parts(_stage(s, "netif_receive_skb"), nics.if_b).values())
    # every frame B's driver took went through napi_gro_receive; only B's skbs reach CPU 1's stack
    processed = _softnet_delta(b["softnet"], a["softnet"], 0)[CPU_STACK]
    tcp_segments, tcp_skbs = segments - N_UDP, skbs - rps_run["udp"]
    print(f"gro: {segments} segments -> {skbs} skbs ({tcp_segments} TCP segments -> {tcp_skbs} TCP skbs, "
          f"{tcp_segments / max(tcp_skbs, 1):.2f}:1); softnet processed +{processed} on CPU {CPU_STACK}")
    assert segments == a["rx_b"] - b["rx_b"]
    assert skbs == processed
    assert 0 < tcp_skbs < tcp_segments


def test_rps_moves_the_stack_to_the_other_cpu_and_per_cpu_shows_it(nics: vmlab.RealNics,
                                                                    rps_run: dict[str, Any]) -> None:
    b, a, s = rps_run["before"], rps_run["after"], rps_run["summary"]
    irq_b = _irq_delta({i: b["irq"][i] for i in nics.input_b}, {i: a["irq"][i] for i in nics.input_b})
    napi_b = _parts(_stage(s, "napi_poll"), nics.if_b, "napi_breakdown")
    ip_b = _parts(_stage(s, "ip_rcv"), nics.if_b)
    udp_b = _parts(_stage(s, "udp_rcv"), nics.if_b)
    rps_ipis = _softnet_delta(b["softnet"], a["softnet"], 9)
    print(f"rps: {nics.if_b} IRQs per CPU {irq_b}, NAPI work per CPU {napi_b}, ip_rcv per CPU {ip_b}, "
          f"udp_rcv per CPU {udp_b}, softnet received_rps {rps_ipis}")
    assert irq_b[CPU_IRQ] > 0 and sum(irq_b) == irq_b[CPU_IRQ]
    # every received frame is polled where the IRQ fires; a poll with no work elsewhere (virtio-net's
    # TX NAPI cleaning after the ACKs the stack on CPU_STACK sends) is not receive work
    received = {cpu: work for cpu, work in napi_b.items() if work}
    assert received == {CPU_IRQ: a["rx_b"] - b["rx_b"]}
    assert set(ip_b) == {CPU_STACK} and ip_b[CPU_STACK] > rps_run["udp"]
    assert udp_b == {CPU_STACK: rps_run["udp"]}
    assert rps_ipis[CPU_STACK] > 0


# --- budget exhaustion and time_squeeze under a pktgen flood ---

def test_budget_exhaustion_and_time_squeeze_under_a_flood(nics: vmlab.RealNics) -> None:
    p = nics
    n = 20000
    sysctl = Path("/proc/sys/net/core/netdev_budget")
    old = sysctl.read_text().strip()
    mac_b = json.loads(subprocess.run(["ip", "-n", p.b, "-j", "link", "show", p.if_b], capture_output=True,
                                      text=True, check=True).stdout)[0]["address"]
    run = _start(["trace", "--stages", "all", "--per-iface"])
    try:
        sysctl.write_text("4")
        rx0, sn0 = rx_packets(p.if_b, p.b), vmlab.softnet()
        vmlab.pktgen(p, p.a, p.if_a, p.addr_b, mac_b, n, 9)
        time.sleep(1)
        rx1, sn1 = rx_packets(p.if_b, p.b), vmlab.softnet()
    finally:
        sysctl.write_text(old)
    s = _stop(run)
    napi = _stage(s, "napi_poll")
    dev = next(d for d in napi["napi_breakdown"] if d.get("iface") == p.if_b)
    squeeze = sum(_softnet_delta(sn0, sn1, 2))
    print(f"budget: {p.if_b} polls {dev['polls']} work {dev['work']} (rx_packets +{rx1 - rx0}, sent {n}) "
          f"exhausted {dev['exhausted']} max_work {dev['max_work']}/{dev['budget']}; time_squeeze netpath "
          f"{s['softnet'].get('time_squeeze')} softnet_stat +{squeeze}")
    assert dev["work"] == rx1 - rx0 > 0
    assert dev["budget"] == 64 and dev["exhausted"] > 0 and dev["max_work"] == 64
    assert squeeze > 0 and s["softnet"]["time_squeeze"] == squeeze


# --- XDP before the skb, the driver's counters, and what sits on the receive path ---

DROP_PORT, ABORT_PORT, CLOSED_PORT = 7001, 7002, 7003
N_DROP, N_ABORT, N_CLOSED = 300, 200, 100


@pytest.fixture(scope="module")
def xdp_run(nics: vmlab.RealNics) -> Iterator[dict[str, Any]]:
    p = nics
    vmlab.attach_rx_programs(p, p.b, p.if_b, DROP_PORT, ABORT_PORT)
    try:
        run = _start(["drops"], netns=p.b)
        before = vmlab.ethtool_stats(p, p.b, p.if_b)
        vmlab.send_udp(p, p.a, p.addr_b, DROP_PORT, N_DROP)
        vmlab.send_udp(p, p.a, p.addr_b, ABORT_PORT, N_ABORT)
        vmlab.send_udp(p, p.a, p.addr_b, CLOSED_PORT, N_CLOSED)
        time.sleep(2)
        after = vmlab.ethtool_stats(p, p.b, p.if_b)
        summary = _stop(run)
        probes = json.loads(p.run(p.b, [sys.executable, "-m", "netpath", "probes", "--json"]).stdout)
        bpftool = json.loads(p.run(p.b, ["bpftool", "-j", "net"]).stdout)
        yield {"summary": summary, "before": before, "after": after, "probes": probes, "bpftool": bpftool}
    finally:
        vmlab.detach_rx_programs(p, p.b, p.if_b)


def _counters(summary: dict[str, Any], source: str, iface: str) -> dict[str, int]:
    return {c["name"]: c["count"] for c in summary["counters"] if c["source"] == source and c.get("iface") == iface}


def test_xdp_drops_come_from_the_drivers_xdp_counters(nics: vmlab.RealNics, xdp_run: dict[str, Any]) -> None:
    b, a, s = xdp_run["before"], xdp_run["after"], xdp_run["summary"]
    moved = {k: a[k] - b.get(k, 0) for k in a if a[k] != b.get(k, 0)}
    xdp = _counters(s, "xdp", nics.if_b)
    print(f"xdp: netpath {xdp}; ethtool -S moved {moved}")
    queue = [k for k in xdp if k.endswith("xdp_drops") and ("0_" in k)]  # rx0_xdp_drops / rx_queue_0_xdp_drops
    assert queue, xdp
    for name, count in xdp.items():
        if name != "xdp_exception":
            assert count == moved[name], name
    assert xdp[queue[0]] == N_DROP + N_ABORT  # the driver counts an aborted program's packet as an XDP drop
    assert xdp["xdp_exception"] == N_ABORT
    # none of them became an skb, so none is a kfree_skb row; the closed port's are
    rows = [(r["reason"], r["iface"], r["proto"], r["count"]) for r in s["rows"]]
    assert rows == [("NO_SOCKET", nics.if_b, "udp", N_CLOSED)]


def test_ethtool_counters_equal_ethtool_S(nics: vmlab.RealNics, xdp_run: dict[str, Any]) -> None:
    b, a, s = xdp_run["before"], xdp_run["after"], xdp_run["summary"]
    eth = _counters(s, "ethtool", nics.if_b)
    print(f"ethtool: netpath {eth}")
    assert eth, s["counters"]
    for name, count in eth.items():
        assert count == a[name] - b[name], name
    assert any("0_drops" in k for k in eth)  # per queue: rx0_drops (6.12), rx_queue_0_drops (6.1)


def test_probes_lists_the_xdp_and_tc_programs(nics: vmlab.RealNics, xdp_run: dict[str, Any]) -> None:
    progs = [pr for pr in xdp_run["probes"]["rx_programs"] if pr["iface"] == nics.if_b]
    truth = xdp_run["bpftool"][0]
    xdp_ids = [x["id"] for x in truth["xdp"] if x["devname"] == nics.if_b]
    tc_ids = [x["id"] for x in truth["tc"] if x["devname"] == nics.if_b]
    print(f"probes: {progs}; bpftool net: xdp {truth['xdp']} tc {truth['tc']}")
    assert [(pr["hook"], pr["mode"], pr["name"], pr["prog_id"]) for pr in progs] == [
        ("xdp", "driver", "xdp_drop_port", xdp_ids[0]),
        ("tc", "clsact ingress", "tc_rx_pass", tc_ids[0]),
    ]
    assert progs[1]["direct_action"] is True


def test_qstats_where_the_kernel_has_them(nics: vmlab.RealNics, xdp_run: dict[str, Any], lab_kernel) -> None:
    sources = {src["source"]: src for src in xdp_run["probes"]["counter_sources"]}
    qs = sources["qstats"]
    print(f"qstats on {lab_kernel.release}: {qs}")
    if lab_kernel.series == "6.1":
        # the netdev family arrived in 6.3 and qstats-get in 6.9: netpath must say so
        assert qs["available"] is False and "netdev netlink family" in qs["reason"]
        return
    assert qs["available"] is True, qs
    code = ("import json\nfrom netpath.collect import nic_counters as n\n"
            "print(json.dumps([[q.ifindex, q.queue, q.stats] for q in n.read_qstats().queues]))")
    queues = json.loads(nics.python(nics.b, code))
    ifindex = nics.ifindex(nics.b, nics.if_b)
    rx = {q: st for i, q, st in queues if i == ifindex and q.startswith("rx")}
    print(f"qstats {nics.if_b}: {rx}")
    assert sum(st["rx-packets"] for st in rx.values()) == rx_packets(nics.if_b, nics.b)
