"""Every namespace's counters (collect/netns_counters): counter-only drops in a namespace the test makes are
seen by a host-wide reading under that namespace's label, equal to the kernel's own counters read inside it
with nstat."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from netpath_testlib import veth_namespace

from netpath import netns
from netpath.collect import netns_counters as nc

# in the namespace: a UDP socket with the smallest receive buffer that never reads (datagrams past the first
# are UdpRcvbufErrors) and a listen(0) socket that never accepts (SYNs past the queue are ListenOverflows)
STUCK = r"""
import socket, sys, time
addr, n = sys.argv[1], int(sys.argv[2])
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
r.bind((addr, 0))
l = socket.socket()
l.bind((addr, 0))
l.listen(0)
print(r.getsockname()[1], l.getsockname()[1], flush=True)
sys.stdin.readline()
"""


def nstat(ns: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-asz"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:] if len(line.split()) >= 2}


def _mine(readings: list, inode: int):
    return next(c for c in readings if c.inode == inode)


def test_counter_only_drops_of_a_namespace_are_read_under_its_label():
    with veth_namespace("npnc") as pair:
        inode = os.stat(f"/run/netns/{pair.ns}").st_ino
        cookie = netns.cookie_of(netns.resolve(pair.ns))
        stuck = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", STUCK, pair.ns_addr, "0"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert stuck.stdout is not None
            udp_port, tcp_port = (int(p) for p in stuck.stdout.readline().split())
            before, _ = nc.read_every_namespace()
            kernel_before = nstat(pair.ns)
            # from the host over the veth: 300 datagrams at a buffer that holds one, 6 connects at listen(0)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(300):
                    s.sendto(b"x" * 1000, (pair.ns_addr, udp_port))
            socks = []
            for _ in range(6):
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex((pair.ns_addr, tcp_port))
                socks.append(c)
            time.sleep(1.5)  # the first SYN retries (1 s) reach the full queue too
            kernel_after = nstat(pair.ns)
            after, skipped = nc.read_every_namespace()
            for c in socks:
                c.close()
        finally:
            stuck.communicate("\n", timeout=10)
        assert skipped == 0
        mine = _mine(after, inode)
        assert mine.label == pair.ns and mine.named and mine.cookie == cookie
        (delta,) = [c for c in nc.window(before, after) if c.inode == inode]
        for name in ("UdpRcvbufErrors", "TcpExtListenOverflows", "TcpExtListenDrops"):
            want = kernel_after[name] - kernel_before[name]
            assert delta.snmp.get(name, 0) == want, (name, delta.snmp.get(name), want)
            # nothing else touches this namespace: the reading is the kernel's counter itself
            assert mine.snmp[name] == kernel_after[name]
        assert delta.snmp["UdpRcvbufErrors"] >= 250  # the buffer held a handful of the 300 datagrams
        assert delta.snmp["TcpExtListenOverflows"] >= 4
        # the host's reading is the host's: the namespace's counts are not in it
        host = _mine(after, os.stat("/proc/self/ns/net").st_ino)
        assert host.label == "host" and host.cookie != cookie
        assert any(c.inode == inode for c in nc.active(nc.window(before, after)))
