"""netpath follow's function hops in the lab kernels (6.1, 6.12, which have kprobes): the UDP query of the
live tier (A -> bridge and DNAT in M -> B) passes the bridge, IP, netfilter and transport functions in
path order, and the reply passes br_forward."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "live"))  # the topology the live tier uses

from follow_topology import CLIENT, topology
from netpath_testlib import NetpathRun
from test_follow_live import SERVER_PORT, SERVICE_PORT, inode, packets, send, start_echo

from netpath import contract

FUNCTIONS = {h.name for h in contract.FOLLOW_HOOKS if h.is_kprobe}


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
        # the owner's name is the live tier's to check: under TCG the echo server may be gone before /proc is read
        if Path("/sys/kernel/tracing/events/sock/sk_data_ready").is_dir():
            assert query["fate"]["kind"] == "delivered" and query["fate"]["netns"] == b
            assert query["fate"]["owner"]["pid"] in (echo_pid, None)
        else:  # no sock:sk_data_ready before 6.4: the last sight of a datagram read is its consume_skb, in B
            assert query["fate"]["kind"] == "consumed" and query["fate"]["netns"] == b, query["fate"]
        assert ("br_forward", t.br, m, None) in functions(reply), functions(reply)
