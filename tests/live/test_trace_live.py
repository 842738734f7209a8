"""netpath trace against real traffic in namespaces these tests create (10.201.x.x only)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from netpath_testlib import NetpathRun, run_netpath, rx_packets, send_spaced, send_udp, start_receiver, veth_namespace

# the default takes the hand-off time from skb->tstamp and times 1 in 16; --exact keeps netpath's own
# hand-off hooks and times every packet; --sample 1 times every packet from skb->tstamp
MODES = [pytest.param([], id="tstamp"), pytest.param(["--exact"], id="exact")]
TIMED_MODES = [pytest.param(["--sample", "1"], id="tstamp"), pytest.param(["--exact"], id="exact")]


def _stage(record: dict, stage: str) -> dict:
    return next(s for s in record["stages"] if s["stage"] == stage)


@pytest.mark.parametrize("mode", TIMED_MODES)
@pytest.mark.parametrize("delay_ms", [20, 100])
def test_socket_queue_measures_the_application_delay(delay_ms: int, mode: list[str]) -> None:
    n, port = 10, 40000 + delay_ms
    with veth_namespace("nptq") as pair:
        run = NetpathRun(["trace", "--json", "--interval", "1", "--proto", "udp", "--port", str(port), *mode])
        start = run.wait_start()
        receiver = start_receiver(pair, port, n, delay_ms / 1000)
        send_spaced(pair.ns_addr, port, n, delay_ms / 1000 + 0.04)
        receiver.communicate(timeout=60)
        time.sleep(1.2)
        run.proc.send_signal(2)
        rc, _records, err = run.finish()
    assert rc == 0, err
    summary = run.summary()
    assert summary["stop_reason"] == "SIGINT"
    sq = _stage(summary, "socket_queue")
    assert sq["count"] == n
    assert abs(sq["p50_ns"] - delay_ms * 1e6) <= 0.2 * delay_ms * 1e6, sq
    assert abs(sq["mean_ns"] - delay_ms * 1e6) <= 0.2 * delay_ms * 1e6, sq
    # the stage's method is what its hooks were attached with, as the start line says (one name each)
    attached = {a["hook"]: a["method"] for a in start["attached"]}
    assert sq["method"] == "+".join(dict.fromkeys(attached[h] for h in sq["hook"].split("+"))), (sq, attached)
    assert sq["method"] == ("raw_tracepoint" if "--exact" in mode else "tp_btf+raw_tracepoint")
    assert sq["timed"] == n and sq["sample_every"] == 1


def test_default_runs_the_packet_stages_and_stages_all_adds_the_softirq_ones() -> None:
    default = NetpathRun(["trace", "--json", "--count", "1", "--interval", "0.2"])
    start = default.wait_start()
    assert default.finish()[0] == 0
    hooks = {a["hook"] for a in start["attached"]}
    assert "irq:softirq_entry" not in hooks and "napi:napi_poll" not in hooks and "net:netif_receive_skb" in hooks
    assert start["not_selected"] == ["hardirq", "softirq_wait", "net_rx_action", "napi_poll", "gro"]
    every = NetpathRun(["trace", "--json", "--count", "1", "--interval", "0.2", "--stages", "all"])
    start = every.wait_start()
    assert every.finish()[0] == 0
    assert {"irq:softirq_raise", "irq:softirq_entry", "napi:napi_poll"} <= {a["hook"] for a in start["attached"]}
    assert start["not_selected"] == []
    for bad in ("napi", "none", ","):
        res = run_netpath("trace", "--stages", bad)
        assert res.returncode == 2 and "--stages" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res
    res = run_netpath("trace", "--sample", "3")
    assert res.returncode == 2 and "--sample 3" in res.stderr, res


def test_sampled_timing_keeps_every_count_exact_and_times_about_one_in_sixteen() -> None:
    n, port, delay_s = 160, 40031, 0.02
    with veth_namespace("nptm") as pair:
        run = NetpathRun(["trace", "--json", "--interval", "1", "--proto", "udp", "--port", str(port)])
        start = run.wait_start()
        receiver = start_receiver(pair, port, n, delay_s)
        send_spaced(pair.ns_addr, port, n, delay_s + 0.03)
        receiver.communicate(timeout=120)
        time.sleep(1.2)
        run.proc.send_signal(2)
        rc, records, err = run.finish()
    assert rc == 0, err
    assert start["sample_every"] == 16
    summary = run.summary()
    missed = summary["health"]["missed_enqueue"]
    nrs, st, sq = (_stage(summary, s) for s in ("netif_receive_skb", "stack_total", "socket_queue"))
    assert nrs["count"] == n and nrs["sample_every"] == 16
    assert st["count"] == sq["count"] == n - missed, (st, sq, summary["health"])
    # 1 in 16 of 160, picked at random: 10 expected; none at all has odds of 3e-5
    assert 1 <= sq["timed"] <= 40 and 1 <= nrs["timed"] <= 40, (sq, nrs)
    assert sum(b["count"] for b in sq["buckets"]) == sq["timed"]
    assert abs(sq["p50_ns"] - delay_s * 1e9) <= 0.2 * delay_s * 1e9, sq
    intervals = [r for r in records if r["type"] == "interval"]
    assert sum(_stage(r, "socket_queue")["count"] for r in intervals) == sq["count"]


def _burst(pair, args: list[str], port: int, n: int, sig: int) -> tuple[NetpathRun, dict]:
    """Trace while n datagrams go to a receiver that reads at once, then stop netpath with sig."""
    run = NetpathRun(["trace", "--json", "--interval", "1", *args])
    start = run.wait_start()
    receiver = start_receiver(pair, port, n, 0.0)
    send_udp(pair.ns_addr, port, n)
    receiver.communicate(timeout=30)
    time.sleep(1.2)
    run.proc.send_signal(sig)
    return run, start


@pytest.mark.parametrize("mode", MODES)
def test_stage_counts_equal_datagrams_on_a_veth(mode: list[str]) -> None:
    n, port = 50, 40555
    with veth_namespace("nptc") as pair:
        run, start = _burst(pair, ["--port", str(port), "--per-iface", *mode], port, n, signal.SIGTERM)
        rc, records, err = run.finish()
    assert rc == 0, err
    exact = "--exact" in mode
    assert start["handoff"] == ("hooks" if exact else "skb_tstamp")
    hooked = {a["hook"] for a in start["attached"]}
    assert ("net:netif_rx" in hooked) == exact and ("skb:consume_skb" in hooked) == exact
    assert {u["stage"] for u in start["unavailable"]} <= {"ip_rcv", "ip_local_deliver", "tcp_v4_rcv", "udp_rcv"}
    summary = run.summary()
    assert summary["stop_reason"] == "SIGTERM"
    # a datagram read before its wakeup ran is counted in health, not timed (a race the reader wins rarely)
    missed = summary["health"]["missed_enqueue"]
    assert missed <= n // 10, summary["health"]
    assert _stage(summary, "netif_receive_skb")["count"] == n
    for stage in ("stack_total", "socket_queue"):
        assert _stage(summary, stage)["count"] == n - missed, (stage, _stage(summary, stage))
    parts = _stage(summary, "socket_queue")["breakdown"]
    assert [p["iface"] for p in parts] == [pair.ns_if]
    # the per-interface maps keep the stage's total time too, and the total is the sum of its parts
    assert parts[0]["sum_ns"] == _stage(summary, "socket_queue")["sum_ns"] > 0
    intervals = [r for r in records if r["type"] == "interval"]
    assert sum(_stage(r, "socket_queue")["count"] for r in intervals) == n - missed
    assert summary["health"]["probe_hits"]["net:netif_receive_skb"] >= n
    assert summary["health"]["unstamped"] == 0


def test_slower_streams_slow_packets_and_fail_on_latency_exits_1() -> None:
    port = 40777
    with veth_namespace("nptw") as pair:
        run = NetpathRun(["trace", "--json", "--interval", "0.5", "--port", str(port), "--slower", "10ms",
                          "--fail-on-latency", "socket_queue:p50:5ms"])
        run.wait_start()
        receiver = start_receiver(pair, port, 3, 0.03)
        send_spaced(pair.ns_addr, port, 3, 0.06)
        receiver.communicate(timeout=30)
        time.sleep(1.0)
        run.proc.send_signal(2)
        rc, records, err = run.finish()
    assert rc == 1, err
    slow = [r for r in records if r["type"] == "slow"]
    assert len(slow) == 3
    assert all(s["dport"] == port and s["proto"] == "udp" and s["stages_ns"]["socket_queue"] > 10_000_000
               for s in slow)
    assert all(s["comm"] == "python3" or s["comm"].startswith("python") for s in slow)
    assert run.summary()["threshold"][0]["crossed"] is True


def test_bad_fail_on_latency_is_exit_2_with_one_line() -> None:
    proc = run_netpath("trace", "--fail-on-latency", "socket_queue:p42:10ms")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "p42" in proc.stderr and "Traceback" not in proc.stderr


def test_plain_output_fits_80_columns() -> None:
    proc = run_netpath("trace", "--duration", "1.5", "--interval", "1")
    assert proc.returncode == 0, proc.stderr
    assert "STAGE" in proc.stdout and "socket_queue" in proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80


def test_iface_and_netns_filters_follow_only_that_interface() -> None:
    n, port = 30, 40888
    with veth_namespace("nptf") as pair:
        rx_before = rx_packets(pair.ns_if, pair.ns)
        run, start = _burst(pair, ["--netns", pair.ns, "--iface", pair.ns_if], port, n, signal.SIGINT)
        rc, _records, err = run.finish()
        rx_seen = rx_packets(pair.ns_if, pair.ns) - rx_before
    assert rc == 0, err
    assert start["filters"]["netns"] is not None
    summary = run.summary()
    # only the namespace side's receive path, nothing from the root namespace: every packet the
    # interface itself counted (on a quiet link, no ARP or IPv6, just the n datagrams)
    missed = summary["health"]["missed_enqueue"]
    assert missed <= n // 10, summary["health"]
    assert _stage(summary, "socket_queue")["count"] == n - missed
    assert _stage(summary, "netif_receive_skb")["count"] == rx_seen >= n


def _enable_veth_gro(pair) -> None:
    """Make the namespace's veth end receive through NAPI and GRO, as a NIC does. veth takes that path
    only for traffic its features make eligible: GRO plus rx-udp-gro-forwarding (NETIF_F_GRO_UDP_FWD)."""
    res = pair.ns_exec("ethtool", "-K", pair.ns_if, "gro", "on", "rx-udp-gro-forwarding", "on")
    if res.returncode != 0 and "rx-udp-gro-forwarding" in res.stderr:
        pytest.skip(f"this kernel's veth has no rx-udp-gro-forwarding (NETIF_F_GRO_UDP_FWD): {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("mode", MODES)
def test_gro_stage_and_napi_work_count_every_datagram_through_veth_napi(mode: list[str]) -> None:
    n, port = 40, 40999
    with veth_namespace("nptg") as pair:
        _enable_veth_gro(pair)
        run, _start = _burst(pair, ["--stages", "all", "--netns", pair.ns, "--port", str(port), "--per-iface", *mode],
                             port, n,
                             signal.SIGINT)
        rc, _records, err = run.finish()
    assert rc == 0, err
    summary = run.summary()
    gro = _stage(summary, "gro")
    assert gro["method"] == "raw_tracepoint"
    # the receiver has a socket without UDP_GRO, so GRO merges nothing: one napi_gro_receive per datagram
    assert gro["count"] == n, gro
    assert 0 < gro["p50_ns"] < 1_000_000, gro
    assert [p["iface"] for p in gro["breakdown"]] == [pair.ns_if]
    assert _stage(summary, "netif_receive_skb")["count"] == n
    # napi_poll is CPU-wide (no port filter), but --per-iface gives the veth's own NAPI instance
    veth_napi = [d for d in _stage(summary, "napi_poll")["napi_breakdown"] if d["iface"] == pair.ns_if]
    assert len(veth_napi) == 1 and veth_napi[0]["work"] >= n, veth_napi


BLAST_RECEIVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: room for every datagram, so none is dropped
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
n = 0
try:
    # the first datagram may come long after "ready" (netpath compiles on a loaded box); then every one
    # sent, unless the senders stall for 30 s
    while n < int(sys.argv[3]):
        s.recv(2048)
        n += 1
        s.settimeout(30)
except socket.timeout:
    pass
print(n, flush=True)
"""
BLAST = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
         "for _ in range(int(sys.argv[3])): s.sendto(b'x'*32,(sys.argv[1],int(sys.argv[2])))\n")


@pytest.mark.parametrize("mode", MODES)
def test_two_senders_on_two_cpus_into_one_socket_account_for_every_datagram(mode: list[str]) -> None:
    """Every datagram is either timed by a stage or counted in a health counter saying why not."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPUs to enqueue on one socket at once")
    n, port = 40000, 40991
    with veth_namespace("np2c") as pair:
        rx = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", BLAST_RECEIVER, pair.ns_addr,
                               str(port), str(2 * n)], stdout=subprocess.PIPE, text=True)
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        run = NetpathRun(["trace", "--json", "--interval", "1", "--port", str(port), *mode])
        run.wait_start()
        senders = [subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", BLAST, pair.ns_addr,
                                     str(port), str(n)]) for cpu in (0, 1)]
        for proc in senders:
            assert proc.wait(timeout=120) == 0
        received = int(rx.communicate(timeout=60)[0].strip())
        run.proc.send_signal(signal.SIGINT)
        rc, _records, err = run.finish()
    assert rc == 0, err
    assert received == 2 * n
    summary = run.summary()
    h = summary["health"]
    assert _stage(summary, "stack_total")["count"] + h["missed_enqueue"] + h["unseen_enqueue"] == received, (
        _stage(summary, "netif_receive_skb")["count"], {k: v for k, v in h.items() if v})
    # a read past the socket's ring (the reader RING datagrams behind) is counted, untimed: ring_overrun says
    # how many reads were not timed, and only a read with no enqueue seen for it is not counted
    sq = _stage(summary, "socket_queue")
    assert sq["count"] + h["unseen_read"] == received, (sq["count"], sq["timed"],
                                                        {k: v for k, v in h.items() if v and k != "probe_hits"})
    if sq["sample_every"] == 1:  # --exact times every read its slot still holds
        assert sq["count"] - sq["timed"] <= h["ring_overrun"], (sq, h)


TCP_RECEIVER = r"""
import socket, sys, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
got = 0
while got < int(sys.argv[3]):
    time.sleep(0.01)  # let segments queue: socket_queue has something to time
    data = conn.recv(65536)
    if not data:
        break
    got += len(data)
print(got, flush=True)
"""
TCP_SENDER = ("import socket,sys,time\nc=socket.create_connection((sys.argv[1],int(sys.argv[2])))\n"
              "c.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\n"
              "for _ in range(int(sys.argv[3])):\n c.sendall(b'x'*100); time.sleep(0.002)\nc.close()\n")


@pytest.mark.parametrize("mode", MODES)
def test_tcp_segments_are_timed_to_their_first_copy(mode: list[str]) -> None:
    """TCP keeps a per-skb entry from enqueue to copy: every timed read is bounded by the run, none stale."""
    n, port = 200, 40444
    with veth_namespace("nptt") as pair:
        rx = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", TCP_RECEIVER, pair.ns_addr,
                               str(port), str(100 * n)], stdout=subprocess.PIPE, text=True)
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        run = NetpathRun(["trace", "--json", "--interval", "1", "--proto", "tcp", "--port", str(port), *mode])
        run.wait_start()
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", TCP_SENDER, pair.ns_addr, str(port), str(n)], check=True, timeout=60)
        assert int(rx.communicate(timeout=60)[0].strip()) == 100 * n
        elapsed_ns = (time.monotonic() - t0) * 1e9
        time.sleep(1.2)
        run.proc.send_signal(signal.SIGINT)
        rc, _records, err = run.finish()
    assert rc == 0, err
    summary = run.summary()
    sq, st = _stage(summary, "socket_queue"), _stage(summary, "stack_total")
    # coalescing merges segments into one skb, so reads are fewer than segments, but some are timed
    assert 0 < sq["count"] <= n and 0 < st["count"] <= n + 10, (sq, st)
    assert sq["max_ns"] < elapsed_ns, sq
    assert st["max_ns"] < elapsed_ns, st
    # TCP between namespaces of one host keeps the sender's departure time (EDT, CLOCK_MONOTONIC) in
    # skb->tstamp up to local delivery: with the kernel's receive timestamp those are counted, not timed
    assert _stage(summary, "netif_receive_skb")["count"] + summary["health"]["unstamped"] >= n


def _summary_once_read(run: NetpathRun, receiver: subprocess.Popen, n: int) -> dict:
    """The receiver has read all n datagrams; netpath, given a second to read its last interval, stopped."""
    out, _ = receiver.communicate(timeout=60)
    assert f"got {n}" in out
    time.sleep(1.2)
    run.proc.send_signal(signal.SIGINT)
    rc, _records, err = run.finish()
    assert rc == 0, err
    return run.summary()


@pytest.mark.parametrize("stages", [pytest.param(["--stages", "socket_queue"], id="alone"),
                                    pytest.param([], id="default")])
@pytest.mark.parametrize("delay_ms", [20, 100])
def test_sampled_socket_queue_times_the_watched_datagrams_to_their_read(delay_ms: int, stages: list[str]) -> None:
    """The sampled build with no filter finer than the namespace (bpf/trace_watch.c): a picked datagram (at its
    wakeup alone, or at netif_receive_skb with the default stages) is watched to the read that takes it off
    the queue. Each datagram here waits delay_ms for its reader, so every timed one must say delay_ms, and
    every read is counted."""
    n, port = 24, 41100 + delay_ms
    with veth_namespace("nptw") as pair:
        run = NetpathRun(["trace", "--json", "--interval", "1", *stages, "--sample", "2", "--netns", pair.ns])
        run.wait_start()
        receiver = start_receiver(pair, port, n, delay_ms / 1000)
        send_spaced(pair.ns_addr, port, n, delay_ms / 1000 + 0.04)
        summary = _summary_once_read(run, receiver, n)
    sq, h = _stage(summary, "socket_queue"), summary["health"]
    assert sq["count"] == n, (sq, h)
    assert sq["sample_every"] == 2
    assert 3 <= sq["timed"] <= n, sq  # 1 in 2 picked: 12 expected; fewer than 3 has odds under 1 in 10^4
    for q in ("p50_ns", "max_ns"):
        assert abs(sq[q] - delay_ms * 1e6) <= 0.2 * delay_ms * 1e6, sq
    assert h["ring_overrun"] == h["unseen_read"] == 0, h  # no FIFO in this build
    assert sq["method"] == "tp_btf+raw_tracepoint", sq  # both ends typed: the cheap loads
    if stages:
        assert h["missed_enqueue"] == 0, h
    else:  # stack_total ends at the wakeup: a datagram read before it is missed_enqueue (health), not lost
        assert _stage(summary, "stack_total")["count"] + h["missed_enqueue"] == n, h


def test_socket_queue_alone_samples_at_the_enqueue_and_counts_every_datagram() -> None:
    """netpath export's default stage, as trace runs it: no netif_receive_skb hook, each enqueue sampled on its
    own (1 in 16 timed), every datagram counted once, nothing else in the namespace counted."""
    n, port = 320, 40777
    with veth_namespace("nptsq") as pair:
        run = NetpathRun(["trace", "--json", "--interval", "1", "--stages", "socket_queue", "--netns", pair.ns])
        start = run.wait_start()
        receiver = start_receiver(pair, port, n, 0.0)
        for _ in range(n // 32):  # in bursts the receiver keeps up with: none overflows its buffer
            send_udp(pair.ns_addr, port, 32)
            time.sleep(0.02)
        summary = _summary_once_read(run, receiver, n)
    hooked = {a["hook"] for a in start["attached"]}
    assert "net:netif_receive_skb" not in hooked and "sock:sk_data_ready" in hooked, hooked
    sq, h = _stage(summary, "socket_queue"), summary["health"]
    assert sq["count"] + h["ring_overrun"] + h["unseen_read"] == n, (sq, h)
    assert sq["count"] >= n - n // 10, (sq, h)
    assert 0 < sq["timed"] < sq["count"], sq  # sampled: about 20 of 320
    assert sq["sample_every"] == 16
