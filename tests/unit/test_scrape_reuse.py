"""What a scrape reads once and shares, and the cheaper readings it takes: each must give what a fresh
reading gives (procnet.shared_scrape, netns._ns_inode, procnet.parse_snmp's fast path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netpath import netns
from netpath.kernel import procnet

SNMP = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts\nUdp: {n} 7\n"
NETSTAT = "TcpExt: ListenDrops\nTcpExt: 3\n"
SNMP6 = "Udp6NoPorts                     \t{n}\n"
CONNTRACK = "entries  clashres drop\n00000002 00000001 00000004\n00000002 00000000 00000001\n"


def _proc_net(root: Path, n: int) -> Path:
    (root / "stat").mkdir(parents=True, exist_ok=True)
    (root / "snmp").write_text(SNMP.format(n=n))
    (root / "netstat").write_text(NETSTAT)
    (root / "snmp6").write_text(SNMP6.format(n=n))
    (root / "stat" / "nf_conntrack").write_text(CONNTRACK)
    return root


def test_outside_a_scrape_every_reading_is_fresh(tmp_path: Path) -> None:
    base = _proc_net(tmp_path, 5)
    assert procnet.counter_files(base)[0]["UdpInDatagrams"] == 5
    _proc_net(tmp_path, 6)
    assert procnet.counter_files(base)[0]["UdpInDatagrams"] == 6


def test_in_a_scrape_the_later_readers_take_the_last_fresh_reading(tmp_path: Path) -> None:
    base = _proc_net(tmp_path, 5)
    with procnet.shared_scrape():
        first = procnet.counter_files(base, fresh=True)
        _proc_net(tmp_path, 6)  # the kernel moved on after the drop counters were read
        assert procnet.counter_files(base) == first  # the other readers see the drop counters' instant
        retry = procnet.counter_files(base, fresh=True)  # an aligned reading's next try is a new instant
        assert retry[0]["UdpInDatagrams"] == 6 and retry[2]["Udp6NoPorts"] == 6
        _proc_net(tmp_path, 7)
        assert procnet.counter_files(base) == retry  # ... and the one handed on
    assert procnet.counter_files(base)[0]["UdpInDatagrams"] == 7  # the scrape is over: fresh again


def test_the_first_reader_of_a_scrape_reads_when_none_did(tmp_path: Path) -> None:
    base = _proc_net(tmp_path, 5)
    with procnet.shared_scrape():
        assert procnet.counter_files(base)[0]["UdpInDatagrams"] == 5
        _proc_net(tmp_path, 6)
        assert procnet.counter_files(base)[0]["UdpInDatagrams"] == 5


def test_shared_readings_are_the_same_parse_as_a_fresh_one_and_copies(tmp_path: Path) -> None:
    base = _proc_net(tmp_path, 5)
    fresh = procnet.counter_files(base)
    assert fresh == (procnet.parse_snmp(SNMP.format(n=5)), procnet.parse_snmp(NETSTAT),
                     procnet.parse_snmp6(SNMP6.format(n=5)), procnet.parse_conntrack_stats(CONNTRACK))
    with procnet.shared_scrape():
        procnet.counter_files(base, fresh=True)[3].pop("entries")  # netns_counters.read_here pops it
        assert procnet.counter_files(base)[3]["entries"] == 2


def test_readings_are_kept_apart_by_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host, pod = _proc_net(tmp_path / "host", 5), _proc_net(tmp_path / "pod", 9)
    here = [1]
    monkeypatch.setattr(procnet, "_netns_here", lambda: here[0])
    with procnet.shared_scrape():
        procnet.counter_files(host, fresh=True)
        here[0] = 2  # another thread, in another namespace
        assert procnet.counter_files(pod)[0]["UdpInDatagrams"] == 9
        here[0] = 1
        assert procnet.counter_files(host)[0]["UdpInDatagrams"] == 5


def test_a_failed_scrape_leaves_no_sharing_behind(tmp_path: Path) -> None:
    base = _proc_net(tmp_path, 5)
    with pytest.raises(RuntimeError), procnet.shared_scrape():
        procnet.counter_files(base)
        raise RuntimeError
    _proc_net(tmp_path, 6)
    assert procnet.counter_files(base)[0]["UdpInDatagrams"] == 6


def test_parse_snmp_fast_path_equals_the_field_by_field_parse() -> None:
    text = ("Ip: Forwarding DefaultTTL MaxConn\nIp: 1 64 -1\n"
            "Tcp: RtoMin Weird\nTcp: 200 x1\n"  # not plain numbers: field by field, the bad one left out
            "Udp: A B\nUdp: 1\n")  # fewer values than names: the names that have one
    assert procnet.parse_snmp(text) == {"IpForwarding": 1, "IpDefaultTTL": 64, "IpMaxConn": -1,
                                        "TcpRtoMin": 200, "UdpA": 1}


def test_a_namespace_link_is_read_for_the_inode_stat_gives() -> None:
    path = f"/proc/{os.getpid()}/ns/net"
    assert netns._ns_inode(path) == os.stat(path).st_ino
    assert netns._ns_inode("/proc/0/ns/net") is None  # no such process


def test_an_unexpected_link_text_falls_back_to_stat(monkeypatch: pytest.MonkeyPatch) -> None:
    path = f"/proc/{os.getpid()}/ns/net"
    monkeypatch.setattr(netns.os, "readlink", lambda _p: "something else")
    assert netns._ns_inode(path) == os.stat(path).st_ino


def test_a_visitor_runs_every_visit_on_one_thread_that_ends_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    joined: list[tuple[str, str]] = []
    monkeypatch.setattr(netns, "_join", lambda ns: joined.append((ns.label, threading.current_thread().name)))
    a, b = netns.Netns(Path("/run/netns/a"), 1, "a"), netns.Netns(Path("/run/netns/b"), 2, "b")
    threads: set[int] = set()
    with netns.Visitor() as visitor:
        for ns in (a, b, a):
            assert netns.run_in(ns, lambda ns=ns: (threads.add(threading.get_ident()), ns.label)[1],
                                visitor) == ns.label
        worker = visitor._thread
        assert worker is not None and worker.ident not in (None, threading.get_ident())
    assert threads == {worker.ident} and not worker.is_alive()  # one thread, gone after the reading
    assert [label for label, _ in joined] == ["a", "b", "a"]  # it joins each job's namespace first


def test_a_visit_that_fails_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def join(ns: netns.Netns) -> None:
        if ns.label == "gone":
            raise OSError(2, "No such file or directory")

    monkeypatch.setattr(netns, "_join", join)
    gone, b = netns.Netns(Path("/run/netns/gone"), 1, "gone"), netns.Netns(Path("/run/netns/b"), 2, "b")
    with netns.Visitor() as visitor:
        with pytest.raises(OSError):
            visitor.run(gone, lambda: 1)
        with pytest.raises(ValueError):
            visitor.run(b, lambda: int("x"))
        assert visitor.run(b, lambda: 3) == 3


def test_a_visitor_never_used_starts_no_thread() -> None:
    with netns.Visitor() as visitor:
        assert netns.run_in(None, lambda: 5, visitor) == 5  # this namespace: run here
    assert visitor._thread is None


def test_ethtool_names_classified_once_give_what_a_fresh_classification_gives() -> None:
    from netpath.collect import nic_counters as nc

    stats = [("rx_packets", 9), ("rx_drops", 3), ("rx0_drops", 3), ("rx_xdp_drops", 1), ("tx_timeouts", 2),
             ("rx_drops", 4)]
    nc._KEPT.clear()
    first = nc.classify_ethtool("eth0", stats)
    assert nc._KEPT  # remembered by the names alone
    moved = [(n, v + 10) for n, v in stats]
    assert nc.classify_ethtool("eth1", moved) == {(s, n, "eth1", c): v + 10 for (s, n, _i, c), v in first.items()}
    nc._KEPT.clear()
    assert nc.classify_ethtool("eth1", moved) == {(s, n, "eth1", c): v + 10 for (s, n, _i, c), v in first.items()}
    assert first == {("ethtool", "rx0_drops", "eth0", None): 3, ("xdp", "rx_xdp_drops", "eth0", None): 1,
                     ("ethtool", "tx_timeouts", "eth0", None): 2}


class _ReferenceBudget:
    """SeriesBudget.split as it was before its no-new-labels shortcut: every label set sorted every time."""

    def __init__(self, limit: int) -> None:
        self.limit, self.admitted, self.folded = limit, set(), set()  # type: ignore[var-annotated]
        self.retired: tuple[float, ...] = ()
        self.last: dict = {}  # type: ignore[type-arg]

    def split(self, values: dict) -> tuple[dict, tuple[float, ...] | None]:  # type: ignore[type-arg]
        from netpath.render.metrics import _add

        for gone in set(self.last) - set(values):
            if gone in self.folded:
                self.retired = _add(self.retired, self.last[gone])
                self.folded.discard(gone)
            self.admitted.discard(gone)
        own, overflow = {}, self.retired
        for labels, value in sorted(values.items(), key=lambda kv: (-kv[1][0], kv[0])):
            if labels not in self.admitted and labels not in self.folded:
                (self.admitted if len(self.admitted) < self.limit else self.folded).add(labels)
            if labels in self.admitted:
                own[labels] = value
            else:
                overflow = _add(overflow, value)
        self.last = dict(values)
        return own, (overflow if overflow else None)


def test_series_budget_splits_as_before_scrape_after_scrape() -> None:
    import random

    from netpath.render.metrics import SeriesBudget

    rnd = random.Random(32)
    for limit in (1, 3, 8):
        new, ref = SeriesBudget(limit), _ReferenceBudget(limit)
        pool = [(f"l{i}",) for i in range(12)]
        for _ in range(60):
            values = {labels: (float(rnd.randrange(0, 5)), float(rnd.randrange(0, 3)))
                      for labels in rnd.sample(pool, rnd.randrange(0, len(pool)))}
            if rnd.random() < 0.5 and new.last:  # often: the same label sets as the last scrape
                values = {labels: (v[0] + 1, v[1]) for labels, v in new.last.items()}
            assert new.split(dict(values)) == ref.split(dict(values))
            assert (new.admitted, new.folded, new.retired) == (ref.admitted, ref.folded, ref.retired)
