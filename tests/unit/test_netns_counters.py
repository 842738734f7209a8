"""collect/netns_counters: every namespace's counters, read on fixtures recorded in a namespace here
(tests/unit/data/netns-counters: before and after 40 datagrams at a 1-byte SO_RCVBUF and 4 connects to a
listen(0) socket that never accepts)."""

from __future__ import annotations

from pathlib import Path

from netpath import netns
from netpath.collect import netns_counters as nc
from netpath.kernel import procnet
from netpath.model import NetnsCounters

DATA = Path(__file__).parent / "data" / "netns-counters"


def _read(which: str) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    return nc.read_here(DATA / which, DATA / which / "sys")


def test_read_here_names_every_counter_as_nstat_does() -> None:
    snmp, conntrack, levels = _read("after")
    assert snmp["UdpRcvbufErrors"] == 43 and snmp["UdpInErrors"] == 43
    assert snmp["TcpExtListenOverflows"] == 6 and snmp["TcpExtListenDrops"] == 6
    assert snmp["TcpExtTCPReqQFullDrop"] == 0  # netstat fields are all there, zero or not
    assert "Ip6InReceives" in snmp and "Udp6RcvbufErrors" in snmp  # snmp6
    assert conntrack["insert_failed"] == 0 and "entries" not in conntrack  # entries is a level
    assert levels["conntrack.entries"] == 0
    assert levels["net.netfilter.nf_conntrack_max"] == 262144
    assert levels["net.netfilter.nf_conntrack_count"] == 0
    assert levels["sockstat.UDP.inuse"] == 0 and "sockstat.TCP.mem" in levels
    assert "sockstat6.UDP6.inuse" in levels


def test_sockstat_pairs() -> None:
    got = procnet.parse_sockstat("sockets: used 9\nTCP: inuse 3 orphan 0 tw 1 alloc 5 mem 7\nUDP: inuse 2 mem 4\n"
                            "FRAG: inuse 0 memory 0\n")
    assert got["sockstat.TCP.mem"] == 7 and got["sockstat.UDP.mem"] == 4 and got["sockstat.sockets.used"] == 9
    assert got["sockstat.TCP.tw"] == 1 and got["sockstat.FRAG.memory"] == 0
    assert procnet.parse_sockstat("garbage\nTCP: inuse\n") == {}


def test_conntrack_rows_are_summed_over_cpus() -> None:
    text = ("entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop\n"
            "00000005  00000001 00000000 00000000 00000003 00000000 00000000 00000000 00000000 00000002 "
            "00000000 00000000\n"
            "00000005  00000000 00000000 00000000 00000001 00000000 00000000 00000000 00000000 0000000a "
            "00000000 00000004\n")
    got = procnet.parse_conntrack_stats(text)
    assert got["invalid"] == 4 and got["insert_failed"] == 12 and got["early_drop"] == 4 and got["entries"] == 5


def _counters(inode: int, cookie: int, label: str, which: str, named: bool = False) -> NetnsCounters:
    snmp, conntrack, levels = _read(which)
    return NetnsCounters(inode, cookie, label, named, snmp, conntrack, levels)


def test_window_is_per_namespace_by_cookie() -> None:
    before = [_counters(4026531840, 1, "host", "before"), _counters(4026532500, 77, "pod", "before", True)]
    after = [_counters(4026531840, 1, "host", "before"), _counters(4026532500, 77, "pod", "after", True)]
    got = {c.label: c for c in nc.window(before, after)}
    assert got["host"].snmp == {}  # nothing moved there
    pod = got["pod"]
    assert pod.snmp["UdpRcvbufErrors"] == 39 and pod.snmp["TcpExtListenOverflows"] == 6
    assert pod.snmp["TcpExtListenDrops"] == 6 and "TcpExtTCPReqQFullDrop" not in pod.snmp
    assert pod.levels["net.netfilter.nf_conntrack_max"] == 262144  # the end's levels


def test_reused_inode_is_a_new_namespace() -> None:
    """Same inode, another cookie: the namespace was deleted and its inode reused; the new one started at 0."""
    before = [_counters(4026532500, 77, "old", "before")]
    after = [_counters(4026532500, 78, "new", "after")]
    (new,) = nc.window(before, after)
    assert new.snmp["UdpRcvbufErrors"] == 43  # all of the new namespace's counts, not 43 - 4


def test_namespace_created_in_the_window_counts_from_zero() -> None:
    (new,) = nc.window([], [_counters(4026532600, 90, "late", "after")])
    assert new.snmp["TcpExtListenOverflows"] == 6


def test_active_keeps_host_named_moved_and_dropped() -> None:
    quiet = NetnsCounters(5, 50, "quiet")
    rows = [NetnsCounters(1, 10, "host"), NetnsCounters(2, 20, "named", True), quiet,
            NetnsCounters(3, 30, "moved", snmp={"UdpRcvbufErrors": 1}), NetnsCounters(4, 40, "drops")]
    assert [c.label for c in nc.active(rows, drop_netns=[4])] == ["host", "named", "moved", "drops"]


def test_read_every_namespace_orders_labels_and_skips_strays() -> None:
    found = [netns.Netns(Path("/proc/77/ns/net"), 300, "pid:77"), netns.Netns(Path("/run/netns/blue"), 200, "blue"),
             netns.Netns(Path("/proc/self/ns/net"), 0, "host"), netns.Netns(Path("/proc/88/ns/net"), 400, "pid:88")]
    visited: list[str] = []

    def visit(ns: netns.Netns) -> NetnsCounters | None:
        visited.append(ns.label)
        if ns.label == "pid:88":
            return None  # the process exited and its PID went elsewhere: not read
        return NetnsCounters(ns.inode, ns.inode + 1, ns.label)

    got, skipped = nc.read_every_namespace(lambda: found, visit=visit)
    assert visited == ["host", "blue", "pid:77", "pid:88"]  # the host's first, then the named ones
    assert [c.label for c in got][:2] == ["host", "blue"] and skipped == 0
    assert [c.named for c in got] == [False, True, False]
    got, skipped = nc.read_every_namespace(lambda: found, limit=2, visit=visit)
    assert len(got) == 2 and skipped == 2


def test_a_counts_reading_leaves_out_the_levels_and_without_host_the_runs_own_namespace(monkeypatch) -> None:
    """A drops run reads its own namespace with its other counters: the other namespaces' reading skips it;
    every namespace is read without the levels (nobody keeps them there)."""
    visited: list[tuple[str, bool]] = []
    monkeypatch.setattr(nc, "_visit", lambda ns, levels=True, visitor=None: visited.append((ns.label, levels)))
    hosts = [netns.Netns(Path("/proc/self/ns/net"), 1, "host"), netns.Netns(Path("/run/netns/a"), 2, "a")]

    def every(visit):
        for ns in hosts:
            visit(ns)
        return [], 0

    monkeypatch.setattr(nc, "read_every_namespace", every)
    nc.read_every_namespace_counts(host=False)
    assert visited == [("a", False)]
    visited.clear()
    nc.read_every_namespace_counts()
    assert visited == [("host", False), ("a", False)]
