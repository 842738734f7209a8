"""netpath export scraped by a real Prometheus server (Debian's prometheus), against real traffic in namespaces."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from netpath_testlib import REPO, netpath_argv, run_netpath, send_spaced, send_udp, start_receiver, veth_namespace
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                                reason="Debian's prometheus package is not installed: run 'make install'")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ExportRun:
    """A running `netpath export`; ready once it says where it serves (after every probe is attached)."""

    def __init__(self, *args: str, ssl_context: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None,
                 listen: str | None = None) -> None:
        self.port = free_tcp_port()
        self.ssl_context = ssl_context
        self.auth = auth
        self.scheme = "https" if ssl_context is not None else "http"
        self.proc = subprocess.Popen([*netpath_argv(), "export", "--listen", listen or f"127.0.0.1:{self.port}",
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert self.proc.stderr is not None
        self.notes: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], deadline - time.monotonic())
            line = self.proc.stderr.readline() if ready else ""
            self.notes.append(line)
            if "netpath export: serving " in line:
                return
            if not line:
                break
        self.proc.kill()
        raise AssertionError(f"netpath export did not become ready: {self.notes} {self.proc.communicate()}")

    def request(self, path: str = "/metrics", openmetrics: bool = False, timeout: float = 10,
                auth: tuple[str, str] | None = None) -> urllib.request.Request:
        req = urllib.request.Request(f"{self.scheme}://127.0.0.1:{self.port}{path}")
        if openmetrics:
            req.add_header("Accept", "application/openmetrics-text; version=1.0.0; charset=utf-8")
        creds = auth or self.auth
        if creds is not None:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode())
        return req

    def scrape(self, openmetrics: bool = False, timeout: float = 10) -> str:
        with urllib.request.urlopen(self.request(openmetrics=openmetrics), timeout=timeout,
                                    context=self.ssl_context) as resp:
            return resp.read().decode()

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


@contextmanager
def exporter(*args: str, **kw: Any) -> Iterator[ExportRun]:
    run = ExportRun(*args, **kw)
    try:
        yield run
    finally:
        if run.proc.poll() is None:
            run.stop()


@contextmanager
def prometheus(target_port: int, job: str = "", rule_files: tuple[Path, ...] = ()) -> Iterator[str]:
    """A Prometheus server on loopback scraping the exporter every second; yields its base URL.

    job: more YAML keys for the scrape job (scheme, basic_auth, tls_config), indented by 4."""
    port = free_tcp_port()
    with tempfile.TemporaryDirectory(prefix="netpath-prom-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        rules = "".join(f"  - {f}\n" for f in rule_files)
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                          + (f"rule_files:\n{rules}" if rules else "") + "scrape_configs:\n"
                          f"  - job_name: netpath\n{job}    static_configs:\n"
                          f"      - targets: ['127.0.0.1:{target_port}']\n")
        proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _get(f"{base}/-/ready") is not None, 60, "prometheus did not become ready")
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read()
    except OSError:
        return None


def query(base: str, promql: str) -> list[dict]:
    raw = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    if raw is None:
        return []
    return json.loads(raw)["data"]["result"]


def wait_for(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(what)


def samples(text: str, name: str) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_prometheus_sees_exactly_the_drops_sent_and_the_receivers_queueing_delay():
    n, closed_port, port, delay_ms = 400, 40911, 40912, 50
    with veth_namespace("npex") as pair, exporter("--netns", pair.ns, "--stages", "napi_poll,socket_queue") as run:
        with prometheus(run.port) as prom:
            wait_for(lambda: query(prom, 'up{job="netpath"} == 1'), 30, "prometheus never scraped netpath")
            send_udp(pair.ns_addr, closed_port, n)
            promql = f'netpath_drops_total{{reason="NO_SOCKET",iface="{pair.ns_if}",proto="udp"}}'
            got = wait_for(lambda: [r for r in query(prom, promql) if float(r["value"][1]) == n], 30,
                           f"{promql} never reached {n}: {query(prom, promql)}")
            assert got[0]["metric"]["netns"] == str(os.stat(f"/run/netns/{pair.ns}").st_ino)
            receiver = start_receiver(pair, port, 8, delay_ms / 1000)
            send_spaced(pair.ns_addr, port, 8, delay_ms / 1000 + 0.03)
            receiver.communicate(timeout=60)
            p50 = 'histogram_quantile(0.5, netpath_stage_latency_seconds_bucket{stage="socket_queue"})'
            counted = 'netpath_stage_latency_seconds_count{stage="socket_queue"} == 8'
            wait_for(lambda: query(prom, counted), 30, "socket_queue never counted 8 datagrams")
            value = float(query(prom, p50)[0]["value"][1])
            assert abs(value - delay_ms / 1000) <= 0.2 * delay_ms / 1000, value
            assert query(prom, f'{promql} - {n}')[0]["value"][1] == "0"
        text = run.scrape()
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                               check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "# EOF" in run.scrape(openmetrics=True)
        rc, err = run.stop()
    assert rc == 0, err
    assert "stopped (SIGTERM)" in err


def test_series_past_max_series_fold_into_one_counted_overflow_and_totals_stay_exact():
    with veth_namespace("npov") as pair, exporter("--netns", pair.ns, "--max-series", "1", "--stages", "none") as run:
        rule = pair.ns_exec("iptables", "-A", "INPUT", "-p", "udp", "--dport", "40931", "-j", "DROP")
        assert rule.returncode == 0, rule.stderr
        send_udp(pair.ns_addr, 40930, 300)  # closed port: NO_SOCKET
        send_udp(pair.ns_addr, 40931, 200)  # netfilter: NETFILTER_DROP
        time.sleep(0.3)
        first = samples(run.scrape(), "netpath_drops_total")
        reasons = {dict(k)["reason"]: v for k, v in first.items()}
        assert reasons == {"NO_SOCKET": 300, "_other": 200}
        assert samples(run.scrape(), "netpath_series_dropped_total")[(("metric", "netpath_drops_total"),)] == 1
        assert samples(run.scrape(), "netpath_drops_matched_total") == {(): 500}
        send_udp(pair.ns_addr, 40931, 500)  # the folded series grows past the kept one: it stays folded
        time.sleep(0.3)
        after = {dict(k)["reason"]: v for k, v in samples(run.scrape(), "netpath_drops_total").items()}
        assert after == {"NO_SOCKET": 300, "_other": 700}


def test_bad_listen_is_exit_2_and_a_busy_port_is_exit_3():
    bad = run_netpath("export", "--listen", "localhost:99999")
    assert bad.returncode == 2 and "99999" in bad.stderr and bad.stderr.count("\n") == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = run_netpath("export", "--listen", f"127.0.0.1:{port}")
    assert taken.returncode == 3 and "already in use" in taken.stderr and "Traceback" not in taken.stderr


def test_bpf_run_time_per_program_when_the_kernel_keeps_bpf_stats():
    sysctl = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = sysctl.read_text().strip()
    sysctl.write_text("1\n")
    try:
        with exporter("--stages", "none") as run:
            send_udp("127.0.0.1", 40941, 100)
            time.sleep(0.3)
            text = run.scrape()
    finally:
        sysctl.write_text(before + "\n")
    runs = samples(text, "netpath_bpf_runs_total")
    kfree = runs[(("function", "kfree_skb"), ("program", "drops"))]
    assert kfree >= 100  # every drop ran the program, and other drops on the host may add more
    assert samples(text, "netpath_bpf_run_seconds_total")[(("function", "kfree_skb"), ("program", "drops"))] > 0


def test_series_of_a_deleted_namespace_go_away():
    with exporter("--stages", "none") as run:
        with veth_namespace("npdel") as pair:
            send_udp(pair.ns_addr, 40951, 30)
            time.sleep(0.3)
            label = ("iface", pair.ns_if)
            assert any(label in k for k in samples(run.scrape(), "netpath_drops_total")), "no series for the veth"
        time.sleep(11)  # the exporter looks for deleted interfaces at most every 10 s
        after = samples(run.scrape(), "netpath_drops_total")
        assert not any(label in k for k in after), after


def test_the_default_profile_counts_every_delivered_datagram_times_a_sample_and_keeps_drops_exact():
    """socket_queue alone: exact per datagram read, 1 in 16 timed, and no hook on the softirq's per-packet
    path (netif_receive_skb, stack_total) in the default profile; the drops exact."""
    n, port, closed = 320, 40991, 40992
    with veth_namespace("npdef") as pair, exporter("--netns", pair.ns) as run:
        receiver = start_receiver(pair, port, n, 0.0)
        for _ in range(n // 32):  # in bursts the receiver keeps up with: none overflows its buffer
            send_udp(pair.ns_addr, port, 32)
            time.sleep(0.02)
        out, _ = receiver.communicate(timeout=60)
        assert f"got {n}" in out
        send_udp(pair.ns_addr, closed, 200)
        time.sleep(0.3)
        text = run.scrape()
    packets = {dict(k)["stage"]: v for k, v in samples(text, "netpath_stage_packets_total").items()}
    timed = {dict(k)["stage"]: v for k, v in samples(text, "netpath_stage_latency_seconds_count").items()}
    assert set(packets) == {"socket_queue"}, packets
    assert packets["socket_queue"] == n, packets  # exact: every datagram, timed or not
    assert 0 < timed["socket_queue"] < n, timed  # 1 in 16 timed (expected 20)
    drops = samples(text, "netpath_drops_total")
    assert sum(v for k, v in drops.items() if dict(k)["reason"] == "NO_SOCKET") == 200
