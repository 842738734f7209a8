"""render/exposition.py writes exactly prometheus_client's bytes, text and OpenMetrics, scrape after scrape,
and hands back to prometheus_client whatever it does not write the same."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.exposition import generate_latest as text_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.samples import Exemplar, Sample

from netpath.cli.http_server import SharedScrape, _Families
from netpath.model import (
    Bucket,
    Counter,
    DropHealth,
    DropRow,
    DropSnapshot,
    Latency,
    Napi,
    StageRow,
    TraceHealth,
    TraceSnapshot,
    Unavailable,
    Where,
)
from netpath.render.exposition import Exposition
from netpath.render.metrics import MetricSet

ODD = ['plain', 'quo"te', 'back\\slash', 'new\nline', 'ünïcödé ✓', '', '{}=,', 'tab\there']


class Reg:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def netpath_families(counts: int = 3, started: float | None = 1000.0) -> list[Metric]:
    """What the exporter's collector yields: drops, namespace counters, trace, findings, health, build info."""
    ms = MetricSet(4)
    ms.started = started
    rows = [DropRow(reason, 3, None, iface, 7, 4026532000, "udp", counts + i)
            for i, (reason, iface) in enumerate([("NO_SOCKET", "lo"), ("NETFILTER_DROP", "veth0"),
                                                 ("SOCKET_RCVBUFF", 'we"ird\\name'), ("X", "a"), ("Y", "b"),
                                                 ("Z", "c")])]
    counters = [Counter("snmp", "UdpNoPorts", 5), Counter("softnet", "dropped", 2, cpu=0),
                Counter("link", "rx_dropped", 4, iface="eth0")]
    netns = [Counter("snmp", "UdpRcvbufErrors", 0, netns=4026532001, netns_label="pod\nx", pod="p", pod_namespace="ns")]
    snap = DropSnapshot(rows, counters, DropHealth(probe_hits={"skb:kfree_skb": 9}, matched=30, lost_rows=1), 30,
                        10**9)
    snap.netns_counters = netns
    lat = Latency(3, 1, 2, 3, 40_000_000, 60_000_000, 20_000_000,
                  (Bucket(1 << 24, 1 << 25, 2), Bucket(1 << 25, 1 << 26, 1)))
    napi = Napi(10, 25, 64, 1, 64)
    stages = (StageRow("socket_queue", "h", "tp_btf", lat),
              StageRow("napi_poll", "h", "raw_tracepoint", Latency(), (), napi,
                       ((Where("veth0", 7, 4026532000, 0), napi),)))
    trace = TraceSnapshot(stages, (Unavailable("ip_rcv", "kprobe ip_rcv: no kprobes", "ip_rcv"),), {},
                          TraceHealth(probe_hits={"sock:sk_data_ready": 10}, missed_enqueue=2), 10**9)
    out = [*ms.drops(snap), *ms.trace(trace), *ms.findings([], 12.5)]
    out.append(ms.build_info(SimpleNamespace(kernel="6.18.0-1", headers="shim"), "0.9"))  # type: ignore[arg-type]
    out.extend(ms.health({("drops", "skb:kfree_skb"): 9}, 0.0012345, {("drops", "kfree_skb"): (10, 2500)}))
    ms.scraped(2000.0)
    return out


def odd_families() -> list[Metric]:
    c = CounterMetricFamily("odd", 'doc with "quotes", back\\slash\nand a newline', labels=["a", "b"])
    for i, v in enumerate(ODD):
        c.add_metric([v, ODD[-1 - i]], float(i), created=1700000000.5 + i)
    g = GaugeMetricFamily("g_values", "special values", labels=["k"])
    for i, value in enumerate([0.0, -0.0, 1e-9, 123456789.0, 1e21, float("inf"), float("-inf"), float("nan"), 7,
                               2**53 + 1, 0.1 + 0.2]):
        g.add_metric([str(i)], value)
    h = HistogramMetricFamily("h_seconds", "histogram", labels=["stage"], unit="seconds")
    h.add_metric(["x"], [("0.001", 1), ("1e+07", 3), ("+Inf", 4)], 2.5)
    h.samples.append(Sample("h_seconds_created", {"stage": "x"}, 1234.0))
    gauge_no_labels = GaugeMetricFamily("plain_gauge", "no labels", value=3.0)
    info = InfoMetricFamily("np_build", "info", value={"version": "1", "x": 'y"z'})
    st = StateSetMetricFamily("np_state", "stateset", value={"a": True, "b": False})
    summ = SummaryMetricFamily("np_sum", "summary", count_value=3, sum_value=1.5)
    empty = CounterMetricFamily("np_empty", "no samples", labels=["a"])
    return [c, g, h, gauge_no_labels, info, st, summ, empty]


def ours(families: list[Metric], om: bool, enc: Exposition | None = None, **kw: Any) -> bytes | None:
    return (enc or Exposition()).encode(iter(families), om, **kw)


@pytest.mark.parametrize("make", [netpath_families, odd_families, lambda: netpath_families(started=None)])
@pytest.mark.parametrize("escaping", ["underscores", "allow-utf-8"])
def test_the_same_bytes_as_prometheus_client(make: Any, escaping: str) -> None:
    fams = make()
    assert ours(fams, False, escaping=escaping) == text_latest(Reg(fams), escaping=escaping)  # type: ignore[arg-type]
    assert ours(fams, True, escaping=escaping) == om_latest(Reg(fams), escaping=escaping)


def test_the_same_bytes_scrape_after_scrape_as_label_sets_come_and_go() -> None:
    enc = Exposition()
    for counts in (1, 2, 2, 50, 7, 7, 1):
        fams = netpath_families(counts)
        fams = fams[: 1 + counts % 5] + fams[5:]  # some families and series absent in some scrapes
        for om in (False, True, False):
            want = (om_latest if om else text_latest)(Reg(fams))  # type: ignore[operator]
            assert ours(fams, om, enc) == want


def test_what_it_cannot_write_the_same_goes_back_to_prometheus_client() -> None:
    c = CounterMetricFamily("np_c", "c", labels=["a"])
    c.add_metric(["x"], 1.0)
    assert ours([c], False, escaping="dots") is None  # dots rewrites every '_'
    assert ours([c], True, version="2.0.0") is None
    bad_label = GaugeMetricFamily("np_g", "g", labels=["bad-label"])
    bad_label.add_metric(["x"], 1.0)
    assert ours([bad_label], False) is None
    assert ours([GaugeMetricFamily("np.dotted", "g", value=1.0)], True) is None
    colon = GaugeMetricFamily("np:colon", "g", value=1.0)
    assert ours([colon], True) is None  # OpenMetrics' underscores escaping rewrites the ':'
    assert ours([colon], False) == text_latest(Reg([colon]))  # type: ignore[arg-type]
    stamped = GaugeMetricFamily("np_t", "t")
    stamped.samples.append(Sample("np_t", {}, 1.0, timestamp=5.0))
    assert ours([stamped], True) is None
    ex = CounterMetricFamily("np_e", "e")
    ex.samples.append(Sample("np_e_total", {}, 1.0, None, Exemplar({"trace": "1"}, 1.0)))
    assert ours([ex], True) is None


@pytest.mark.parametrize("accept", ["", "text/plain", "text/plain; version=1.0.0; escaping=allow-utf-8",
                                    "application/openmetrics-text", "application/openmetrics-text; version=1.0.0",
                                    "application/openmetrics-text; version=1.0.0; escaping=underscores",
                                    "application/openmetrics-text; version=1.0.0; escaping=dots",
                                    "application/openmetrics-text; version=2.0.0"])
def test_a_scrape_serves_what_prometheus_clients_encoder_writes(accept: str) -> None:
    fams = netpath_families()
    scrape = SharedScrape(lambda: fams)
    encoder, ctype = choose_encoder(accept)
    for _ in range(2):
        body, got_type = scrape.body(accept, False)
        assert got_type == ctype
        assert body == encoder(_Families(fams, ctype.startswith("application/openmetrics-text")))
        scrape._started = float("-inf")  # the next scrape reads afresh


def test_a_default_scrape_is_written_here_not_by_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import exposition

    fams = netpath_families()
    want = text_latest(_Families(fams, False))  # type: ignore[arg-type]
    monkeypatch.setattr(exposition, "generate_latest", lambda *_a, **_k: pytest.fail("prometheus_client encoded"))
    scrape = SharedScrape(lambda: fams)
    # choose_encoder hands back the module's function as it was imported: the original, not the stub
    assert scrape.body("", False)[0] == want
