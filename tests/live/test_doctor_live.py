"""netpath doctor against real problems, each provoked in a namespace the test creates.

Each test: a real process in a fresh namespace, the problem provoked with real traffic from the
host side, `netpath doctor --netns NS --json` watching. It checks the expected finding and its
severity, that its evidence equals the kernel's own counter (read by the test from the namespace,
before and after the run), that the right process is named, the knob's value as read by the test,
and that nothing else rises above info. Every setting changed is restored (global sysctls too).
NIC ring overruns, NAPI budget squeeze and RX imbalance need a real NIC driver and are unit-tested
on recorded snapshots (the VM lab's virtio-net covers them).
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netpath_testlib import COUNTING_RECEIVER, NetpathRun, VethPair, ip, veth_namespace

from netpath.diagnose.rules import RULE_IDS
from netpath.kernel.procnet import parse_conntrack_stats, parse_snmp
from netpath.kernel.settings import parse_softnet_all

RANK = {"info": 0, "warn": 1, "crit": 2}
DURATION = "6"


def ns_cat(ns: str, *paths: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "cat", *paths], capture_output=True, text=True,
                          check=True).stdout


def ns_snmp(ns: str) -> dict[str, int]:
    return parse_snmp(ns_cat(ns, "/proc/net/snmp")) | parse_snmp(ns_cat(ns, "/proc/net/netstat"))


def ns_sysctl(ns: str, name: str) -> str:
    return " ".join(ns_cat(ns, "/proc/sys/" + name.replace(".", "/")).split())


def delta(before: dict[str, int], after: dict[str, int], *names: str) -> int:
    return sum(after.get(n, 0) - before.get(n, 0) for n in names)


@contextlib.contextmanager
def sysctl(name: str, value: str, ns: str | None = None) -> Iterator[None]:
    """Set a sysctl (in ns, or globally) for the block; the old value comes back whatever happens."""
    path = "/proc/sys/" + name.replace(".", "/")
    prefix = ["ip", "netns", "exec", ns] if ns else []
    old = subprocess.run([*prefix, "cat", path], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run([*prefix, "sysctl", "-qw", f"{name}={value}"], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([*prefix, "sysctl", "-qw", f"{name}={old}"], check=True, capture_output=True)


class Doctor:
    """`netpath doctor --json` watching one namespace; provoke between start() and finish()."""

    def __init__(self, pair: VethPair, *extra: str, duration: str = DURATION) -> None:
        self.run = NetpathRun(["doctor", "--netns", pair.ns, "--duration", duration, "--json", *extra])
        self.start = self.run.wait_start()
        assert self.start["command"] == "doctor"

    def finish(self) -> tuple[int, list[dict], dict]:
        rc, records, err = self.run.finish(timeout=120)
        assert rc in (0, 1), err
        findings = [r for r in records if r["type"] == "finding"]
        summary = next(r for r in records if r["type"] == "summary")
        assert summary["findings"] == {s: sum(f["severity"] == s for f in findings) for s in RANK}
        return rc, findings, summary


def only(findings: list[dict], rule: str) -> dict:
    """The one finding of `rule`, and nothing else above info."""
    mine = [f for f in findings if f["id"] == rule]
    assert len(mine) == 1, findings
    others = [f for f in findings if f["id"] != rule and RANK[f["severity"]] > 0]
    assert not others, others
    f = mine[0]
    # the numbers seen, for the record (pytest -s)
    print(f"\n{f['id']} {f['severity']}: " + "; ".join(f"{e['value']} = {e['counter']}" for e in f["evidence"])
          + f" | {f['where']['comm']}[{f['where']['pid']}] | "
          + "; ".join(f"{k['name']}={k['value']}" for k in f["knobs"]))
    return f


def evidence(finding: dict, counter: str) -> int:
    return next(e["value"] for e in finding["evidence"] if e["counter"] == counter)


def knob(finding: dict, name: str) -> str | None:
    return next(k["value"] for k in finding["knobs"] if k["name"] == name)


def in_ns(pair: VethPair, code: str, *args: str) -> subprocess.Popen[str]:
    """A python process in the namespace that prints 'ready' (and maybe more) once set up."""
    proc = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", code, *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip().startswith("ready")
    return proc


def stop(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate("go\n", timeout=30)
    return out


def comm_of(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


# ---------------------------------------------------------------- socket-rcvbuf-overflow

STALLED = r"""
import socket, sys
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
rx.bind((sys.argv[1], int(sys.argv[2])))
print("ready", rx.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), flush=True)
sys.stdin.readline()
"""


def test_rcvbuf_overflow_names_the_process_its_buffer_and_rmem_max() -> None:
    with veth_namespace("npdr") as pair:
        proc = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", STALLED, pair.ns_addr,
                                 "5301"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        rcvbuf = int(proc.stdout.readline().split()[1])
        try:
            before = ns_snmp(pair.ns)
            doc = Doctor(pair)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for _ in range(300):
                    tx.sendto(b"x" * 1000, (pair.ns_addr, 5301))
            rc, findings, _ = doc.finish()
            after = ns_snmp(pair.ns)
            comm = comm_of(proc.pid)
            rmem_max = ns_sysctl(pair.ns, "net.core.rmem_max")
        finally:
            stop(proc)
    lost = delta(before, after, "UdpRcvbufErrors")
    assert 0 < lost < 300
    f = only(findings, "socket-rcvbuf-overflow")
    assert f["severity"] == "warn"  # 300 datagrams in 6 s: loss, under the crit rate
    assert evidence(f, "kfree_skb reason SOCKET_RCVBUFF") == lost
    assert evidence(f, "nstat UdpRcvbufErrors + Udp6RcvbufErrors") == lost
    assert f["where"]["pid"] == proc.pid and f["where"]["comm"] == comm
    assert (f["where"]["laddr"], f["where"]["lport"], f["where"]["proto"]) == (pair.ns_addr, 5301, "udp")
    assert f["where"]["netns_label"] == pair.ns
    assert knob(f, "SO_RCVBUF") == str(rcvbuf)
    assert knob(f, "net.core.rmem_max") == rmem_max
    assert rc == 0  # no --fail-on


# ---------------------------------------------------------------- listen-overflow

NEVER_ACCEPTS = r"""
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
sys.stdin.readline()
"""


def test_listen_overflow_names_the_listener_and_its_backlog() -> None:
    with veth_namespace("npdl") as pair:
        proc = in_ns(pair, NEVER_ACCEPTS, pair.ns_addr, 5302)
        clients = []
        try:
            before = ns_snmp(pair.ns)
            doc = Doctor(pair, "--fail-on", "warn")
            for _ in range(8):
                c = socket.socket()
                c.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    c.connect((pair.ns_addr, 5302))
                clients.append(c)
            time.sleep(1.5)  # one SYN retransmit (1 s) inside the window
            for c in clients:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            rc, findings, _ = doc.finish()
            after = ns_snmp(pair.ns)
            comm = comm_of(proc.pid)
            somaxconn = ns_sysctl(pair.ns, "net.core.somaxconn")
        finally:
            stop(proc)
    overflows = delta(before, after, "TcpExtListenOverflows")
    assert overflows > 0
    f = only(findings, "listen-overflow")
    # crit: the listener refused more attempts than it took (issue 31: refused connections are lost work)
    assert f["severity"] == "crit" and rc == 1  # --fail-on warn
    assert evidence(f, "nstat TcpExtListenOverflows") == overflows
    assert evidence(f, "nstat TcpPassiveOpens") == delta(before, after, "TcpPassiveOpens")
    # the SYN queue never filled: every listen drop was an accept-queue overflow, so no syn-queue-overflow
    if delta(before, after, "TcpExtListenDrops") == overflows:
        assert not [x for x in findings if x["id"] == "syn-queue-overflow"]
    assert f["where"]["lport"] == 5302 and f["where"]["laddr"] == pair.ns_addr
    assert (f["where"]["pid"], f["where"]["comm"]) == (proc.pid, comm)  # the listener's holder, by its inode
    assert knob(f, "listen() backlog") == "1"
    assert knob(f, "net.core.somaxconn") == somaxconn


# ---------------------------------------------------------------- no-listener


def test_closed_port_is_info_with_udp_noports() -> None:
    with veth_namespace("npdn") as pair:
        before = ns_snmp(pair.ns)
        doc = Doctor(pair, "--fail-on", "warn")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for _ in range(40):
                tx.sendto(b"x", (pair.ns_addr, 5303))
        rc, findings, _ = doc.finish()
        after = ns_snmp(pair.ns)
    assert delta(before, after, "UdpNoPorts") == 40  # the kernel saw them all
    f = only(findings, "no-listener")
    assert f["severity"] == "info" and rc == 0  # nothing an application asked for was lost
    assert evidence(f, "kfree_skb reason NO_SOCKET") == 40 == delta(before, after, "UdpNoPorts")
    assert evidence(f, "nstat UdpNoPorts + Udp6NoPorts") == 40
    assert f["where"]["iface"] == pair.ns_if


# ---------------------------------------------------------------- netfilter-drop


def iptables_pkts(ns: str, chain: str = "INPUT") -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "iptables", "-L", chain, "-v", "-x", "-n"], capture_output=True,
                         text=True, check=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines()[2:] if "DROP" in line)


def test_netfilter_drop_counts_what_the_rule_counts() -> None:
    with veth_namespace("npdf") as pair:
        pair.ns_exec("iptables", "-A", "INPUT", "-p", "udp", "--dport", "5304", "-j", "DROP")
        doc = Doctor(pair)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for _ in range(120):
                tx.sendto(b"x", (pair.ns_addr, 5304))
        _, findings, _ = doc.finish()
        rule_pkts = iptables_pkts(pair.ns)
    f = only(findings, "netfilter-drop")
    assert f["severity"] == "warn"  # it took every packet the interface received
    assert evidence(f, "kfree_skb reason NETFILTER_DROP") == rule_pkts == 120
    assert evidence(f, "link rx_packets") == 120
    assert knob(f, "iptables-save / nft list ruleset") == "1 drop/reject rules"
    assert f["where"]["iface"] == pair.ns_if


# ---------------------------------------------------------------- tc-drop


def tc_ingress_drops(ns: str, dev: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev, "ingress"],
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"dropped (\d+)", out).group(1))  # type: ignore[union-attr]


def test_tc_ingress_drop_equals_the_qdisc_drop_counter() -> None:
    with veth_namespace("npdt") as pair:
        # this kernel has no matchall classifier nor gact ('action drop'): u32 matching everything and a
        # redirect to a device that is down, which mirred turns into TC_ACT_SHOT, drop the same way
        pair.ns_exec("ip", "link", "add", "npdown0", "type", "veth", "peer", "name", "npdown1")
        pair.ns_exec("tc", "qdisc", "add", "dev", pair.ns_if, "ingress")
        done = pair.ns_exec("tc", "filter", "add", "dev", pair.ns_if, "ingress", "protocol", "ip", "u32", "match",
                            "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "npdown0")
        assert done.returncode == 0, done.stderr
        doc = Doctor(pair)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            for _ in range(90):
                tx.sendto(b"x", (pair.ns_addr, 5305))
        _, findings, _ = doc.finish()
        qdisc = tc_ingress_drops(pair.ns, pair.ns_if)
    f = only(findings, "tc-drop")
    assert f["severity"] == "warn"
    assert evidence(f, "kfree_skb reason TC_INGRESS") == qdisc == 90
    assert evidence(f, f"tc -s qdisc show dev {pair.ns_if} ingress") == 90
    assert knob(f, f"tc filter show dev {pair.ns_if} ingress") == "1 filters"


# ---------------------------------------------------------------- rp-filter


def test_strict_rp_filter_drops_a_source_with_no_route_back() -> None:
    with veth_namespace("npdp") as pair:
        spoofed = "10.203.77.9"  # on the host side only: the namespace has no route back to it
        ip("addr", "add", f"{spoofed}/32", "dev", pair.host_if)
        with sysctl(f"net.ipv4.conf.{pair.ns_if}.rp_filter", "1", pair.ns), \
                sysctl("net.ipv4.conf.all.rp_filter", "1", pair.ns):
            before = ns_snmp(pair.ns)
            doc = Doctor(pair)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                tx.bind((spoofed, 0))
                for _ in range(70):
                    tx.sendto(b"x", (pair.ns_addr, 5306))
            _, findings, _ = doc.finish()
            after = ns_snmp(pair.ns)
            value = ns_sysctl(pair.ns, f"net.ipv4.conf.{pair.ns_if}.rp_filter")
    f = only(findings, "rp-filter")
    assert f["severity"] == "warn"
    n = delta(before, after, "TcpExtIPReversePathFilter")
    assert evidence(f, "kfree_skb reason IP_RPFILTER") == n == 70
    assert evidence(f, "nstat TcpExtIPReversePathFilter") == 70
    assert knob(f, f"net.ipv4.conf.{pair.ns_if}.rp_filter") == value == "1"
    assert knob(f, "net.ipv4.conf.all.rp_filter") == "1"


# ---------------------------------------------------------------- conntrack-full

ACCEPTS = r"""
import socket, sys, threading
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
held = []
def loop():
    while True:
        try:
            held.append(s.accept()[0])
        except OSError:
            return
threading.Thread(target=loop, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
"""

CT_MAX = 8


def test_conntrack_full_is_crit_with_the_stat_counter_and_the_max() -> None:
    with veth_namespace("npdc") as pair:
        # any conntrack match makes the namespace track connections
        pair.ns_exec("iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
        proc = in_ns(pair, ACCEPTS, pair.ns_addr, 5307)
        clients: list[socket.socket] = []
        try:
            before = parse_conntrack_stats(ns_cat(pair.ns, "/proc/net/stat/nf_conntrack"))
            doc = Doctor(pair, "--fail-on", "crit")
            # nf_conntrack_max is global (read-only in a child namespace) and each namespace counts its own
            # entries against it: lowered only for the two seconds the provocation takes
            with sysctl("net.netfilter.nf_conntrack_max", str(CT_MAX)):
                for _ in range(CT_MAX):  # fill the table with established (assured) flows: not evictable
                    clients.append(socket.create_connection((pair.ns_addr, 5307), timeout=5))
                late = []
                for _ in range(6):
                    c = socket.socket()
                    c.setblocking(False)
                    with contextlib.suppress(BlockingIOError):
                        c.connect((pair.ns_addr, 5307))
                    late.append(c)
                time.sleep(1.5)  # one SYN retransmit each
                for c in late:
                    c.close()
                top = Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text().strip()
            rc, findings, _ = doc.finish()
            after = parse_conntrack_stats(ns_cat(pair.ns, "/proc/net/stat/nf_conntrack"))
        finally:
            for c in clients:
                c.close()
            stop(proc)
    refused = after["drop"] - before["drop"]
    assert refused > 0
    f = only(findings, "conntrack-full")
    assert f["severity"] == "crit" and rc == 1
    assert evidence(f, "/proc/net/stat/nf_conntrack drop") == refused
    assert evidence(f, "kfree_skb reason NETFILTER_DROP") == refused  # and no netfilter-drop finding for them
    assert top == str(CT_MAX)
    assert knob(f, "net.netfilter.nf_conntrack_max") == Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text(
    ).strip()  # read at the end of the run, after the test put it back


# ---------------------------------------------------------------- backlog-overflow



def softnet_dropped() -> int:
    return sum(c["dropped"] for c in parse_softnet_all(Path("/proc/net/softnet_stat").read_text()).values())


@pytest.mark.skipif(len(parse_softnet_all(Path("/proc/net/softnet_stat").read_text())) < 2,
                    reason="RPS to another CPU needs at least two CPUs")
def test_backlog_overflow_with_a_tiny_netdev_max_backlog() -> None:
    with veth_namespace("npdb") as pair:
        # RPS steers the namespace's receive work to CPU 1's backlog, which the sender on CPU 0 outruns
        subprocess.run(["ip", "netns", "exec", pair.ns, "sh", "-c",
                        f"echo 2 > /sys/class/net/{pair.ns_if}/queues/rx-0/rps_cpus"], check=True)
        proc = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", COUNTING_RECEIVER,
                                 pair.ns_addr, "5308"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        sent = 20000
        try:
            doc = Doctor(pair)
            sn_before = softnet_dropped()
            with sysctl("net.core.netdev_max_backlog", "2"):  # global: restored at once
                code = (f"import os,socket\nos.sched_setaffinity(0,{{0}})\ns=socket.socket(2,2)\n"
                        f"for _ in range({sent}): s.sendto(b'x'*64,({pair.ns_addr!r},5308))\n")
                subprocess.run([sys.executable, "-c", code], check=True)
                setting = Path("/proc/sys/net/core/netdev_max_backlog").read_text().strip()
            sn_after = softnet_dropped()
            _, findings, _ = doc.finish()
        finally:
            got = int(stop(proc).split()[-1])
    lost = sent - got
    assert lost > 0
    f = only(findings, "backlog-overflow")
    assert f["severity"] in ("warn", "crit")
    assert evidence(f, "kfree_skb reason CPU_BACKLOG") == lost  # what the receiver never got
    softnet = evidence(f, "/proc/net/softnet_stat dropped (column 2)")
    assert lost <= softnet <= sn_after - sn_before + softnet  # other namespaces on the host may add to it
    assert setting == "2"
    assert knob(f, "net.core.netdev_max_backlog") == Path("/proc/sys/net/core/netdev_max_backlog").read_text().strip()


# ---------------------------------------------------------------- reassembly-failure


def ip_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ipv4_packet(src: str, dst: str, proto: int, payload: bytes, ident: int = 1, flags_frag: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, flags_frag, 64, proto, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", ip_checksum(header)) + header[12:]
    return header + payload


def send_raw(dst: str, packets: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        for pkt in packets:
            raw.sendto(pkt, (dst, 0))


def test_fragments_with_a_missing_piece_time_out_as_reassembly_failures() -> None:
    with veth_namespace("npdf") as pair, sysctl("net.ipv4.ipfrag_time", "1", pair.ns):
        before = ns_snmp(pair.ns)
        doc = Doctor(pair)
        more_fragments = 0x2000
        first_halves = [ipv4_packet(pair.host_addr, pair.ns_addr, 17, struct.pack("!HHHH", 4000, 5309, 64, 0)
                                    + b"y" * 48, ident=100 + i, flags_frag=more_fragments) for i in range(25)]
        send_raw(pair.ns_addr, first_halves)  # the second halves never come
        _, findings, _ = doc.finish()
        after = ns_snmp(pair.ns)
        frag_time = ns_sysctl(pair.ns, "net.ipv4.ipfrag_time")
    fails = delta(before, after, "IpReasmFails")
    assert fails == delta(before, after, "IpReasmTimeout") == 25
    f = only(findings, "reassembly-failure")
    assert f["severity"] == "warn"
    assert evidence(f, "nstat IpReasmFails + Ip6ReasmFails") == 25
    assert evidence(f, "nstat IpReasmTimeout + Ip6ReasmTimeout") == 25
    assert evidence(f, "kfree_skb reasons FRAG_REASM_TIMEOUT, FRAG_TOO_FAR, DUP_FRAG") == 25  # one fragment each
    assert knob(f, "net.ipv4.ipfrag_time") == frag_time == "1"


# ---------------------------------------------------------------- checksum-errors

BOUND = r"""
import socket, sys
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
sys.stdin.readline()
"""


def test_bad_udp_checksums_are_checksum_errors_equal_to_incsumerrors() -> None:
    with veth_namespace("npdk") as pair:
        proc = in_ns(pair, BOUND, pair.ns_addr, 5310)
        try:
            before = ns_snmp(pair.ns)
            doc = Doctor(pair)
            bad = struct.pack("!HHHH", 4000, 5310, 8 + 16, 0xBEEF) + b"z" * 16  # 0xBEEF is not its checksum
            send_raw(pair.ns_addr, [ipv4_packet(pair.host_addr, pair.ns_addr, 17, bad, ident=i) for i in range(33)])
            _, findings, _ = doc.finish()
            after = ns_snmp(pair.ns)
        finally:
            stop(proc)
    errors = delta(before, after, "UdpInCsumErrors")
    assert errors == 33
    f = only(findings, "checksum-errors")
    assert f["severity"] == "crit"  # every packet on the link was damaged (the damage policy: 1% is crit)
    assert evidence(f, "kfree_skb reasons UDP_CSUM/TCP_CSUM/IP_CSUM/ICMP_CSUM/SKB_CSUM") == 33
    assert evidence(f, "nstat UdpInCsumErrors + Udp6InCsumErrors") == 33
    # intact frames (no FCS errors on the veth) with bad UDP checksums: the sender is named, not rx offload
    assert evidence(f, "ip -s link rx_crc_errors + rx_frame_errors") == 0
    assert f["knobs"][0]["name"].startswith("the senders") and "TX checksum offload" in f["knobs"][0]["advice"]
    assert not any(k["name"].startswith("ethtool -K") for k in f["knobs"])


# ---------------------------------------------------------------- healthy


READER = r"""
import socket, sys, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((sys.argv[1], int(sys.argv[2])))
t = socket.socket()
t.bind((sys.argv[1], int(sys.argv[2])))
t.listen(128)
def udp():
    while True:
        u.recv(2048)
def tcp():
    while True:
        c = t.accept()[0]
        while c.recv(65536):
            pass
        c.close()
threading.Thread(target=udp, daemon=True).start()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_healthy_namespace_under_traffic_has_nothing_above_info() -> None:
    with veth_namespace("npdh") as pair:
        proc = in_ns(pair, READER, pair.ns_addr, 5311)
        try:
            doc = Doctor(pair, "--fail-on", "warn")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for i in range(2000):
                    tx.sendto(b"x" * 200, (pair.ns_addr, 5311))
                    if i % 20 == 0:
                        time.sleep(0.01)  # a reader that keeps up: plain traffic, not a flood
            for _ in range(5):
                with socket.create_connection((pair.ns_addr, 5311), timeout=5) as c:
                    c.sendall(b"y" * 100_000)
            rc, findings, summary = doc.finish()
        finally:
            stop(proc)
    assert [(f["id"], f["severity"], f["title"], f["evidence"]) for f in findings if RANK[f["severity"]] > 0] == []
    assert rc == 0
    assert "socket-rcvbuf-overflow" in summary["checked"] and len(summary["checked"]) == len(RULE_IDS)


def test_text_report_on_a_provoked_problem_fits_80_columns() -> None:
    with veth_namespace("npdx") as pair:
        run = subprocess.Popen([sys.executable, "-m", "netpath", "doctor", "--netns", pair.ns, "--duration", "3"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[2])
        # no start line in text mode: keep sending until the run is over, so some land inside its window
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            while run.poll() is None:
                tx.sendto(b"x", (pair.ns_addr, 5312))
                time.sleep(0.1)
        out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert "INFO  no-listener" in out and "checked: socket-rcvbuf-overflow" in out
    assert max(len(line) for line in out.splitlines()) <= 80


# ---------------------------------------------------------------- netpath export: netpath_finding


def test_export_publishes_the_same_verdict_as_a_gauge() -> None:
    import select
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with veth_namespace("npde") as pair:
        proc = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", STALLED, pair.ns_addr,
                                 "5313"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        exp = subprocess.Popen([sys.executable, "-m", "netpath", "export", "--netns", pair.ns, "--listen",
                                f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[2])
        try:
            assert exp.stderr is not None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                ready, _, _ = select.select([exp.stderr], [], [], deadline - time.monotonic())
                if ready and "serving http://" in exp.stderr.readline():
                    break
            time.sleep(1.5)  # the window then spans over a second: 200 drops in it are under the crit rate
            before = ns_snmp(pair.ns)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for _ in range(200):
                    tx.sendto(b"x" * 1000, (pair.ns_addr, 5313))
                for _ in range(12):
                    tx.sendto(b"x", (pair.ns_addr, 5314))  # closed
            after = ns_snmp(pair.ns)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
                text = resp.read().decode()
        finally:
            exp.terminate()
            exp.communicate(timeout=30)
            stop(proc)
    got = {(s.labels["id"], s.labels["severity"], s.labels["iface"], s.labels["netns_label"]): s.value
           for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == "netpath_finding"}
    lost = delta(before, after, "UdpRcvbufErrors")
    assert lost > 0
    assert got[("socket-rcvbuf-overflow", "warn", pair.ns_if, pair.ns)] == lost
    assert got[("no-listener", "info", pair.ns_if, pair.ns)] == 12
    # softnet is the host's: other tests' traffic may add an info-level CPU finding, nothing above info
    assert [k for k in got if k[1] != "info" and k[0] != "socket-rcvbuf-overflow"] == []


# ---------------------------------------------------------------- slow-reader

SLOW_READER = r"""
import socket, sys, time
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
rx.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
for _ in range(int(sys.argv[3])):
    time.sleep(0.15)           # every datagram waits in the queue while the reader sleeps
    rx.recv(2048)
print("done", flush=True)
"""


def test_a_reader_that_reads_late_is_a_slow_reader_by_process() -> None:
    n = 30
    with veth_namespace("npds") as pair:
        proc = in_ns(pair, SLOW_READER, pair.ns_addr, 5315, n)
        try:
            doc = Doctor(pair, duration="8")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for _ in range(n):
                    tx.sendto(b"x" * 100, (pair.ns_addr, 5315))  # all at once: the last waits n * 150 ms
            assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
            _, findings, _ = doc.finish()
            comm = comm_of(proc.pid)
        finally:
            proc.kill()
            proc.wait()
    f = only(findings, "slow-reader")
    assert f["severity"] == "warn"  # p99 far above 100 ms: the data is late, not lost
    assert (f["where"]["pid"], f["where"]["comm"]) == (proc.pid, comm)
    assert evidence_named(f, "packets timed in the socket queue") == n
    assert evidence_named(f, "p99 time in the socket queue") >= 100_000_000


def evidence_named(finding: dict, name: str) -> int:
    return next(e["value"] for e in finding["evidence"] if e["name"] == name)


def test_not_root_is_exit_3_with_the_fix_and_no_trace_leaves_the_latency_rules_unchecked() -> None:
    proc = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all",
                           sys.executable, "-m", "netpath", "doctor", "--duration", "1"], capture_output=True,
                          text=True, timeout=60, check=False, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 3, proc.stderr
    assert "sudo" in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    with veth_namespace("npdq") as pair:
        doc = Doctor(pair, "--no-trace", duration="2")
        # the drops program only (its fragment-queue placement adds timer:timer_expire_entry), no trace hook
        hooks = {a["hook"] for a in doc.start["attached"]}
        assert "skb:kfree_skb" in hooks and hooks <= {"skb:kfree_skb", "timer:timer_expire_entry"}, hooks
        rc, findings, summary = doc.finish()
    assert rc == 0 and [f for f in findings if RANK[f["severity"]] > 0] == []
    assert "slow-reader" not in summary["checked"] and len(summary["checked"]) == len(RULE_IDS) - 2


def test_a_namespace_deleted_mid_run_still_concludes() -> None:
    with veth_namespace("npdg") as pair:
        doc = Doctor(pair, duration="3")
        ip("link", "del", pair.host_if)
        ip("netns", "del", pair.ns)
        rc, findings, summary = doc.finish()
    assert rc == 0 and [f for f in findings if RANK[f["severity"]] > 0] == []
    assert any("is gone" in u["reason"] for u in summary["unavailable"]), summary
