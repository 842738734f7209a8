"""netpath export's metric families from model snapshots: names, buckets, the series bound."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from netpath.cli.export import parse_listen, parse_stages
from netpath.errors import BadInput
from netpath.kernel import bpfstats
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
from netpath.render.metrics import OTHER, MetricSet, SeriesBudget


def row(reason: str, iface: str, count: int) -> DropRow:
    return DropRow(reason, 3, None, iface, 7, 4026532000, "udp", count)


def drops(*rows: DropRow) -> DropSnapshot:
    counters = [Counter("snmp", "UdpNoPorts", 5), Counter("softnet", "dropped", 2, cpu=0)]
    health = DropHealth(probe_hits={"skb:kfree_skb": 9}, matched=sum(r.count for r in rows))
    return DropSnapshot(list(rows), counters, health, sum(r.count for r in rows), 10**9)


def values(metrics, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for fam in metrics for s in fam.samples if s.name == name}


def test_drops_by_reason_and_stats_without_softnet():
    got = list(MetricSet(10).drops(drops(row("NO_SOCKET", "lo", 30), row("NETFILTER_DROP", "veth0", 4))))
    d = values(got, "netpath_drops_total")
    assert d == {(("iface", "lo"), ("netns", "4026532000"), ("netns_label", ""), ("proto", "udp"),
                  ("reason", "NO_SOCKET")): 30,
                 (("iface", "veth0"), ("netns", "4026532000"), ("netns_label", ""), ("proto", "udp"),
                  ("reason", "NETFILTER_DROP")): 4}
    assert values(got, "netpath_rx_stat_total") == {
        (("iface", ""), ("netns", ""), ("netns_label", ""), ("pod", ""), ("pod_namespace", ""), ("source", "snmp"),
         ("stat", "UdpNoPorts")): 5}
    assert values(got, "netpath_drops_matched_total") == {(): 34}


def test_drops_by_cgroup_carry_cgroup_and_container_labels():
    from dataclasses import replace

    from netpath.model import Owner

    snap = drops(replace(row("SOCKET_RCVBUFF", "veth0", 7), owner=Owner(cgroup="/system.slice/dns.service",
                                                                        container="systemd:dns.service")))
    snap.owner_keyed = True
    d = values(list(MetricSet(10).drops(snap)), "netpath_drops_total")
    (labels,) = d
    assert dict(labels)["cgroup"] == "/system.slice/dns.service" and dict(labels)["container"] == "systemd:dns.service"
    assert dict(labels)["pod"] == "" and dict(labels)["pod_namespace"] == ""


def test_drops_by_cgroup_carry_pod_labels_from_the_runtime():
    from dataclasses import replace

    from netpath.model import Owner

    owner = Owner(cgroup="/kubepods/pod1/abc", container="srv", pod="web-0", pod_namespace="shop")
    snap = drops(replace(row("SOCKET_RCVBUFF", "veth0", 7), owner=owner))
    snap.owner_keyed = True
    (labels,) = values(list(MetricSet(10).drops(snap)), "netpath_drops_total")
    assert {k: v for k, v in labels if k in ("container", "pod", "pod_namespace")} == {
        "container": "srv", "pod": "web-0", "pod_namespace": "shop"}


def test_overflow_is_sticky_counted_and_never_goes_backwards():
    m = MetricSet(1)
    first = values(list(m.drops(drops(row("NO_SOCKET", "lo", 30), row("NETFILTER_DROP", "lo", 4)))),
                   "netpath_drops_total")
    assert {dict(k)["reason"]: v for k, v in first.items()} == {"NO_SOCKET": 30, OTHER: 4}
    # the folded row overtakes the kept one: it stays folded, nothing moves between series
    second = values(list(m.drops(drops(row("NO_SOCKET", "lo", 31), row("NETFILTER_DROP", "lo", 90)))),
                    "netpath_drops_total")
    assert {dict(k)["reason"]: v for k, v in second.items()} == {"NO_SOCKET": 31, OTHER: 90}
    # the folded interface goes away: _other keeps what it had counted
    third = values(list(m.drops(drops(row("NO_SOCKET", "lo", 32)))), "netpath_drops_total")
    assert {dict(k)["reason"]: v for k, v in third.items()} == {"NO_SOCKET": 32, OTHER: 90}
    health = values(list(m.health({}, 0.01, {})), "netpath_series_dropped_total")
    assert health[(("metric", "netpath_drops_total"),)] == 1


def test_a_kept_series_that_goes_away_frees_its_place():
    budget = SeriesBudget(1)
    assert budget.split({("a",): (5.0,)}) == ({("a",): (5.0,)}, None)
    assert budget.split({("b",): (2.0,)}) == ({("b",): (2.0,)}, None)


def test_histograms_use_power_of_two_bounds_in_seconds_and_napi_per_device():
    lat = Latency(3, 1, 2, 3, 40_000_000, 60_000_000, 20_000_000,
                  (Bucket(1 << 24, 1 << 25, 2), Bucket(1 << 25, 1 << 26, 1)))
    napi = Napi(10, 25, 64, 1, 64)
    stages = (StageRow("socket_queue", "h", "raw_tracepoint", lat),
              StageRow("napi_poll", "h", "raw_tracepoint", Latency(), (), napi,
                       ((Where("veth0", 7, 4026532000, 0), napi),)))
    snap = TraceSnapshot(stages, (Unavailable("ip_rcv", "kprobe ip_rcv: no kprobes", "ip_rcv"),), {},
                         TraceHealth(probe_hits={"napi:napi_poll": 10}, missed_enqueue=2), 10**9)
    got = list(MetricSet(10).trace(snap))
    buckets = values(got, "netpath_stage_latency_seconds_bucket")
    sq = {dict(k)["le"]: v for k, v in buckets.items() if dict(k)["stage"] == "socket_queue"}
    assert sq[repr((1 << 24) / 1e9)] == 0 and sq[repr((1 << 25) / 1e9)] == 2 and sq[repr((1 << 26) / 1e9)] == 3
    assert sq["+Inf"] == 3
    assert values(got, "netpath_stage_latency_seconds_sum")[(("stage", "socket_queue"),)] == 0.06
    dev = (("iface", "veth0"), ("netns", "4026532000"))
    assert values(got, "netpath_napi_polls_total") == {dev: 10}
    assert values(got, "netpath_napi_packets_total") == {dev: 25}
    assert values(got, "netpath_napi_budget_exhausted_total") == {dev: 1}
    assert values(got, "netpath_stage_unavailable") == {(("reason", "kprobe ip_rcv: no kprobes"),
                                                         ("stage", "ip_rcv")): 1}
    assert values(got, "netpath_trace_untimed_total")[(("why", "read_before_wakeup"),)] == 2


def test_exposition_is_valid_text_with_build_info_and_bpf_run_time():
    class One:
        def collect(self):
            m = MetricSet(5)
            yield from m.drops(drops(row("NO_SOCKET", "lo", 1)))
            yield from m.health({("drops", "skb:kfree_skb"): 1}, 0.002, {("drops", "kfree_skb"): (10, 2500)})

    reg = CollectorRegistry(auto_describe=False)
    reg.register(One())  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    assert 'netpath_probe_hits_total{hook="skb:kfree_skb",program="drops"} 1.0' in text
    assert 'netpath_bpf_run_seconds_total{function="kfree_skb",program="drops"} 2.5e-06' in text
    assert "# TYPE netpath_drops_total counter" in text


@pytest.mark.parametrize(("text", "want"), [("127.0.0.1:9872", ("127.0.0.1", 9872)), (":9000", ("::", 9000)),
                                            ("[::1]:9872", ("::1", 9872)), ("localhost:1", ("127.0.0.1", 1)),
                                            ("0.0.0.0:80", ("0.0.0.0", 80))])
def test_listen_addresses(text: str, want: tuple[str, int]):
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["9872", "host:9872", "127.0.0.1:0", "127.0.0.1:65536", "1.2.3.4:x", "",
                                  "::1:9872", "::9872", "2001:db8::1:80"])
def test_bad_listen_names_the_value(text: str):
    with pytest.raises(BadInput, match=repr(text).replace("[", r"\[").replace(".", r"\.")):
        parse_listen(text)


def test_an_unbracketed_ipv6_listen_says_how_to_write_it():
    with pytest.raises(BadInput, match=r"'::1:9872': put an IPv6 address in brackets, e\.g\. \[::1\]:9872"):
        parse_listen("::1:9872")


@pytest.mark.parametrize(("listen", "want"), [("[::1]:9872", "http://[::1]:9872/metrics"),
                                              ("127.0.0.1:80", "http://127.0.0.1:80/metrics")])
def test_the_served_url_brackets_ipv6(listen: str, want: str):
    from netpath.cli.export import metrics_url

    assert metrics_url("http", *parse_listen(listen)) == want


def test_stages_option():
    assert parse_stages("napi_poll, socket_queue") == ("napi_poll", "socket_queue")
    assert parse_stages("none") == ()
    with pytest.raises(BadInput, match="'sockq'"):
        parse_stages("napi_poll,sockq")
    with pytest.raises(BadInput, match="empty"):
        parse_stages(" , ")


def test_bpf_stats_from_fdinfo(tmp_path):
    fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t17\nrun_time_ns:\t123456\nrun_cnt:\t789\n"
    assert bpfstats.parse_fdinfo(fdinfo) == (789, 123456)
    assert bpfstats.parse_fdinfo("pos:\t0\n") is None
    sysctl = tmp_path / "bpf_stats_enabled"
    sysctl.write_text("0\n")
    assert not bpfstats.enabled(sysctl)
    sysctl.write_text("1\n")
    assert bpfstats.enabled(sysctl)


def created_of(metrics, name: str) -> dict[tuple, float]:
    return values(metrics, name.removesuffix("_total") + "_created")


def test_created_is_attach_time_first_then_the_previous_scrape_for_series_that_appear_later():
    ms = MetricSet(10)
    ms.started = 1000.0
    first = list(ms.drops(drops(row("NO_SOCKET", "lo", 30))))
    ms.scraped(1010.0)
    assert set(created_of(first, "netpath_drops_total").values()) == {1000.0}
    assert created_of(first, "netpath_drops_matched_total") == {(): 1000.0}
    second = list(ms.drops(drops(row("NO_SOCKET", "lo", 40), row("NETFILTER_DROP", "veth0", 5))))
    ms.scraped(1020.0)
    by_reason = {dict(k)["reason"]: v for k, v in created_of(second, "netpath_drops_total").items()}
    assert by_reason == {"NO_SOCKET": 1000.0, "NETFILTER_DROP": 1010.0}  # veth0's was zero at the 1010 scrape
    list(ms.drops(drops(row("NO_SOCKET", "lo", 40))))  # veth0 gone (interface deleted)
    ms.scraped(1030.0)
    back = list(ms.drops(drops(row("NO_SOCKET", "lo", 40), row("NETFILTER_DROP", "veth0", 2))))
    by_reason = {dict(k)["reason"]: v for k, v in created_of(back, "netpath_drops_total").items()}
    assert by_reason["NETFILTER_DROP"] == 1030.0


def test_no_created_samples_before_the_start_time_is_known():
    assert created_of(list(MetricSet(10).drops(drops(row("NO_SOCKET", "lo", 3)))), "netpath_drops_total") == {}


def test_created_goes_to_openmetrics_only_and_scrapes_share_one_map_reading():
    import threading
    import time

    from netpath.cli.http_server import SharedScrape

    calls = []

    def collect():
        calls.append(time.monotonic())
        time.sleep(0.05)
        ms = MetricSet(10)
        ms.started = 1000.0
        return list(ms.drops(drops(row("NO_SOCKET", "lo", 30))))

    scrape = SharedScrape(collect)
    text, ctype = scrape.body("text/plain", False)
    assert b"netpath_drops_total{" in text and b"_created" not in text and ctype.startswith("text/plain")
    om, octype = scrape.body("application/openmetrics-text; version=1.0.0", False)
    assert b"netpath_drops_created{" in om and om.endswith(b"# EOF\n") and octype.startswith("application/openmetrics")
    assert len(calls) == 2  # a scrape never gets a reading that began before it arrived
    threads = [threading.Thread(target=scrape.body, args=("", True)) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 3 <= len(calls) < 2 + 20  # waiting scrapes shared readings
    assert scrape.close(timeout=1)
