"""contrib/grafana/netpath.json on a plain host in the default profile (`netpath export` with no options):
every panel returns data under real traffic, or its description says what fills it ("Filled by: ...": an
option such as --stages napi_poll or --by-cgroup, or a kernel setting such as kernel.bpf_stats_enabled)."""

from __future__ import annotations

import json
import subprocess
import sys

from netpath_testlib import STALLED_RECEIVER, send_spaced, send_udp, start_receiver, veth_namespace
from test_export_dashboard_live import DASHBOARD, instant, panel_queries
from test_export_live import exporter, prometheus, query, wait_for


def descriptions() -> dict[str, str]:
    return {p["title"]: p.get("description", "") for p in json.loads(DASHBOARD.read_text())["panels"]}


def test_every_panel_has_data_in_the_default_profile_or_says_what_fills_it():
    said = descriptions()
    with veth_namespace("npdp") as pair, exporter() as run, prometheus(run.port) as prom:
        wait_for(lambda: query(prom, 'up{job="netpath"} == 1'), 60, "prometheus never scraped netpath")
        send_udp(pair.ns_addr, 40991, 200)  # a closed port: NO_SOCKET drops
        stalled = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", STALLED_RECEIVER,
                                    pair.ns_addr, "40993"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert stalled.stdout is not None and stalled.stdout.readline().strip() == "ready"
        send_udp(pair.ns_addr, 40993, 300, payload=b"x" * 512)  # a full socket buffer: SOCKET_RCVBUFF
        stalled.communicate("\n", timeout=30)
        # delivered datagrams: socket_queue. The default profile times 1 in 16 of them (its count is exact in
        # netpath_stage_packets_total), so 200 leave the latency panels empty with odds of about 1 in 400,000
        receiver = start_receiver(pair, 40992, 200, 0.001)
        send_spaced(pair.ns_addr, 40992, 200, 0.005)
        receiver.communicate(timeout=60)
        wait_for(lambda: query(prom, 'netpath_stage_packets_total{stage="socket_queue"} >= 200'), 30,
                 "socket_queue never counted the received datagrams")
        wait_for(lambda: query(prom, 'netpath_drops_total{reason="NO_SOCKET"} >= 200'), 30, "no NO_SOCKET drops")
        empty, filled = [], []
        for title, promql in panel_queries(f"127.0.0.1:{run.port}"):
            result = instant(prom, promql)
            if not result and "Filled by:" not in said[title]:
                # rate() needs two samples of a series: one that first appeared at the last scrape has one
                result = wait_for(lambda q=promql: instant(prom, q), 15, f"panel {title!r} is empty and says "
                                  f"nothing of what fills it: {promql}")
            (filled if result else empty).append(title)
        # every empty panel says what fills it; and those that say so are empty here for that reason
        assert all("Filled by:" in said[t] for t in empty), [t for t in empty if "Filled by:" not in said[t]]
        assert {"NAPI polls", "Drops by container"} <= set(empty)  # BPF CPU: whether someone set bpf_stats
        assert {"Drops by reason", "Stage latency quantiles", "Receive buffer errors (SNMP)",
                "Drop counters no skb carries"} <= set(filled)
