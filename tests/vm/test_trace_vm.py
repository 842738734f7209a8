"""netpath trace on the lab kernels (Debian 6.1 / 6.12, kprobes on): the kprobe-only stages
(ip_rcv, ip_local_deliver, udp_rcv, tcp_v4_rcv) attach and count real traffic between two
namespaces the test creates. Runs only inside the lab guest (tests/vm/conftest.py)."""

from __future__ import annotations

import time

import vmlab
from netpath_testlib import NetpathRun

KPROBE_STAGES = ("ip_rcv", "ip_local_deliver", "udp_rcv", "tcp_v4_rcv")


def _stage(record: dict, stage: str) -> dict:
    return next(s for s in record["stages"] if s["stage"] == stage)


def _trace(*args: str) -> NetpathRun:
    run = NetpathRun(["trace", "--json", "--interval", "1", *args])
    run.wait_start(timeout=300)  # TCG: compiling and attaching is ~20x slower
    return run


def _stop(run: NetpathRun) -> dict:
    time.sleep(2)
    run.proc.send_signal(2)
    rc, _records, err = run.finish(timeout=300)
    assert rc == 0, err
    return run.summary()


def test_kprobe_stages_are_planned_and_attached(lab_kernel) -> None:
    run = _trace("--port", "5999")
    start = run.records[-1]
    summary = _stop(run)
    unavailable = {u["stage"] for u in start["unavailable"]}
    assert not unavailable & set(KPROBE_STAGES), start["unavailable"]
    attached = {a["hook"].split(".")[0] for a in start["attached"] if a["method"] == "kprobe"}
    assert {"ip_rcv", "ip_local_deliver", "udp_rcv", "tcp_v4_rcv"} <= attached, start["attached"]
    for stage in KPROBE_STAGES:
        assert _stage(summary, stage)["method"] == "kprobe"


def test_udp_counts_equal_datagrams_at_every_kprobe_stage(netns_pair) -> None:
    n, port = 200, 5101
    p = netns_pair
    run = _trace("--proto", "udp", "--port", str(port))
    sink = vmlab.UdpSink(p, p.b, p.addr_b, port, want=n, timeout=120)
    vmlab.send_udp(p, p.a, p.addr_b, port, n)
    assert sink.wait() == n
    summary = _stop(run)
    # a datagram the reader takes before its wakeup runs cannot be timed past the stack, and a read
    # before its enqueue was seen has no socket_queue time: netpath counts those (health), so every
    # datagram is in a stage's count or in the counter that says why not, exactly
    h = summary["health"]
    # most are timed: under TCG a reader on the other vCPU takes a few before their wakeup (6 + 6 of 200 in
    # one CI run on 6.12, the FIFO build this filter chooses); the identities below stay exact
    assert h["missed_enqueue"] + h["unseen_read"] <= n // 10, h
    for stage in ("netif_receive_skb", "ip_rcv", "ip_local_deliver", "udp_rcv"):
        assert _stage(summary, stage)["count"] == n, (stage, _stage(summary, stage), h)
    assert _stage(summary, "stack_total")["count"] + h["missed_enqueue"] + h["unseen_enqueue"] == n, h
    # a UDP read is counted at sock:sock_recv_length where the kernel has it (6.12; a read before its enqueue
    # was seen is unseen_read), before that (6.1) at the datagram's free, where a datagram read before its
    # wakeup (missed_enqueue) has no entry to find
    sq = _stage(summary, "socket_queue")
    unaccounted = h["unseen_read"] if "sock:sock_recv_length" in sq["hook"] else h["missed_enqueue"]
    assert sq["count"] + unaccounted == n, (sq, h)
    for stage in ("netif_receive_skb", "ip_rcv", "ip_local_deliver", "udp_rcv", "stack_total", "socket_queue"):
        row = _stage(summary, stage)
        assert row["p50_ns"] > 0 and row["max_ns"] >= row["p99_ns"] >= row["p50_ns"], (stage, row)
    assert _stage(summary, "tcp_v4_rcv")["count"] == 0
    assert summary["health"]["probe_hits"].get("ip_rcv", 0) >= n


def test_socket_queue_alone_counts_every_udp_datagram_and_times_a_sample(netns_pair) -> None:
    """netpath export's default stage as trace runs it (socket_queue alone, sampled): where the kernel has
    sock:sock_recv_length (6.12) UDP is the watched build (bpf/trace_watch.c), every read counted at the read;
    before it (6.1) every datagram is counted at its wakeup (a reader already running takes some before it,
    which a count at the read missed: 199 of 200 in a run of this test)."""
    n, port = 200, 5103
    p = netns_pair
    run = _trace("--stages", "socket_queue", "--sample", "2", "--netns", p.b)
    sink = vmlab.UdpSink(p, p.b, p.addr_b, port, want=n, timeout=120)
    vmlab.send_udp(p, p.a, p.addr_b, port, n)
    assert sink.wait() == n
    summary = _stop(run)
    sq, h = _stage(summary, "socket_queue"), summary["health"]
    assert sq["count"] == n, (sq, h)
    assert h["ring_overrun"] == h["unseen_read"] == h["missed_enqueue"] == h["lost_skbs"] == 0, h
    assert 0 < sq["timed"] <= sq["count"] and sq["p50_ns"] > 0, sq


def test_tcp_segments_reach_tcp_v4_rcv(netns_pair) -> None:
    port = 5102
    p = netns_pair
    run = _trace("--proto", "tcp", "--port", str(port))
    got = vmlab.tcp_transfer(p, p.b, p.addr_b, port, p.a, 1 << 20)
    assert got == 1 << 20
    summary = _stop(run)
    tcp = _stage(summary, "tcp_v4_rcv")
    assert tcp["count"] > 0 and tcp["method"] == "kprobe"
    assert _stage(summary, "ip_local_deliver")["count"] >= tcp["count"]
    assert _stage(summary, "udp_rcv")["count"] == 0
    assert _stage(summary, "socket_queue")["count"] > 0
