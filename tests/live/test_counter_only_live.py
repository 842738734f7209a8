"""Drops the kernel only counts (issue 22, class 4): a SYN at a full accept queue, conntrack's own counters."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netpath_testlib import NetpathRun, veth_namespace

# a listener in the namespace with an accept queue of one, never accepting
LISTENER = r"""
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(0)
print("ready", flush=True)
sys.stdin.readline()
"""


def nstat(ns: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-az"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:] if len(line.split()) >= 2}


def conntrack_stat(ns: str, name: str) -> int:
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/stat/nf_conntrack"], capture_output=True,
                          text=True, check=True).stdout.splitlines()
    col = text[0].split().index(name)
    return sum(int(line.split()[col], 16) for line in text[1:])


def syns_at_a_full_queue(addr: str, port: int, n: int) -> None:
    """n connects that the full queue refuses; aborted (SYN_SENT sends nothing on close) before any retry."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((addr, port))
        socks.append(s)
    time.sleep(0.5)
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()


def test_syn_refused_at_a_full_accept_queue_is_said_plainly_with_the_kernels_counts():
    port = 40931
    with veth_namespace("npco") as pair:
        subprocess.run(["ip", "netns", "exec", pair.ns, "sysctl", "-qw", "net.ipv4.tcp_syncookies=0"], check=True)
        listener = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", LISTENER, pair.ns_addr,
                                     str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        try:
            filled = socket.create_connection((pair.ns_addr, port))  # the queue's one place
            time.sleep(0.2)
            before = nstat(pair.ns)
            run = NetpathRun(["drops", "--netns", pair.ns, "--json", "--duration", "3", "--fail-on-drops", "1"])
            people = subprocess.Popen([sys.executable, "-m", "netpath", "drops", "--netns", pair.ns, "--duration",
                                       "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=Path(__file__).resolve().parents[2])
            run.wait_start()
            time.sleep(1.0)  # the people run is started too (its start line is on stderr)
            syns_at_a_full_queue(pair.ns_addr, port, 20)
            rc, _records, err = run.finish()
            pout, perr = people.communicate(timeout=60)
            after = nstat(pair.ns)
            filled.close()
        finally:
            listener.kill()
            listener.wait()
    overflows = after["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
    assert overflows >= 20
    assert rc == 0, err  # --fail-on-drops counts drop events: there were none
    summary = run.summary()
    assert summary["total"] == 0 and summary["rows"] == []
    counted = {c["name"]: c["count"] for c in summary["counters"] if c["source"] == "snmp"}
    assert counted["TcpExtListenOverflows"] == overflows
    assert counted["TcpExtListenDrops"] == after["TcpExtListenDrops"] - before["TcpExtListenDrops"]
    assert "snmp:TcpExtListenOverflows" in summary["counter_only"]
    assert people.returncode == 0, perr
    assert "no drop event, but kernel drop counters rose: " in pout and "TcpExtListenOverflows +" in pout


RAW_INVALID = r"""
import socket, struct, sys
dst, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
src = socket.inet_aton(sys.argv[3])
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
for i in range(n):
    h = struct.pack("!HHIIBBHHH", 41000 + i, 80, 1, 0, 5 << 4, 0x03, 1024, 0, 0)  # SYN|FIN: no valid state
    c = csum(src + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(h)) + h)
    s.sendto(h[:16] + struct.pack("!H", c) + h[18:], (dst, 0))
"""


def test_conntrack_counters_are_among_the_counters_equal_to_the_kernels():
    if not Path("/proc/net/stat/nf_conntrack").exists():
        pytest.skip("no /proc/net/stat/nf_conntrack: nf_conntrack is not loaded (CONFIG_NF_CONNTRACK)")
    sent = 25
    with veth_namespace("npct") as pair:
        ipt = subprocess.run(["ip", "netns", "exec", pair.ns, "iptables", "-A", "INPUT", "-m", "conntrack",
                              "--ctstate", "INVALID", "-j", "ACCEPT"], capture_output=True, text=True, check=False)
        if ipt.returncode != 0:
            pytest.skip(f"iptables cannot load a conntrack rule here: {ipt.stderr.strip()}")
        before = conntrack_stat(pair.ns, "invalid")
        run = NetpathRun(["drops", "--netns", pair.ns, "--json", "--duration", "2"])
        run.wait_start()
        subprocess.run([sys.executable, "-c", RAW_INVALID, pair.ns_addr, str(sent), pair.host_addr], check=True)
        rc, _records, err = run.finish()
        invalid = conntrack_stat(pair.ns, "invalid") - before
    assert rc == 0, err
    assert invalid >= sent  # the kernel counts an invalid packet once per conntrack hook it passes
    counted = {c["name"]: c["count"] for c in run.summary()["counters"] if c["source"] == "conntrack"}
    assert counted == {"invalid": invalid}

