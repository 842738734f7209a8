"""Other namespaces' drop counters over a run: deltas, run totals, zero series, pods, and their metrics."""

from __future__ import annotations

from netpath.collect.netns_rx import NamespaceCounters, cgroup_of, known_names
from netpath.model import Counter, DropHealth, DropSnapshot, NetnsCounters
from netpath.render.metrics import MetricSet
from netpath.runtimes import Workload


class FakeRuntimes:
    def of_netns(self, inode: int) -> Workload | None:
        return None  # no runtime config names it: the process's cgroup does

    def of_cgroup(self, path: str | None) -> Workload | None:
        return Workload("srv", "web-0", "shop") if path else None


def reading(label: str, cookie: int, rcvbuf: int, overflows: int = 0, conntrack: bool = False) -> NetnsCounters:
    snmp = {"UdpRcvbufErrors": rcvbuf, "UdpNoPorts": 0, "TcpExtListenOverflows": overflows, "IpInDiscards": 0,
            "UdpInDatagrams": 999}
    ct = {"drop": 0, "early_drop": 0, "insert_failed": 0, "invalid": 0} if conntrack else {}
    return NetnsCounters(4026530000 + cookie, cookie, label, label.startswith("ns"), snmp, ct, {})


def test_known_names_are_the_drop_counters_the_kernel_has():
    got = known_names({"UdpRcvbufErrors": 1, "UdpInDatagrams": 5, "TcpExtListenOverflows": 0}, {"drop": 0})
    assert got == [("snmp", "UdpRcvbufErrors"), ("snmp", "TcpExtListenOverflows"), ("conntrack", "drop")]


def test_steps_totals_and_zero_series(monkeypatch):
    import netpath.collect.netns_rx as mod
    monkeypatch.setattr(mod, "netns_pids", lambda: {4026530002: 4242})
    monkeypatch.setattr(mod, "cgroup_of", lambda pid: "/libpod_parent/libpod-x" if pid == 4242 else None)
    feed = [[reading("host", 1, 50), reading("nsA", 2, 100)],
            [reading("host", 1, 70), reading("nsA", 2, 130, 3)],
            [reading("host", 1, 70), reading("nsA", 2, 130, 3), reading("nsB", 3, 7)]]
    nc = NamespaceCounters(lambda: (feed.pop(0), 0), FakeRuntimes())  # type: ignore[arg-type]
    nc.read()
    step = nc.step()
    # the host is the run's own (collect/counters.py reads it); nsA counts from the run's start
    assert [(c.netns_label, c.name, c.count, c.pod) for c in step] == [
        ("nsA", "TcpExtListenOverflows", 3, "web-0"), ("nsA", "UdpRcvbufErrors", 30, "web-0")]
    step = nc.step()
    assert [(c.netns_label, c.name, c.count) for c in step] == [("nsB", "UdpRcvbufErrors", 7)]  # made mid-run
    totals = {(c.netns_label, c.name): c.count for c in nc.totals()}
    assert totals == {("nsA", "TcpExtListenOverflows"): 3, ("nsA", "UdpRcvbufErrors"): 30,
                      ("nsB", "UdpRcvbufErrors"): 7}
    zeros = {(c.netns_label, c.name): c.count for c in nc.totals(zeros=True)}
    assert zeros[("nsA", "UdpNoPorts")] == 0 and zeros[("nsB", "IpInDiscards")] == 0
    assert ("nsA", "UdpInDatagrams") not in zeros  # not a drop counter


def test_own_namespace_and_gone_namespaces():
    feed = [[reading("host", 1, 50, conntrack=True), reading("nsA", 2, 1)], [reading("host", 1, 52, conntrack=True)]]
    nc = NamespaceCounters(lambda: (feed.pop(0), 0), FakeRuntimes(), own=True)  # type: ignore[arg-type]
    nc.read()
    nc.read()
    got = {(c.netns_label, c.source, c.name): c.count for c in nc.totals(zeros=True)}
    assert got[("host", "snmp", "UdpRcvbufErrors")] == 2 and got[("host", "conntrack", "drop")] == 0
    assert not any(label == "nsA" for label, _, _ in got)  # deleted: its series end


def test_cgroup_of_reads_the_v2_line(tmp_path):
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "cgroup").write_text("1:cpu:/x\n0::/libpod_parent/libpod-abc\n")
    assert cgroup_of(7, tmp_path) == "/libpod_parent/libpod-abc"
    assert cgroup_of(8, tmp_path) is None


def test_rx_stat_series_carry_the_namespace_and_pod_and_exist_at_zero():
    own = [Counter("snmp", "UdpRcvbufErrors", 0, netns=1, netns_label="host")]
    other = [Counter("snmp", "UdpRcvbufErrors", 9, netns=2, netns_label="nsA", pod="web-0", pod_namespace="shop"),
             Counter("snmp", "TcpExtListenOverflows", 0, netns=2, netns_label="nsA", pod="web-0",
                     pod_namespace="shop")]
    snap = DropSnapshot([], [Counter("snmp", "UdpRcvbufErrors", 4), Counter("link", "rx_dropped", 1, iface="lo")],
                        DropHealth(), 0, 10**9, netns_counters=own + other, netns_own=True)
    fams = {f.name: f for f in MetricSet(100).drops(snap)}
    got = {(s.labels["stat"], s.labels["netns_label"], s.labels["pod"]): s.value
           for s in fams["netpath_rx_stat"].samples if s.name.endswith("_total")}
    # the own namespace's snmp comes from netns_counters (with its zero), not twice from counters
    assert got == {("UdpRcvbufErrors", "host", ""): 0, ("UdpRcvbufErrors", "nsA", "web-0"): 9,
                   ("TcpExtListenOverflows", "nsA", "web-0"): 0, ("rx_dropped", "", ""): 1}


def test_the_documented_series_bound_is_the_known_counters():
    from pathlib import Path

    from netpath.collect import counters
    per_ns = sum(len(v) for v in counters.SNMP_WANTED.values()) + len(counters.SNMP6_WANTED) + len(
        counters.CONNTRACK_WANTED)
    page = (Path(__file__).parents[2] / "man/man8/netpath-export.8").read_text()
    assert f"per namespace at most {per_ns} " in page
