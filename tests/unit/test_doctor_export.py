"""netpath export's netpath_finding: the doctor's rules over a rolling window, with bounded labels."""

from __future__ import annotations

from dataclasses import replace

from netpath.diagnose.rules import Observation, diagnose
from netpath.diagnose.window import RollingWindow, diff_drops
from netpath.model import Counter, DropHealth, DropRow, DropSnapshot, Settings, Window
from netpath.render.metrics import MetricSet

S = 1_000_000_000


def snap(t_s: int, rcvbuf: int, noport: int, udp_errors: int) -> DropSnapshot:
    rows = [DropRow("SOCKET_RCVBUFF", 2, None, "nn0", 2, 7, "udp", rcvbuf, netns_label="web"),
            DropRow("NO_SOCKET", 3, None, "nn0", 2, 7, "udp", noport, netns_label="web")]
    return DropSnapshot([r for r in rows if r.count], [Counter("snmp", "UdpRcvbufErrors", udp_errors)],
                        DropHealth(), rcvbuf + noport, t_s * S)


class FakeRaw:
    """read_window_raw's cumulative counters, advanced by the test."""

    def __init__(self) -> None:
        self.rcvbuf_errors = 1000  # history from before the exporter started: never counted

    def __call__(self):  # type: ignore[no-untyped-def]
        return ({"UdpRcvbufErrors": self.rcvbuf_errors}, {}, {}, {})


def test_the_window_diffs_against_the_oldest_reading_inside_it() -> None:
    raw = FakeRaw()
    win = RollingWindow(300 * S, raw)
    _, _, span = win.add(0, snap(0, 0, 0, 0))
    assert span == 0
    raw.rcvbuf_errors += 50
    delta, window, span = win.add(60 * S, snap(60, 50, 4, 50))
    assert span == 60 * S and window.snmp == {"UdpRcvbufErrors": 50}
    assert {r.reason: r.count for r in delta.rows} == {"SOCKET_RCVBUFF": 50, "NO_SOCKET": 4}
    raw.rcvbuf_errors += 10
    win.add(200 * S, snap(200, 60, 4, 60))
    delta, window, span = win.add(400 * S, snap(400, 60, 9, 60))  # the 0 s reading fell out: base is 60 s
    assert span == 340 * S
    assert {r.reason: r.count for r in delta.rows} == {"SOCKET_RCVBUFF": 10, "NO_SOCKET": 5}
    assert window.snmp == {"UdpRcvbufErrors": 10}
    delta, window, span = win.add(800 * S, snap(800, 60, 9, 60))  # quiet for the whole window: nothing
    assert delta.rows == [] and window.snmp == {} and diagnose(Observation(delta, None, window, Settings(7, "web"),
                                                                           span)) == []


def test_a_row_gone_from_the_map_is_no_negative_count() -> None:
    later = snap(10, 0, 3, 0)
    assert [r.count for r in diff_drops(later, snap(5, 7, 1, 0)).rows] == [2]


def test_netpath_finding_gauges_are_bounded() -> None:
    delta = diff_drops(snap(60, 50, 4, 50), snap(0, 0, 0, 0))
    found = diagnose(Observation(delta, None, Window(
        snmp={"UdpRcvbufErrors": 50}), Settings(7, "web"), 60 * S))
    fams = list(MetricSet(500).findings(found, 300.0))
    gauge = fams[0]
    assert gauge.name == "netpath_finding"
    got = {(s.labels["id"], s.labels["severity"], s.labels["iface"], s.labels["netns_label"]): s.value
           for s in gauge.samples}
    assert got == {("socket-rcvbuf-overflow", "warn", "nn0", "web"): 50, ("no-listener", "info", "nn0", "web"): 4}
    assert fams[1].samples[0].value == 300.0
    many = [replace(found[0], where=replace(found[0].where, iface=f"if{i}")) for i in range(5)]
    tight = next(iter(MetricSet(2).findings(many, 300.0)))
    labels = [s.labels["iface"] for s in tight.samples]
    assert len(labels) == 3 and "_other" in labels
    assert sum(s.value for s in tight.samples) == 5 * 50
