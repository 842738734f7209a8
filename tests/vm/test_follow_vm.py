"""netpath follow in the lab kernels (6.1, 6.12, which have kprobes): the UDP query of the live tier
(A -> bridge and DNAT in M -> B) passes the bridge, IP, netfilter and transport functions in path order,
and the reply passes br_forward; a datagram between the lab's two virtio-net NICs leaves by one driver and
comes in through the other's NAPI, GRO and the stack to the reading process."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "live"))  # the topology the live tier uses

import vmlab
from follow_topology import CLIENT, topology
from netpath_testlib import NetpathRun, rx_packets
from test_follow_live import SERVER_PORT, SERVICE_PORT, inode, packets, send, start_echo

from netpath import contract

FUNCTIONS = {h.name for h in contract.FOLLOW_HOOKS if h.is_kprobe}
HAS_DATA_READY = Path("/sys/kernel/tracing/events/sock/sk_data_ready").is_dir()  # Linux 6.4+: 6.12, not 6.1
NIC_PORT, NIC_PAYLOAD = 5301, 100


def functions(pkt: dict) -> list[tuple[str, str | None, int | None, str | None]]:
    return [(h["hook"], h["iface"], h["netns"], h["nf_hook"]) for h in pkt["hops"] if h["hook"] in FUNCTIONS]


def in_order(seen: list[tuple], wanted: list[tuple]) -> bool:
    """`wanted` is a subsequence of `seen`."""
    it = iter(seen)
    return all(any(item == w for item in it) for w in wanted)


def test_function_hops_in_path_order() -> None:
    with topology() as t:
        t.dnat(SERVICE_PORT, SERVER_PORT)
        echo, echo_pid = start_echo(t, 1)
        run = NetpathRun(["follow", "--json", "--host", CLIENT, "--proto", "udp", "--count", "2", "--duration",
                          "120"])
        start = run.wait_start(timeout=300)
        attached = {a["hook"].split(" ")[0] for a in start["attached"] if a["method"] == "kprobe"}
        # ip_rcv_finish attaches on 6.12 but was never hit in this path: not asserted among the hops
        assert {"ip_rcv", "ip_rcv_finish", "ip_forward", "ip_local_deliver", "nf_hook_slow", "br_handle_frame",
                "br_forward", "udp_rcv", "tcp_v4_rcv"} <= attached, start["unavailable"]
        send(t, SERVICE_PORT, 1, wait=True)
        rc, records, err = run.finish(timeout=300)
        echo.wait(timeout=30)
        assert rc == 0, err
        query, reply = packets(records)
        a, m, b = inode(t.a), inode(t.m), inode(t.b)
        for p in packets(records):  # with -s: the hops as netpath reported them
            print(p["id"], p["fate"])
            for h in p["hops"]:
                print("  ", h["offset_ns"], h["hook"], h["iface"], h["netns"], h["nf_hook"], h["saddr"], h["daddr"])
        seen = functions(query)
        assert in_order(seen, [
            ("br_handle_frame", t.pa, m, None), ("ip_rcv", t.br, m, None),
            ("nf_hook_slow", t.br, m, "ipv4 PREROUTING"), ("ip_forward", t.br, m, None),
            ("nf_hook_slow", t.cb, m, "ipv4 POSTROUTING"), ("ip_rcv", t.sb, b, None),
            ("ip_local_deliver", t.sb, b, None),
            ("udp_rcv", t.sb, b, None)]), seen
        if "veth_xmit" in attached:
            assert in_order(seen, [("veth_xmit", t.ca, a, None), ("veth_xmit", t.cb, m, None)]), seen
        # the DNAT is seen at or after M's PREROUTING hook, before the packet leaves M
        hooks = [h["hook"] for h in query["hops"]]
        changed = next(i for i, h in enumerate(query["hops"]) if h["changed"])
        pre = next(i for i, h in enumerate(query["hops"]) if h["nf_hook"] == "ipv4 PREROUTING" and h["netns"] == m)
        assert pre <= changed < hooks.index("net:netif_rx", pre), query["hops"]
        assert query["fate"]["kind"] == "delivered" and query["fate"]["netns"] == b, query["fate"]
        if HAS_DATA_READY:  # queued: the socket's holder, from /proc, where the echo server may be gone under TCG
            assert query["fate"]["hook"] == "sock:sk_data_ready"
            assert query["fate"]["owner"]["pid"] in (echo_pid, None)
        else:  # before 6.4: the echo server's read frees it, and the hop carries the reader itself
            assert query["fate"]["hook"] == "skb:consume_skb", query["fate"]
            assert query["fate"]["owner"]["pid"] == echo_pid, query["fate"]
            assert query["fate"]["location"].startswith(("skb_consume_udp", "udp_recvmsg")), query["fate"]
        assert ("br_forward", t.br, m, None) in functions(reply), functions(reply)


def hops_of(pkt: dict) -> list[tuple[str, str | None, int | None]]:
    return [(h["hook"], h["iface"], h["netns"]) for h in pkt["hops"]]


def test_a_datagram_through_real_virtio_net_nics() -> None:
    """One datagram A -> B over the qemu hub: netpath follows the sender's skb to A's driver (sent by A's
    NIC) and the receiver's, a new skb virtio-net builds, from B's NAPI GRO entry through the IP and UDP
    receive functions to the process that reads it; B's NIC counted the one frame."""
    with vmlab.realnic_pair(subnet=251) as p:
        run = NetpathRun(["follow", "--json", "--host", p.addr_a, "--proto", "udp", "--port", str(NIC_PORT),
                          "--count", "2", "--duration", "180"])
        run.wait_start(timeout=300)
        # the sink reads a third datagram, sent once netpath is done: it holds the socket till then
        sink = vmlab.UdpSink(p, p.b, p.addr_b, NIC_PORT, want=3, timeout=300)
        try:
            rx_before = rx_packets(p.if_b, p.b)
            vmlab.send_udp(p, p.a, p.addr_b, NIC_PORT, 1, size=NIC_PAYLOAD)
            vmlab.wait_until(lambda: rx_packets(p.if_b, p.b) > rx_before, timeout=30)
            time.sleep(1)
            rx = rx_packets(p.if_b, p.b) - rx_before
            # a second one (not followed: --count 2 have started) makes A's driver free the first's skb
            vmlab.send_udp(p, p.a, p.addr_b, NIC_PORT, 1, size=NIC_PAYLOAD)
            rc, records, err = run.finish(timeout=300)
            vmlab.send_udp(p, p.a, p.addr_b, NIC_PORT, 1, size=NIC_PAYLOAD)
            assert sink.wait() == 3
        finally:
            sink.proc.kill()
        assert rc == 0, err
        a, b = inode(p.a), inode(p.b)
        for pkt in packets(records):  # with -s: the hops as netpath reported them
            print(pkt["id"], pkt["fate"])
            for h in pkt["hops"]:
                print("  ", h["offset_ns"], h["hook"], h["iface"], h["netns"], h["len"], h["saddr"], h["daddr"])
        assert rx == 1
        sent = next(pkt for pkt in packets(records) if pkt["hops"][0]["netns"] == a)
        got = next(pkt for pkt in packets(records) if pkt["hops"][0]["netns"] == b)
        for pkt in (sent, got):
            first = pkt["first"]
            assert (first["proto"], first["saddr"], first["daddr"], first["dport"]) == (
                "udp", p.addr_a, p.addr_b, NIC_PORT), first
            assert not any(h["changed"] for h in pkt["hops"]), pkt["hops"]
        # A: queued and handed to virtio-net (an Ethernet frame: 14 + 20 + 8 + payload), and sent by that NIC
        assert in_order(hops_of(sent), [("net:net_dev_queue", p.if_a, a), ("net:net_dev_start_xmit", p.if_a, a),
                                        ("net:net_dev_xmit", p.if_a, a)]), hops_of(sent)
        assert {h["iface"] for h in sent["hops"] if h["iface"]} == {p.if_a}, hops_of(sent)
        assert sent["hops"][0]["len"] == 14 + 28 + NIC_PAYLOAD
        assert (sent["fate"]["kind"], sent["fate"]["iface"], sent["fate"]["netns"]) == ("sent", p.if_a, a)
        # B: the driver's NAPI hands it to GRO, the stack takes it (IP packet: 20 + 8 + payload) to the socket
        assert in_order(hops_of(got), [("net:napi_gro_receive_entry", p.if_b, b),
                                       ("net:netif_receive_skb", p.if_b, b), ("ip_local_deliver", p.if_b, b),
                                       ("udp_rcv", p.if_b, b)]), hops_of(got)
        assert got["hops"][0]["hook"] == "net:napi_gro_receive_entry" and got["hops"][0]["len"] == 28 + NIC_PAYLOAD
        assert {h["netns"] for h in got["hops"]} == {b}, hops_of(got)
        fate = got["fate"]
        assert (fate["kind"], fate["netns"], fate["owner"]["pid"]) == ("delivered", b, sink.proc.pid), fate
        assert fate["hook"] == ("sock:sk_data_ready" if HAS_DATA_READY else "skb:consume_skb"), fate
