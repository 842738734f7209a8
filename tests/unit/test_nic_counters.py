"""NIC counters and receive-path programs, parsed from what the lab guest captured off its
virtio-net NICs (tests/vm/capture_nic.py): 30 UDP datagrams to a port the XDP program drops,
20 to one it aborts, 10 to a closed port, a pass-all tc ingress program beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from netpath.collect import nic_counters as nc
from netpath.kernel import irqs, rx_programs

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SERIES = [s for s in ("6.1", "6.12") if (FIXTURES / s / "nic" / "rtnl.json").exists()]
DROPPED, ABORTED = 30, 20


def _load(series: str) -> dict:
    return json.loads((FIXTURES / series / "nic" / "rtnl.json").read_text())


def _decode(cls: type, hexes: list[str]) -> list:
    out = []
    for h in hexes:
        msg = cls(bytes.fromhex(h))
        msg.decode()
        out.append(msg)
    return out


def test_both_lab_kernels_have_fixtures() -> None:
    assert SERIES == ["6.1", "6.12"]


@pytest.mark.parametrize("series", SERIES)
def test_ioctl_statistics_equal_what_ethtool_prints(series: str) -> None:
    grab = _load(series)
    text = (FIXTURES / series / "nic" / "ethtool-S.txt").read_text()
    assert [tuple(p) for p in grab["ethtool_ioctl"]] == nc.parse_ethtool_text(text)


@pytest.mark.parametrize("series", SERIES)
def test_ethtool_keeps_per_queue_drops_and_files_xdp_drops_under_xdp(series: str) -> None:
    grab = _load(series)
    iface = grab["iface"]
    got = nc.classify_ethtool(iface, [tuple(p) for p in grab["ethtool_ioctl"]])
    q = "rx0_" if series == "6.12" else "rx_queue_0_"
    # virtio_net counts an aborted program's packet as an XDP drop and as a drop
    assert got[("xdp", f"{q}xdp_drops", iface, None)] == DROPPED + ABORTED
    assert got[("ethtool", f"{q}drops", iface, None)] == DROPPED + ABORTED
    names = {k[1] for k in got}
    assert not any(n.endswith(("packets", "bytes", "kicks")) for n in names), names
    assert all(k[0] == "xdp" for k in got if "xdp" in k[1])
    if series == "6.12":
        # the device-wide totals repeat the one queue's counts: left out
        assert "rx_drops" not in names and "rx_xdp_drops" not in names


def test_ethtool_classification_other_drivers_names() -> None:
    stats = [("rx_missed_errors", 5), ("rx_queue_3_packets", 9), ("rx_queue_3_drops", 2), ("rx_fifo_errors", 1),
             ("tx_timeout_count", 0), ("rx_csum_offload_good", 4), ("rx_alloc_fail", 3)]
    assert nc.classify_ethtool("eth0", stats) == {
        ("ethtool", "rx_missed_errors", "eth0", None): 5, ("ethtool", "rx_queue_3_drops", "eth0", None): 2,
        ("ethtool", "rx_fifo_errors", "eth0", None): 1, ("ethtool", "tx_timeout_count", "eth0", None): 0,
        ("ethtool", "rx_alloc_fail", "eth0", None): 3,
    }


@pytest.mark.parametrize("series", SERIES)
def test_xdp_and_tc_programs_equal_bpftool_net(series: str) -> None:
    grab = _load(series)
    truth = grab["bpftool_net"][0]
    links = _decode(ifinfmsg, grab["links"])
    names = {int(ln["index"]): str(ln.get_attr("IFLA_IFNAME")) for ln in links}
    got = rx_programs.xdp_programs(links, lambda pid: f"prog{pid}")  # names come from the bpf syscall
    got += rx_programs.tc_programs(_decode(tcmsg, grab["filters"]), names)
    assert [(p.iface, p.hook, p.mode, p.prog_id) for p in got if p.hook == "xdp"] == [
        (x["devname"], "xdp", x["mode"], x["id"]) for x in truth["xdp"]]
    tc = [p for p in got if p.hook == "tc"]
    assert [(p.iface, p.prog_id, p.name, p.mode) for p in tc] == [
        (t["devname"], t["id"], t["name"], "clsact ingress") for t in truth["tc"]]
    assert tc[0].direct_action is True
    assert all(p.as_json()["iface"] == grab["iface"] for p in got)


@pytest.mark.parametrize("series", SERIES)
def test_qstats_dump_or_the_reason_there_is_none(series: str) -> None:
    grab = _load(series)
    qs = grab["qstats"]
    if series == "6.1":
        assert qs["available"] is False and "netdev netlink family" in qs["reason"] and not qs["raw"]
        return
    parsed = nc.qstats_from_messages(nc.decode_qstats_raw(bytes.fromhex("".join(qs["raw"]))))
    rx = [q for q in parsed.queues if q.ifindex == grab["ifindex"] and q.queue == "rx0"]
    rx_packets = int((FIXTURES / series / "nic" / "sysfs-rx_packets").read_text())
    assert len(rx) == 1 and rx[0].stats["rx-packets"] == rx_packets
    tx = next(q for q in parsed.queues if q.ifindex == grab["ifindex"] and q.queue == "tx0")
    assert {"tx-packets", "tx-bytes"} <= set(tx.stats)


def test_qstats_counters_keep_only_drop_like_members() -> None:
    qs = nc.Qstats(True, "", [nc.QueueStats(3, "rx0", {"rx-packets": 60, "rx-hw-drops": 2, "rx-alloc-fail": 0}),
                              nc.QueueStats(9, "tx1", {"tx-hw-drops": 1})])
    assert nc.qstats_counters(qs, {3: "eth0"}, None) == {("qstats", "rx0 rx-hw-drops", "eth0", None): 2,
                                                         ("qstats", "rx0 rx-alloc-fail", "eth0", None): 0,
                                                         ("qstats", "tx1 tx-hw-drops", "9", None): 1}
    assert nc.qstats_counters(qs, {3: "eth0"}, {"eth0"}) == {("qstats", "rx0 rx-hw-drops", "eth0", None): 2,
                                                             ("qstats", "rx0 rx-alloc-fail", "eth0", None): 0}


@pytest.mark.parametrize("series", SERIES)
def test_hardirq_maps_virtio_input_lines_of_nics_in_other_namespaces(series: str, tmp_path: Path) -> None:
    """With both NICs moved into namespaces, the root namespace's /sys/class/net has only lo, but
    the virtio-net devices stay on the bus: their input lines (not config, not output) are NIC IRQs."""
    net = tmp_path / "sys" / "class" / "net" / "lo"
    net.mkdir(parents=True)
    (net / "ifindex").write_text("1\n")
    bus = tmp_path / "sys" / "bus" / "virtio" / "drivers" / "virtio_net"
    text = (FIXTURES / series / "nic" / "interrupts.txt").read_text()
    inputs = {int(line.split(":")[0]) for line in text.splitlines() if "-input." in line}
    nets = sorted({line.split()[-1].split("-")[0] for line in text.splitlines() if "-input." in line})
    for dev in nets:
        (bus / dev).mkdir(parents=True)
    devices = irqs.local_devices(tmp_path / "sys" / "class" / "net")
    assert len(nets) == 2 and len(inputs) == 2
    assert irqs.nic_irqs(text, devices) == dict.fromkeys(sorted(inputs), 0)


def test_probes_text_lists_programs_and_counter_sources() -> None:
    from netpath.cli import rx_path

    rep = {"rx_programs": [
        {"iface": "rnb1", "ifindex": 3, "hook": "xdp", "mode": "driver", "prog_id": 61, "name": "xdp_drop_port"},
        {"iface": "rnb1", "ifindex": 3, "hook": "tc", "mode": "clsact ingress", "prog_id": 62, "name": "tc_rx_pass",
         "direct_action": True, "pref": 49152}],
        "counter_sources": [{"source": "qstats", "available": False, "reason": "no netdev family"}]}
    assert rx_path.lines(rep) == [
        "receive-path BPF programs (XDP, tc ingress):",
        "  rnb1             xdp  driver          id 61     xdp_drop_port",
        "  rnb1             tc   clsact ingress  id 62     tc_rx_pass pref 49152 direct-action",
        "NIC counter sources (netpath drops):",
        "  qstats   no   no netdev family",
    ]


def test_the_netdev_family_is_looked_up_once_and_again_when_a_dump_is_refused(monkeypatch) -> None:
    """The family id is kept for the process (netdev is built in); a dump refused under it asks again, and a
    new id is dumped with once more."""
    import errno

    from netpath.kernel import rtnl

    ids = iter([30, 31])
    asked: list[int] = []

    def dump(family: int, cmd: int, version: int, body: bytes) -> list[bytes]:
        asked.append(family)
        if family == 30 and len(asked) > 2:
            raise OSError(errno.ENOENT, "gone")
        return []

    monkeypatch.setattr(nc, "_NETDEV_FAMILY", [])
    monkeypatch.setattr(rtnl, "genl_family", lambda name: next(ids))
    monkeypatch.setattr(rtnl, "genl_dump", dump)
    assert nc.read_qstats().available and nc.read_qstats().available
    assert asked == [30, 30]  # one lookup for both
    assert nc.read_qstats().available  # refused under 30: 31 is looked up and dumped
    assert asked == [30, 30, 30, 31]
    assert nc._NETDEV_FAMILY == [31]


def test_xdp_exception_counters_open_nothing_when_no_device_is_new(monkeypatch) -> None:
    exc = nc.XdpExceptions()
    exc.fds["eth0"] = []

    def never(*_args: object) -> None:
        raise AssertionError("tracefs read for no new device")

    monkeypatch.setattr(nc, "_tracepoint_id", never)
    exc.open({"eth0": 2})
    exc.open({})
