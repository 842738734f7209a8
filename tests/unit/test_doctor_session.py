"""DoctorSession without root: stub drops and trace sessions, the settings readers patched."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from netpath.cli.console import Terminal
from netpath.cli.doctor import DoctorSink
from netpath.collect import netns_counters
from netpath.compose import doctor as doctor_mod
from netpath.compose.doctor import DoctorQuery, DoctorSession
from netpath.kernel import settings as settings_mod
from netpath.model import (
    DropHealth,
    DropRow,
    DropSample,
    DropSnapshot,
    DropsStart,
    Filters,
    NetnsCounters,
    Settings,
    SocketState,
)

KEY = b"rcvbuf"
ROW = DropRow("SOCKET_RCVBUFF", 2, "x+0x1", "nn0", 2, 77, "udp", 0, netns_label="web")


class StubDrops:
    """What DoctorSession uses of a DropsSession: counts grow by 100 between the marks."""

    def __init__(self) -> None:
        self.n = 40  # counted before the window's start mark: never reported
        self.closed = False

    def start(self) -> DropsStart:
        return DropsStart(kernel="6.18", headers="shim", attached=(), unavailable=(), filters=Filters())

    def counts(self) -> dict[bytes, int]:
        return {KEY: self.n}

    def stats(self) -> dict[str, int]:
        return {"matched": self.n}

    def decode_rows(self, counts: dict[bytes, int]) -> list[DropRow]:
        return [replace(ROW, count=counts[KEY])] if counts.get(KEY) else []

    def summary(self, elapsed_ns: int) -> DropSnapshot:
        return DropSnapshot(self.decode_rows(self.counts()), [], DropHealth(), self.n, elapsed_ns)

    def wait(self, timeout_s: float) -> None:
        pass

    def events(self) -> list:
        return []

    def close(self) -> None:
        self.closed = True


def test_the_window_starts_at_the_mark_and_the_evidence_equals_the_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    drops = StubDrops()
    raws = iter([({"UdpRcvbufErrors": 1000}, {}, {}, {}), ({"UdpRcvbufErrors": 1100}, {}, {}, {})])

    def marked(ns, mark):  # type: ignore[no-untyped-def]
        return next(raws), mark()

    listener = SocketState("udp", 4, "10.0.0.2", 53, 9, False, 0, 0, 2304)
    monkeypatch.setattr(netns_counters, "read_every_namespace", lambda: ([], 0))
    monkeypatch.setattr(settings_mod, "read_window_raw_marked", marked)
    monkeypatch.setattr(settings_mod, "read_settings",
                        lambda ns, ifaces: Settings(77, "web", {"net.core.rmem_max": "212992"}, (listener,)))
    session = DoctorSession(DoctorQuery(trace=False), drops, None)  # type: ignore[arg-type]
    start = session.start()
    assert start.command == "doctor" and "socket-rcvbuf-overflow" in start.rules
    drops.n += 100
    diag = session.summary(5_000_000_000)
    [f] = diag.findings
    assert f.id == "socket-rcvbuf-overflow"
    assert [e.value for e in f.evidence[:2]] == [100, 100]  # the 40 before the mark are not in the window
    assert diag.drops_seen == 100 and "slow-reader" not in diag.checked
    session.close()
    assert drops.closed


def test_a_host_wide_run_diagnoses_every_namespace_under_its_label(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod's counter-only drops (a SYN at its full accept queue) are found without --netns, labelled."""
    drops = StubDrops()
    raws = iter([({}, {}, {}, {}), ({}, {}, {}, {})])
    readings = iter([
        [NetnsCounters(11, 1, "host"), NetnsCounters(22, 2, "pod", True, {"TcpExtListenOverflows": 10})],
        [NetnsCounters(11, 1, "host"), NetnsCounters(22, 2, "pod", True, {"TcpExtListenOverflows": 14,
                                                                          "TcpExtListenDrops": 4})]])
    monkeypatch.setattr(netns_counters, "read_every_namespace", lambda: (next(readings), 0))
    monkeypatch.setattr(settings_mod, "read_window_raw_marked", lambda ns, mark: (next(raws), mark()))
    monkeypatch.setattr(settings_mod, "read_settings", lambda ns, ifaces: Settings(11, "host", {}))
    monkeypatch.setattr(doctor_mod.netns, "known_namespaces", lambda: [])  # no settings for the pod: its levels
    drops.n = 0
    session = DoctorSession(DoctorQuery(trace=False), drops, None)  # type: ignore[arg-type]
    session.start()
    diag = session.summary(5_000_000_000)
    [f] = diag.findings
    assert (f.id, f.where.netns, f.where.netns_label) == ("listen-overflow", 22, "pod")
    assert next(e.value for e in f.evidence if e.counter == "nstat TcpExtListenOverflows") == 4


def test_sampled_drops_name_the_senders_of_bad_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    drops = StubDrops()
    bad = DropRow("UDP_CSUM", 11, "__udp4_lib_rcv+0x8a", "nn0", 2, 77, "udp", 1, saddr="10.9.0.7")
    samples = [DropSample(1, 0, 0, "swapper/0", 60, bad)] * 3 + [
        DropSample(2, 1, 0, "swapper/1", 60, replace(bad, saddr="10.9.0.8"))]
    drops.events = lambda: samples if samples else []  # type: ignore[method-assign]
    raws = iter([({}, {}, {}, {}), ({"UdpInCsumErrors": 4}, {}, {}, {})])
    monkeypatch.setattr(netns_counters, "read_every_namespace", lambda: ([], 0))
    monkeypatch.setattr(settings_mod, "read_window_raw_marked", lambda ns, mark: (next(raws), mark()))
    monkeypatch.setattr(settings_mod, "read_settings", lambda ns, ifaces: Settings(77, "web", {}))
    session = DoctorSession(DoctorQuery(trace=False), drops, None)  # type: ignore[arg-type]
    session.start()
    session.events()
    samples = []
    session.summary(5_000_000_000)
    assert session.observation is not None
    assert session.observation.sources == (("UDP_CSUM", "10.9.0.7", 3), ("UDP_CSUM", "10.9.0.8", 1))


def test_json_sink_prints_findings_then_a_summary_and_judges_fail_on(capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_doctor_settings import _diagnosis

    sink = DoctorSink(Terminal(json_mode=True), 10.0, "warn")
    sink.summary(_diagnosis(), "duration", [])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["type"] for x in lines] == ["finding", "summary"]
    assert lines[1]["threshold"] == {"fail_on": "warn", "crossed": True} and sink.crossed
    crit = DoctorSink(Terminal(json_mode=True), 10.0, "crit")
    crit.summary(_diagnosis(), "duration", [])
    assert not crit.crossed


def test_the_doctor_asks_for_sockets_and_two_cheap_stages() -> None:
    q = DoctorQuery()
    assert "socket" in q.drops_query().by and q.drops_query().owner_keyed
    assert q.trace_query().stages == doctor_mod.DOCTOR_STAGES and q.trace_query().per_socket
