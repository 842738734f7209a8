"""netpath follow against real packets: A -> bridge and DNAT in M -> server in B, and back.

Every case sends known datagrams (or a TCP stream) from a real process in namespace A through the
topology in follow_topology.py and checks netpath's packets against the path they must take, the process
that read them and the kernel's own counters (nftables rule counters, B's UDP NoPorts).
"""

from __future__ import annotations

import json
import os
import re

from follow_topology import CLIENT, SERVER, SERVICE, Topology, topology
from netpath_testlib import NetpathRun

SERVICE_PORT, SERVER_PORT, CLOSED_PORT = 5353, 7000, 7001

# an echo server in B: prints its pid, answers each datagram, exits after N
ECHO = r"""
import os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print(os.getpid(), flush=True)
for _ in range(int(sys.argv[2])):
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
time.sleep(2)  # still holding the socket while netpath names its owner
"""
# a client in A: sends N datagrams from one socket, waits for each answer when asked
CLIENT_PY = r"""
import os, socket, sys, time
dst, port, n, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
print(os.getpid(), flush=True)
for i in range(n):
    s.sendto(b"follow-%d" % i, (dst, port))
    if wait:
        s.recvfrom(2048)
time.sleep(2)
"""


def follow(*args: str) -> NetpathRun:
    run = NetpathRun(["follow", "--json", "--interval", "0.2", *args])
    run.wait_start()
    return run


def packets(records: list[dict]) -> list[dict]:
    return [r for r in records if r["type"] == "packet"]


def path(pkt: dict) -> list[tuple[str, str | None, int | None]]:
    return [(h["hook"], h["iface"], h["netns"]) for h in pkt["hops"]]


def inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


def start_echo(t: Topology, n: int) -> tuple[object, int]:
    proc = t.popen(t.b, "python3", "-c", ECHO, str(SERVER_PORT), str(n))
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def send(t: Topology, port: int, n: int, wait: bool) -> int:
    out = t.run(t.a, "python3", "-c", CLIENT_PY, SERVICE, str(port), str(n), "1" if wait else "0", timeout=30)
    return int(out.stdout.split()[0])


def expected_query_path(t: Topology) -> list[tuple[str, str, int]]:
    a, m, b = inode(t.a), inode(t.m), inode(t.b)
    return [("net:net_dev_queue", t.ca, a), ("net:net_dev_start_xmit", t.ca, a), ("net:netif_rx", t.pa, m),
            ("net:net_dev_xmit", t.ca, a), ("net:netif_receive_skb", t.pa, m), ("net:netif_receive_skb", t.br, m),
            ("net:net_dev_queue", t.cb, m), ("net:net_dev_start_xmit", t.cb, m), ("net:netif_rx", t.sb, b),
            ("net:net_dev_xmit", t.cb, m), ("net:netif_receive_skb", t.sb, b), ("sock:sk_data_ready", t.sb, b)]


def test_udp_dnat_delivered_and_reply() -> None:
    """The query: every device A -> M (bridge) -> B in order, the DNAT at M's hop towards B, read by the echo
    server; the reply (--host matches both directions): B -> M -> A, un-NATed, read by the client."""
    with topology() as t:
        t.dnat(SERVICE_PORT, SERVER_PORT)
        echo, echo_pid = start_echo(t, 1)
        run = follow("--host", CLIENT, "--proto", "udp", "--count", "2", "--duration", "30")
        client_pid = send(t, SERVICE_PORT, 1, wait=True)
        rc, records, err = run.finish()
        echo.wait(timeout=10)
        assert rc == 0, err
        query, reply = packets(records)
        assert path(query) == expected_query_path(t)
        assert query["first"] == {"family": 4, "proto": "udp", "saddr": CLIENT, "daddr": SERVICE,
                                  "sport": query["first"]["sport"], "dport": SERVICE_PORT}
        changed = [i for i, h in enumerate(query["hops"]) if h["changed"]]
        # DNATed by M's prerouting in the bridge (br_netfilter), between the port's and the bridge's receive
        assert changed == [5], query["hops"]
        rewritten = query["hops"][5]
        assert (rewritten["daddr"], rewritten["dport"]) == (SERVER, SERVER_PORT)
        assert query["fate"]["kind"] == "delivered"
        assert query["fate"]["owner"]["pid"] == echo_pid and query["fate"]["owner"]["comm"] == "python3"
        assert query["fate"]["netns"] == inode(t.b)
        a, m, b = inode(t.a), inode(t.m), inode(t.b)
        assert [(h, i, n) for h, i, n in path(reply) if h in ("net:netif_receive_skb", "net:net_dev_queue")] == [
            ("net:net_dev_queue", t.sb, b), ("net:netif_receive_skb", t.cb, m), ("net:net_dev_queue", t.br, m),
            ("net:net_dev_queue", t.pa, m), ("net:netif_receive_skb", t.ca, a)]
        assert reply["first"]["saddr"] == SERVER and reply["first"]["sport"] == SERVER_PORT
        back = next(h for h in reply["hops"] if h["changed"])
        assert (back["hook"], back["iface"], back["saddr"], back["sport"]) == (
            "net:net_dev_queue", t.br, SERVICE, SERVICE_PORT)
        assert reply["fate"]["kind"] == "delivered" and reply["fate"]["owner"]["pid"] == client_pid
        assert records[-1]["type"] == "summary" and records[-1]["stop_reason"] == "count"
        assert records[-1]["health"]["lost_hops"] == 0 and records[-1]["health"]["started"] == 2


def nft_counter(t: Topology, ns: str, table: str) -> int:
    out = t.run(ns, "nft", "-j", "list", "table", "ip", table).stdout
    rules = [item["rule"] for item in json.loads(out)["nftables"] if "rule" in item]
    return sum(e["counter"]["packets"] for r in rules for e in r["expr"] if "counter" in e)


def no_ports(t: Topology) -> int:
    out = t.run(t.b, "nstat", "-az", "UdpNoPorts").stdout
    m = re.search(r"UdpNoPorts\s+(\d+)", out)
    return int(m.group(1)) if m else 0


def test_udp_dropped_by_nft_and_closed_port_counts() -> None:
    """N datagrams into an nftables drop rule in B and N to a closed port: 2N packets, each dropped in B on
    B's device, NETFILTER_DROP as many as the rule counted and NO_SOCKET as many as B's UdpNoPorts."""
    n = 5
    with topology() as t:
        t.dnat(SERVICE_PORT, SERVER_PORT)
        t.nft(t.m, f"""table ip follow_nat2 {{
    chain pre {{ type nat hook prerouting priority dstnat; policy accept;
        ip daddr {SERVICE} udp dport {SERVICE_PORT + 1} dnat to {SERVER}:{CLOSED_PORT}
    }}
}}""")
        t.nft(t.b, f"""table ip follow_drop {{
    chain in {{ type filter hook input priority filter; policy accept;
        udp dport {SERVER_PORT} counter drop
    }}
}}""")
        before = no_ports(t)
        run = follow("--host", SERVICE, "--proto", "udp", "--count", str(2 * n), "--duration", "30")
        send(t, SERVICE_PORT, n, wait=False)
        send(t, SERVICE_PORT + 1, n, wait=False)
        rc, records, err = run.finish()
        assert rc == 0, err
        got = packets(records)
        assert len(got) == 2 * n
        fates = [(p["fate"]["kind"], p["fate"]["reason"], p["fate"]["iface"], p["fate"]["netns"]) for p in got]
        b = inode(t.b)
        nf = fates.count(("dropped", "NETFILTER_DROP", t.sb, b))
        closed = fates.count(("dropped", "NO_SOCKET", t.sb, b))
        assert nf + closed == 2 * n, fates
        assert nf == nft_counter(t, t.b, "follow_drop") == n
        assert closed == no_ports(t) - before == n
        for p in got:
            assert [h for h, _, _ in path(p)][-1] == "skb:kfree_skb"
            where = {"NETFILTER_DROP": ("nf_hook_slow", "nft_do_chain"), "NO_SOCKET": ("__udp4_lib_rcv",)}
            assert p["fate"]["location"].startswith(where[p["fate"]["reason"]]), p["fate"]


TCP_SERVER = r"""
import os, socket, sys, time
l = socket.socket(); l.bind(("0.0.0.0", int(sys.argv[1]))); l.listen()
print(os.getpid(), flush=True)
c, _ = l.accept()
n = 0
while n < int(sys.argv[2]):
    d = c.recv(65536)
    if not d:
        break
    n += len(d)
c.sendall(b"ok")
time.sleep(3)
"""
TCP_CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b"x" * 1000)
time.sleep(0.2)
s.sendall(b"y" * int(sys.argv[3]))
s.recv(10)
time.sleep(2)
"""


def test_tcp_syn_data_and_gro_merges() -> None:
    """TCP through the same path, with GRO on B's veth (veth then receives through NAPI) and segmentation
    off in A and M, so segments arrive one by one: the SYN is answered by the listener in B, data reaches
    the server's socket, and segments merged by GRO in B are stated so (napi_gro_receive_exit)."""
    burst = 30000
    with topology() as t:
        t.dnat(SERVICE_PORT, SERVER_PORT, "tcp")
        t.run(t.b, "ethtool", "-K", t.sb, "gro", "on")
        for ns, dev in ((t.a, t.ca), (t.m, t.cb), (t.m, t.br)):
            t.run(ns, "ethtool", "-K", dev, "tso", "off", "gso", "off")
        server = t.popen(t.b, "python3", "-c", TCP_SERVER, str(SERVER_PORT), str(1000 + burst))
        assert server.stdout is not None
        server_pid = int(server.stdout.readline())
        run = follow("--host", SERVICE, "--proto", "tcp", "--count", "1000", "--duration", "6")
        t.run(t.a, "python3", "-c", TCP_CLIENT, SERVICE, str(SERVICE_PORT), str(burst), timeout=30)
        rc, records, err = run.finish()
        server.wait(timeout=10)
        assert rc == 0, err
        got = packets(records)
        b = inode(t.b)
        syn = got[0]
        assert syn["id"] == 1 and syn["first"]["dport"] == SERVICE_PORT
        # veth with GRO hands over through its NAPI ring, not netif_rx: B's first hop is GRO's entry
        assert path(syn)[:11] == [
            *expected_query_path(t)[:6], ("net:net_dev_queue", t.cb, inode(t.m)),
            ("net:net_dev_start_xmit", t.cb, inode(t.m)),
            ("net:net_dev_xmit", t.cb, inode(t.m)), ("net:napi_gro_receive_entry", t.sb, b),
            ("net:netif_receive_skb", t.sb, b)]
        assert syn["fate"]["kind"] == "consumed" and syn["fate"]["location"].startswith("tcp_")
        assert syn["fate"]["netns"] == b
        merged = [p for p in got if p["fate"]["kind"] == "gro_merged"]
        assert merged, [p["fate"]["kind"] for p in got]
        for p in merged:
            assert [h for h, _, _ in path(p)][-2:] == ["net:napi_gro_receive_entry", "net:napi_gro_receive_exit"]
            assert p["hops"][-2]["iface"] == t.sb and p["fate"]["netns"] == b
        delivered = [p for p in got if p["fate"]["kind"] == "delivered" and p["fate"]["netns"] == b]
        assert delivered and {p["fate"]["owner"]["pid"] for p in delivered} <= {server_pid, None}
        assert server_pid in {p["fate"]["owner"]["pid"] for p in delivered}
        assert not [p for p in got if p["fate"]["kind"] in ("in_flight", "untracked")]
        assert records[-1]["health"]["lost_hops"] == 0
