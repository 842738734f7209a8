"""netpath follow and clones: a bridge floods a frame to three ports, the original and each clone followed.

    A: ca (10.78.0.1) --veth-- M: pa, port of br ... br floods to pb, pc, pd --veth-- B: sb, C: sc, D: sd

B, C and D's devices share one MAC, 10.78.0.100 and learning is off on their bridge ports, so the bridge
never learns where that MAC lives: every frame A sends to it is unknown unicast, flooded to the three
ports (br_flood: deliver_clone for all but the last, which gets the original). B and D each have a
datagram reader on the port, C has none (NO_SOCKET). IPv6 is off and every neighbour entry is static, so
the only frames on these links are the ones the test sends (and C's ICMP port unreachable, not UDP).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from follow_topology import add_veth
from netpath_testlib import NetpathRun, disable_ipv6, ip, link_mac

SENDER, TARGET, TARGET_MAC, PORT = "10.78.0.1", "10.78.0.100", "02:00:5e:10:00:99", 7100

READER = r"""
import os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print(os.getpid(), flush=True)
for _ in range(int(sys.argv[2])):
    s.recv(2048)
time.sleep(3)  # still holding the socket while netpath names its owner
"""
SENDER_PY = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    s.sendto(b"clone-%d" % i, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.05)
"""


@dataclass
class Flood:
    a: str
    m: str
    receivers: dict[str, tuple[str, str]]  # namespace -> (its device, its bridge port in M)
    ca: str
    pa: str
    br: str

    def run(self, ns: str, *argv: str) -> str:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    def udp(self, ns: str, name: str) -> int:
        """The namespace's own Udp counter (/proc/net/snmp), the kernel's ground truth."""
        lines = [line.split() for line in self.run(ns, "cat", "/proc/net/snmp").splitlines()
                 if line.startswith("Udp:")]
        return int(dict(zip(lines[0][1:], lines[1][1:], strict=True))[name])


@contextmanager
def flood() -> Iterator[Flood]:
    tag = uuid.uuid4().hex[:6]
    names = [f"fc{x}{tag}" for x in "bcd"]
    f = Flood(f"fca{tag}", f"fcm{tag}", {ns: (f"s{ns[2]}{tag}", f"p{ns[2]}{tag}") for ns in names},
              f"ca{tag}", f"pa{tag}", f"br{tag}")
    made: list[str] = []
    try:
        for ns in (f.a, f.m, *f.receivers):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", f.m, "link", "add", f.br, "type", "bridge")
        disable_ipv6(f.br, f.m)
        add_veth(f.ca, f.a, f.pa, f.m)
        ip("-n", f.m, "link", "set", f.pa, "master", f.br)
        for ns, (dev, port) in f.receivers.items():
            add_veth(port, f.m, dev, ns)
            ip("-n", ns, "link", "set", dev, "address", TARGET_MAC)
            ip("-n", ns, "addr", "add", f"{TARGET}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "neigh", "replace", SENDER, "lladdr", link_mac(f.ca, f.a), "dev", dev, "nud", "permanent")
            ip("-n", f.m, "link", "set", port, "master", f.br)
            # never learn the receivers' MAC (C answers with ICMP): every frame to it stays unknown unicast
            subprocess.run(["bridge", "-n", f.m, "link", "set", "dev", port, "learning", "off", "flood", "on"],
                           check=True, capture_output=True)
            ip("-n", f.m, "link", "set", port, "up")
        # the bridge without br_netfilter's IP hooks: the frames are bridged, nothing else
        subprocess.run(["ip", "netns", "exec", f.m, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"],
                       check=False, capture_output=True)
        ip("-n", f.a, "addr", "add", f"{SENDER}/24", "dev", f.ca)
        for ns, dev in ((f.a, f.ca), (f.m, f.pa), (f.m, f.br)):
            ip("-n", ns, "link", "set", dev, "up")
        ip("-n", f.a, "neigh", "replace", TARGET, "lladdr", TARGET_MAC, "dev", f.ca, "nud", "permanent")
        subprocess.run(["bridge", "-n", f.m, "fdb", "replace", link_mac(f.ca, f.a), "dev", f.pa, "master",
                        "static"], check=True, capture_output=True)
        yield f
    finally:
        for ns in made:
            ip("netns", "del", ns, check=False)


def inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


def path(pkt: dict) -> list[tuple[str, str | None, int | None]]:
    return [(h["hook"], h["iface"], h["netns"]) for h in pkt["hops"]]


def test_bridge_flood_clones_each_followed_to_its_own_fate() -> None:
    """N datagrams from A flooded by M's bridge to B, C and D: N originals and 2N clones, each naming its
    original; per datagram one packet ends in each of B, C, D, through its own bridge port and veth;
    delivered to the reader in B and D as many times as their Udp InDatagrams say, dropped NO_SOCKET in C
    as many times as C's Udp NoPorts says."""
    n = 3
    with flood() as f:
        readers = {}
        b, _c, d = f.receivers
        for ns in (b, d):
            proc = subprocess.Popen(["ip", "netns", "exec", ns, "python3", "-c", READER, str(PORT), str(n)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            readers[ns] = (proc, int(proc.stdout.readline()))
        reading = set(readers)
        run = NetpathRun(["follow", "--json", "--interval", "0.2", "--netns", f.a, "--proto", "udp", "--port",
                          str(PORT), "--count", str(n), "--duration", "30"])
        run.wait_start()
        f.run(f.a, "python3", "-c", SENDER_PY, TARGET, str(PORT), str(n))
        rc, records, err = run.finish()
        for proc, _ in readers.values():
            proc.wait(timeout=10)
        assert rc == 0, err
        got = [r for r in records if r["type"] == "packet"]
        originals = [p for p in got if p["clone_of"] is None]
        clones = [p for p in got if p["clone_of"] is not None]
        assert len(originals) == n and len(clones) == 2 * n, [(p["id"], p["clone_of"]) for p in got]
        m, by_inode = inode(f.m), {inode(ns): ns for ns in f.receivers}
        ended: dict[str, list[tuple[str, str | None]]] = {ns: [] for ns in f.receivers}
        for orig in originals:
            family = [orig, *(c for c in clones if c["clone_of"] == orig["id"])]
            assert len(family) == 3, family
            where = sorted(by_inode[p["fate"]["netns"]] for p in family)
            assert where == sorted(f.receivers), where  # one copy into each receiver namespace
            assert path(orig)[:5] == [("net:net_dev_queue", f.ca, inode(f.a)),
                                      ("net:net_dev_start_xmit", f.ca, inode(f.a)),
                                      ("net:netif_rx", f.pa, m), ("net:net_dev_xmit", f.ca, inode(f.a)),
                                      ("net:netif_receive_skb", f.pa, m)]
            for p in family:
                ns = by_inode[p["fate"]["netns"]]
                dev, port = f.receivers[ns]
                tail = [("net:net_dev_queue", port, m), ("net:net_dev_start_xmit", port, m),
                        ("net:netif_rx", dev, inode(ns)), ("net:net_dev_xmit", port, m),
                        ("net:netif_receive_skb", dev, inode(ns))]
                ends = path(p)[-6:]  # the bridge port and veth into its namespace, then how it ended there
                assert ends[:5] == tail, path(p)
                if p is not orig:  # a clone is first seen where the bridge sends it
                    assert path(p)[:5] == tail and len(p["hops"]) == 6, path(p)
                    assert p["first"] == orig["first"]
                    # on its original's clock: cloned after the bridge port received the original
                    assert p["hops"][0]["offset_ns"] > orig["hops"][4]["offset_ns"]
                ended[ns].append((p["fate"]["kind"], p["fate"]["reason"]))
                if ns in reading:
                    assert ends[5] == ("sock:sk_data_ready", dev, inode(ns))
                    assert p["fate"]["owner"]["pid"] == readers[ns][1], p["fate"]
                else:
                    assert ends[5] == ("skb:kfree_skb", dev, inode(ns))
                    assert p["fate"]["location"].startswith("__udp4_lib_rcv"), p["fate"]
        for ns in f.receivers:
            if ns in reading:
                assert ended[ns] == [("delivered", None)] * n == [("delivered", None)] * f.udp(ns, "InDatagrams")
            else:
                assert ended[ns] == [("dropped", "NO_SOCKET")] * n == [("dropped", "NO_SOCKET")] * f.udp(ns,
                                                                                                       "NoPorts")
        summary = records[-1]
        assert summary["type"] == "summary" and summary["stop_reason"] == "count"
        health = summary["health"]
        assert (health["started"], health["clones"], health["clones_unseen"]) == (n, 2 * n, 0)
        assert health["lost_hops"] == 0 and health["table_full"] == 0 and summary["in_flight"] == 0
