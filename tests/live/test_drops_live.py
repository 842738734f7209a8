"""netpath drops against real traffic on this kernel: counts must equal what was sent."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from netpath_testlib import (
    STALLED_RECEIVER,
    NetpathRun,
    free_udp_port,
    ip,
    netpath_argv,
    run_netpath,
    send_udp,
    veth_namespace,
)


def rows_by_reason(summary: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in summary["rows"]:
        out[row["reason"]] = out.get(row["reason"], 0) + row["count"]
    return out


def test_closed_port_on_loopback_counts_exactly_no_socket():
    port = free_udp_port()
    run = NetpathRun(["drops", "--port", str(port), "--json", "--duration", "3"])
    start = run.wait_start()
    assert start["schema"] == "netpath/1" and start["attached"][0]["hook"] == "skb:kfree_skb"
    send_udp("127.0.0.1", port, 3000)
    rc, records, err = run.finish()
    assert rc == 0, err
    summary = run.summary()
    assert summary["stop_reason"] == "duration"
    assert [(r["reason"], r["iface"], r["proto"], r["count"]) for r in summary["rows"]] == [
        ("NO_SOCKET", "lo", "udp", 3000)
    ]
    row = summary["rows"][0]
    assert row["reason_code"] > 0 and row["location"].startswith("__udp4_lib_rcv+0x")
    assert row["dport"] == port and row["daddr"] == "127.0.0.1" and row["family"] == 4
    assert sum(r["count"] for rec in records if rec["type"] == "interval" for r in rec["rows"]) == 3000
    assert summary["health"]["lost_rows"] == 0
    snmp = {c["name"]: c["count"] for c in summary["counters"] if c["source"] == "snmp"}
    assert snmp.get("UdpNoPorts", 0) >= 3000
    assert all(rec["schema"] == "netpath/1" for rec in records)


def test_netfilter_drop_in_a_namespace_is_counted_on_that_namespaces_interface():
    n = 500
    with veth_namespace() as pair:
        port = 40123
        rule = pair.ns_exec("iptables", "-A", "INPUT", "-p", "udp", "--dport", str(port), "-j", "DROP")
        assert rule.returncode == 0, rule.stderr
        run = NetpathRun(["drops", "--netns", pair.ns, "--iface", pair.ns_if, "--json", "--duration", "3"])
        start = run.wait_start()
        assert start["filters"]["iface"] == [pair.ns_if]
        send_udp(pair.ns_addr, port, n)
        rc, _records, err = run.finish()
        assert rc == 0, err
        summary = run.summary()
        nf_rows = [r for r in summary["rows"] if r["reason"] == "NETFILTER_DROP"]
        assert sum(r["count"] for r in nf_rows) == n
        assert {r["iface"] for r in nf_rows} == {pair.ns_if}
        assert {r["proto"] for r in nf_rows} == {"udp"}
        ns_inode = os.stat(f"/run/netns/{pair.ns}").st_ino
        assert {r["netns"] for r in nf_rows} == {ns_inode}
        assert all(r["netns"] == ns_inode for r in summary["rows"])
        counted = pair.ns_exec("iptables", "-L", "INPUT", "-v", "-x", "-n").stdout
        assert any(line.split()[0] == str(n) for line in counted.splitlines()[2:] if "DROP" in line)


def test_socket_receive_buffer_overflow_counts_what_the_socket_did_not_receive():
    """A UDP socket with a tiny SO_RCVBUF that never reads, in its own namespace so SNMP is its own."""
    sent, port = 2000, 40777
    with veth_namespace() as pair:
        rx = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", STALLED_RECEIVER, pair.ns_addr,
                               str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        run = NetpathRun(["drops", "--netns", pair.ns, "--port", str(port), "--json", "--duration", "3"])
        run.wait_start()
        send_udp(pair.ns_addr, port, sent, payload=b"y" * 200)
        time.sleep(0.5)
        received = int(rx.communicate("go\n", timeout=30)[0].strip())
        rc, _records, err = run.finish()
        assert rc == 0, err
    summary = run.summary()
    assert 0 < received < sent
    assert rows_by_reason(summary) == {"SOCKET_RCVBUFF": sent - received}
    snmp = {c["name"]: c["count"] for c in summary["counters"] if c["source"] == "snmp"}
    assert snmp.get("UdpRcvbufErrors") == sent - received


def test_reason_filter_and_fail_on_drops_threshold():
    port = free_udp_port()
    run = NetpathRun(["drops", "--port", str(port), "--reason", "no_socket", "--json", "--duration", "2",
                      "--fail-on-drops", "100"])
    run.wait_start()
    send_udp("127.0.0.1", port, 150)
    rc, _records, err = run.finish()
    assert rc == 1, err
    summary = run.summary()
    assert summary["threshold"] == {"fail_on_drops": 100, "crossed": True}
    assert summary["total"] == 150


def test_threshold_not_crossed_exits_0():
    port = free_udp_port()
    run = NetpathRun(["drops", "--port", str(port), "--json", "--duration", "1.5", "--fail-on-drops", "100"])
    run.wait_start()
    send_udp("127.0.0.1", port, 99)
    rc, _records, _err = run.finish()
    assert rc == 0 and run.summary()["total"] == 99


def test_samples_carry_the_flow_and_lost_samples_are_reported():
    port = free_udp_port()
    run = NetpathRun(["drops", "--port", str(port), "--json", "--count", "2", "--samples", "5", "--stack"])
    run.wait_start()
    send_udp("127.0.0.1", port, 50)
    rc, records, err = run.finish()
    assert rc == 0, err
    samples = [r for r in records if r["type"] == "sample"]
    assert 1 <= len(samples) <= 5 * os.cpu_count()
    assert all(s["dport"] == port and s["reason"] == "NO_SOCKET" and s["comm"] for s in samples)
    health = run.summary()["health"]
    assert health["samples"] == len(samples) and health["lost_samples"] == 0
    assert health["skipped_samples"] == 50 - len(samples)
    assert any("__udp4_lib_rcv" in frame for frame in run.summary()["rows"][0]["stack"])


def test_sigterm_prints_the_summary_and_detaches():
    run = NetpathRun(["drops", "--json"])
    run.wait_start()
    run.proc.send_signal(signal.SIGTERM)
    rc, _records, _err = run.finish()
    assert rc == 0
    assert run.summary()["stop_reason"] == "SIGTERM"


def _loaded_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out)}


def _prog_ids_held_by(pid: int) -> set[int]:
    """BPF programs whose fds this process holds (fdinfo names them by prog_id)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            text = open(f"/proc/{pid}/fdinfo/{fd}").read()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    return ids


def test_kill_9_leaves_nothing_attached():
    run = NetpathRun(["drops", "--json", "--samples", "1", "--stack"])
    run.wait_start()
    ours = _prog_ids_held_by(run.proc.pid)
    assert ours and ours <= _loaded_prog_ids(), "the kfree_skb program should be loaded while netpath runs"
    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and ours & _loaded_prog_ids():
        time.sleep(0.1)
    assert not ours & _loaded_prog_ids()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--iface", "nosuch0"], "nosuch0"),
        (["--port", "65536"], "65536"),
        (["--host", "300.1.1.1"], "300.1.1.1"),
        (["--netns", "nonexistent-netns"], "nonexistent-netns"),
    ],
)
def test_bad_input_exit_2(args, needle):
    proc = run_netpath("drops", *args, "--duration", "1")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert needle in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_not_root_exit_3_with_the_fix():
    proc = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all",
         *__import__("netpath_testlib").netpath_argv(), "drops", "--duration", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert "sudo" in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_iface_in_wrong_namespace_is_bad_input():
    with veth_namespace() as pair:
        proc = run_netpath("drops", "--iface", pair.ns_if, "--duration", "1")  # lives in pair.ns, not here
        assert proc.returncode == 2 and pair.ns_if in proc.stderr
        ip("link", "show", pair.host_if)


def test_a_namespace_deleted_mid_run_is_reported_and_the_run_still_summarises():
    n, port = 200, 40555
    with veth_namespace("npgone") as pair:
        run = NetpathRun(["drops", "--netns", pair.ns, "--json", "--interval", "0.5", "--duration", "3"])
        run.wait_start()
        send_udp(pair.ns_addr, port, n)
        time.sleep(0.8)
        ip("link", "del", pair.host_if)
        ip("netns", "del", pair.ns)
        rc, records, err = run.finish()
    assert rc == 0, err
    summary = run.summary()
    assert summary["stop_reason"] == "duration"
    assert any("is gone" in w for w in summary.get("warnings", [])), summary
    said = [w for rec in records if rec["type"] == "interval" for w in rec.get("warnings", [])]
    assert len(said) == 1
    assert rows_by_reason(summary).get("NO_SOCKET") == n


def test_a_reader_that_goes_away_is_a_quiet_exit_not_a_threshold():
    """`netpath drops --json | head -1`: 141 (SIGPIPE's status), never 1, 2 or 3, and no traceback."""
    cmd = " ".join(shlex.quote(a) for a in netpath_argv())
    for args in ("drops --json --interval 0.2 --duration 5", "trace --interval 0.2 --duration 5"):
        proc = subprocess.run(["bash", "-c", f"{cmd} {args} | head -1 >/dev/null; echo ${{PIPESTATUS[0]}}"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.stdout.strip() == "141", (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and "error" not in proc.stderr


def test_closed_stdout_is_exit_3_with_the_fix():
    cmd = " ".join(shlex.quote(a) for a in netpath_argv())
    proc = subprocess.run(["bash", "-c", f"{cmd} drops --duration 1 >&-"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1 and "standard output is closed" in proc.stderr


def test_a_stopped_and_continued_run_reports_the_gap_once_not_a_burst_of_empty_intervals():
    run = NetpathRun(["drops", "--json", "--interval", "0.5", "--count", "4"])
    run.wait_start()
    time.sleep(0.7)
    run.proc.send_signal(signal.SIGSTOP)
    time.sleep(3.0)
    run.proc.send_signal(signal.SIGCONT)
    rc, records, err = run.finish()
    assert rc == 0, err
    intervals = [r for r in records if r["type"] == "interval"]
    assert len(intervals) == 4 and run.summary()["stop_reason"] == "count"
    spans = [r["interval_ns"] for r in intervals]
    assert max(spans) >= 2.5e9, spans  # one report covers the stop
    assert min(spans) >= 0.25e9, spans  # and no catch-up reports right after it
