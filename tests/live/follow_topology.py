"""The path netpath follow's live tests send through: a client namespace A, a middle namespace M with a
bridge and an nftables DNAT, and a server namespace B.

    A: ca (10.77.1.2) --veth-- M: pa (port of br0, 10.77.1.1) ... routed ... cb (10.77.2.1) --veth-- B: sb (10.77.2.2)

A sends to the service address 10.77.9.53; M's nftables prerouting DNATs it to 10.77.2.2. IPv6 is off and
every neighbour entry is static, so the only packets on these links are the ones a test sends.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from netpath_testlib import disable_ipv6, ip, link_mac

CLIENT, GATEWAY_A, GATEWAY_B, SERVER, SERVICE = "10.77.1.2", "10.77.1.1", "10.77.2.1", "10.77.2.2", "10.77.9.53"


@dataclass
class Topology:
    a: str
    m: str
    b: str
    ca: str  # A's device
    pa: str  # its peer in M, a port of br0
    br: str
    cb: str  # M's device towards B
    sb: str  # B's device

    def run(self, ns: str, *argv: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check,
                              **kw)

    def popen(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def nft(self, ns: str, script: str) -> None:
        self.run(ns, "nft", "-f", "-", input=script)

    def dnat(self, service_port: int, server_port: int, proto: str = "udp") -> None:
        self.nft(self.m, f"""table ip follow_nat {{
    chain pre {{ type nat hook prerouting priority dstnat; policy accept;
        ip daddr {SERVICE} {proto} dport {service_port} dnat to {SERVER}:{server_port}
    }}
}}""")


def add_veth(left: str, lns: str, right: str, rns: str) -> None:
    """A veth pair from namespace lns to namespace rns, IPv6 off on both ends (no stray router solicitations)."""
    ip("link", "add", left, "netns", lns, "type", "veth", "peer", "name", right, "netns", rns)
    disable_ipv6(left, lns)
    disable_ipv6(right, rns)


@contextmanager
def topology() -> Iterator[Topology]:
    tag = uuid.uuid4().hex[:6]
    t = Topology(f"fwa{tag}", f"fwm{tag}", f"fwb{tag}", f"ca{tag}", f"pa{tag}", f"br{tag}", f"cb{tag}", f"sb{tag}")
    made: list[str] = []
    try:
        for ns in (t.a, t.m, t.b):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        add_veth(t.ca, t.a, t.pa, t.m)
        add_veth(t.cb, t.m, t.sb, t.b)
        ip("-n", t.m, "link", "add", t.br, "type", "bridge")
        disable_ipv6(t.br, t.m)
        ip("-n", t.m, "link", "set", t.pa, "master", t.br)
        for ns, dev, addr in ((t.a, t.ca, CLIENT), (t.m, t.br, GATEWAY_A), (t.m, t.cb, GATEWAY_B),
                              (t.b, t.sb, SERVER)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        for ns, dev in ((t.a, t.ca), (t.m, t.pa), (t.m, t.br), (t.m, t.cb), (t.b, t.sb)):
            ip("-n", ns, "link", "set", dev, "up")
        ip("-n", t.a, "route", "add", "default", "via", GATEWAY_A)
        ip("-n", t.b, "route", "add", "default", "via", GATEWAY_B)
        t.run(t.m, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # bridged IPv4 goes through iptables/nftables' IP hooks in the bridge (br_netfilter, as Kubernetes
        # needs): M's DNAT happens on the way from the bridge port to the bridge device. Where br_netfilter
        # is a module not loaded (the lab's Debian kernels), in the IP layer after the bridge device
        if Path("/proc/sys/net/bridge").is_dir():
            t.run(t.m, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
        ip("-n", t.a, "neigh", "replace", GATEWAY_A, "lladdr", link_mac(t.br, t.m), "dev", t.ca, "nud", "permanent")
        ip("-n", t.m, "neigh", "replace", CLIENT, "lladdr", link_mac(t.ca, t.a), "dev", t.br, "nud", "permanent")
        ip("-n", t.m, "neigh", "replace", SERVER, "lladdr", link_mac(t.sb, t.b), "dev", t.cb, "nud", "permanent")
        ip("-n", t.b, "neigh", "replace", GATEWAY_B, "lladdr", link_mac(t.cb, t.m), "dev", t.sb, "nud", "permanent")
        # the bridge learns A's MAC from the first frame: teach it now, so nothing is flooded (cloned)
        subprocess.run(["bridge", "-n", t.m, "fdb", "replace", link_mac(t.ca, t.a), "dev", t.pa, "master",
                        "static"], check=True, capture_output=True)
        yield t
    finally:
        for ns in made:
            ip("netns", "del", ns, check=False)
