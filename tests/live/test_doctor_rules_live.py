"""Issue 31's rules provoked for real in namespaces the test creates, each checked against the kernel's own
counter named in the finding; a busy healthy namespace gives nothing above info.

Every setting changed is restored, global ones too (udp_mem, nf_conntrack_max). Each run is saved with
--save and replayed with --load: the replay prints the same findings. With NETPATH_DOCTOR_CORPUS=DIR the
saved windows and the findings the live run printed are kept in DIR (tests/unit/data/doctor-windows is
that corpus, replayed by tests/unit/test_doctor_saved.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from netpath_testlib import NetpathRun, VethPair, ip, run_netpath, veth_namespace
from test_doctor_live import (
    ACCEPTS,
    RANK,
    evidence,
    in_ns,
    ip_checksum,
    ipv4_packet,
    knob,
    ns_cat,
    ns_snmp,
    send_raw,
    stop,
    sysctl,
)

DURATION = "6"


class SavedDoctor:
    """`netpath doctor --netns NS --json --save FILE`; finish() also replays the file with --load."""

    def __init__(self, pair: VethPair, case: str, tmp: Path, *extra: str, duration: str = DURATION) -> None:
        self.case = case
        self.path = tmp / f"{case}.window.json"
        self.run = NetpathRun(["doctor", "--netns", pair.ns, "--duration", duration, "--json", "--save",
                               str(self.path), *extra])
        assert self.run.wait_start()["command"] == "doctor"

    def finish(self) -> list[dict]:
        rc, records, err = self.run.finish(timeout=120)
        assert rc in (0, 1), err
        findings = [r for r in records if r["type"] == "finding"]
        assert self.path.stat().st_mode & 0o777 == 0o600
        replay = run_netpath("doctor", "--load", str(self.path), "--json")
        assert replay.returncode == rc, replay.stderr
        assert [json.loads(x) for x in replay.stdout.splitlines() if '"finding"' in x] == findings
        corpus = os.environ.get("NETPATH_DOCTOR_CORPUS")
        if corpus:
            shutil.copyfile(self.path, Path(corpus) / self.path.name)
            (Path(corpus) / f"{self.case}.findings.jsonl").write_text(
                "".join(json.dumps(f, sort_keys=True) + "\n" for f in findings))
        for f in findings:  # the numbers seen, for the record (pytest -s)
            print(f"\n{f['id']} {f['severity']}: " + "; ".join(f"{e['value']} = {e['counter']}"
                                                                for e in f["evidence"] if e["counter"]))
        return findings


def one(findings: list[dict], rule: str) -> dict:
    mine = [f for f in findings if f["id"] == rule]
    assert len(mine) == 1, findings
    return mine[0]


def nothing_else_above_info(findings: list[dict], *rules: str) -> None:
    others = [(f["id"], f["severity"], f["title"]) for f in findings
              if f["id"] not in rules and RANK[f["severity"]] > 0]
    assert not others, others


def delta(before: dict[str, int], after: dict[str, int], name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


# ---------------------------------------------------------------- syn-queue-overflow

LISTEN8 = r"""
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
sys.stdin.readline()
"""


def tcp_syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000 + sport, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", ip_checksum(pseudo + tcp)) + tcp[18:]
    return ipv4_packet(src, dst, 6, tcp, ident=sport)


def syn_recv(ns: str, port: int) -> int:
    """Half-open requests at a listener's port, as ss lists them (sock_diag's SYN_RECV dump)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htn", "state", "syn-recv", "sport", "=", f":{port}"],
                         capture_output=True, text=True, check=True).stdout
    return len([line for line in out.splitlines() if line.strip()])


def test_syn_queue_overflow_equals_tcpreqqfulldrop(tmp_path: Path) -> None:
    """SYNs from a source whose SYN-ACKs go nowhere (a neighbour entry with a MAC nobody has: the host's
    veth drops them as PACKET_OTHERHOST, nothing leaves the host) fill the SYN queue of a listen(8)
    socket; with syncookies off the rest are dropped (TCPReqQFullDrop). A second, idle listener in the
    namespace: the finding names the one whose SYN queue is full (its requests, from sock_diag)."""
    port = 5320
    with veth_namespace("npsq") as pair, sysctl("net.ipv4.tcp_syncookies", "0", pair.ns):
        n = int(pair.ns_addr.split(".")[2])
        spoofed = f"10.203.{n}.5"
        ip("-n", pair.ns, "route", "add", f"10.203.{n}.0/24", "dev", pair.ns_if)
        ip("-n", pair.ns, "neigh", "replace", spoofed, "lladdr", "02:00:00:00:00:99", "dev", pair.ns_if,
           "nud", "permanent")
        proc = in_ns(pair, LISTEN8, pair.ns_addr, port)
        idle = in_ns(pair, LISTEN8, pair.ns_addr, port + 1)
        try:
            before = ns_snmp(pair.ns)
            doc = SavedDoctor(pair, "syn-queue-overflow", tmp_path)
            send_raw(pair.ns_addr, [tcp_syn(spoofed, pair.ns_addr, 20000 + i, port) for i in range(40)])
            findings = doc.finish()
            queued = syn_recv(pair.ns, port)  # the requests wait ~1 min for their SYN-ACK retransmits
            after = ns_snmp(pair.ns)
        finally:
            stop(idle)
            stop(proc)
    full_drop = delta(before, after, "TcpExtTCPReqQFullDrop")
    assert full_drop >= 30  # 40 SYNs at a queue of 8 or 9
    f = one(findings, "syn-queue-overflow")
    nothing_else_above_info(findings, "syn-queue-overflow")
    assert f["severity"] == "crit"  # every handshake of the window was refused
    assert evidence(f, "nstat TcpExtTCPReqQFullDrop") == full_drop
    assert evidence(f, "nstat TcpExtListenDrops - TcpExtListenOverflows") == (
        delta(before, after, "TcpExtListenDrops") - delta(before, after, "TcpExtListenOverflows"))
    assert knob(f, "net.ipv4.tcp_syncookies") == "0" and knob(f, "listen() backlog") == "8"
    assert f["where"]["lport"] == port and f["where"]["pid"] == proc.pid
    assert queued >= 8
    assert evidence(f, "sock_diag SYN_RECV requests (ss -tn state syn-recv)") == queued
    assert evidence(f, "sock_diag idiag_wqueue") == 8


# ---------------------------------------------------------------- tcp-rcvq-drop

SHRINKS = r"""
import socket, sys
l = socket.socket()
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(1)
print("ready", flush=True)
c, _ = l.accept()
sys.stdin.readline()
c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # a fixed, tiny buffer under an open window
print("shrunk", flush=True)
sys.stdin.readline()
"""


def test_tcp_rcvq_drop_equals_tcprcvqdrop(tmp_path: Path) -> None:
    """The receiver advertised a window, then fixed its buffer at the minimum (SO_RCVBUF): the sender may
    still fill the window, tcp_try_rmem_schedule fails after pruning, and TCPRcvQDrop counts each drop."""
    port = 5321
    with veth_namespace("nprq") as pair:
        proc = in_ns(pair, SHRINKS, pair.ns_addr, port)
        client = socket.create_connection((pair.ns_addr, port), timeout=5)
        try:
            before = ns_snmp(pair.ns)
            doc = SavedDoctor(pair, "tcp-rcvq-drop", tmp_path)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "shrunk"
            client.setblocking(False)
            sent = 0
            try:
                while sent < 4 << 20:
                    sent += client.send(b"x" * 65536)
            except BlockingIOError:
                pass
            time.sleep(2)  # retransmissions into the full queue
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # an RST: nothing more is sent after the window
            findings = doc.finish()
            after = ns_snmp(pair.ns)
        finally:
            stop(proc)
    drops = delta(before, after, "TcpExtTCPRcvQDrop")
    assert drops > 0
    f = one(findings, "tcp-rcvq-drop")
    nothing_else_above_info(findings, "tcp-rcvq-drop")
    assert f["severity"] in ("warn", "crit")
    assert evidence(f, "nstat TcpExtTCPRcvQDrop") == drops
    assert evidence(f, "nstat TcpExtPruneCalled") == delta(before, after, "TcpExtPruneCalled")
    assert f["where"]["lport"] == port and f["where"]["pid"] == proc.pid
    assert f["knobs"][0]["name"] == "net.ipv4.tcp_rmem"
    assert "net.core.rmem_max" not in [k["name"] for k in f["knobs"]]


# ---------------------------------------------------------------- conntrack-near-full

CT_MAX = 20


def test_conntrack_near_full_warns_before_refusing(tmp_path: Path) -> None:
    port = 5322
    with veth_namespace("npcn") as pair:
        pair.ns_exec("iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
        proc = in_ns(pair, ACCEPTS, pair.ns_addr, port)
        clients: list[socket.socket] = []
        try:
            # nf_conntrack_max is global; each namespace counts its own entries against it. Lowered for this
            # run (the doctor reads it at the end), back before the test ends.
            with sysctl("net.netfilter.nf_conntrack_max", str(CT_MAX)):
                before = ns_cat(pair.ns, "/proc/net/stat/nf_conntrack")
                doc = SavedDoctor(pair, "conntrack-near-full", tmp_path)
                for _ in range(17):  # 85% of the table, all established: nothing is refused
                    clients.append(socket.create_connection((pair.ns_addr, port), timeout=5))
                findings = doc.finish()
                count = int(ns_cat(pair.ns, "/proc/sys/net/netfilter/nf_conntrack_count"))
                after = ns_cat(pair.ns, "/proc/net/stat/nf_conntrack")
        finally:
            for c in clients:
                c.close()
            stop(proc)
    from netpath.kernel.procnet import parse_conntrack_stats

    assert parse_conntrack_stats(after)["drop"] == parse_conntrack_stats(before)["drop"]  # nothing refused
    f = one(findings, "conntrack-near-full")
    nothing_else_above_info(findings, "conntrack-near-full")
    assert f["severity"] == "warn" and count >= 16
    assert evidence(f, "sysctl net.netfilter.nf_conntrack_count") == count
    assert evidence(f, "sysctl net.netfilter.nf_conntrack_max") == CT_MAX


# ---------------------------------------------------------------- conntrack-insert-failed

CLASH = r"""
import socket, sys
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
first = socket.create_connection((dst, port), timeout=5)  # holds the SNAT rule's only port
print("ready", flush=True)
sys.stdin.readline()
for _ in range(n):  # each SYN is NATed onto the same port, and its entry cannot be inserted
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((dst, port))  # the SYN goes through POSTROUTING (and is dropped) inside this call
    s.close()  # before any retransmit: one SYN per attempt
print("done", flush=True)
sys.stdin.readline()
"""


def test_a_nat_port_clash_is_conntrack_insert_failed_equal_to_its_counter(tmp_path: Path) -> None:
    """SNAT onto a single port (--to-source ADDR:40000) with one connection holding it: the next connection's
    SYN is NATed onto the same port anyway (nf_nat_l4proto_unique_tuple returns the last port it tried when
    every one is taken), its entry's reply tuple clashes at __nf_conntrack_confirm, nf_ct_resolve_clash cannot
    resolve it for TCP and the SYN is dropped: insert_failed and drop count it, the table is not full."""
    port, attempts = 5323, 5
    with veth_namespace("npci") as pair:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((pair.host_addr, port))
        srv.listen(16)
        nat = pair.ns_exec("iptables", "-t", "nat", "-A", "POSTROUTING", "-o", pair.ns_if, "-p", "tcp", "-d",
                           pair.host_addr, "--dport", str(port), "-j", "SNAT", "--to-source", f"{pair.ns_addr}:40000")
        assert nat.returncode == 0, nat.stderr
        proc = in_ns(pair, CLASH, pair.host_addr, port, attempts)
        try:
            held = srv.accept()[0]
            before = ns_cat(pair.ns, "/proc/net/stat/nf_conntrack")
            doc = SavedDoctor(pair, "conntrack-insert-failed", tmp_path)
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "done"
            findings = doc.finish()
            after = ns_cat(pair.ns, "/proc/net/stat/nf_conntrack")
            held.close()
        finally:
            stop(proc)
            srv.close()
    from netpath.kernel.procnet import parse_conntrack_stats

    b, a = parse_conntrack_stats(before), parse_conntrack_stats(after)
    failed = a["insert_failed"] - b["insert_failed"]
    assert failed == attempts and a["drop"] - b["drop"] == attempts  # the clash is counted in both
    f = one(findings, "conntrack-insert-failed")
    nothing_else_above_info(findings, "conntrack-insert-failed")
    assert not [x for x in findings if x["id"] in ("conntrack-full", "netfilter-drop")]
    assert f["severity"] in ("warn", "crit")
    assert evidence(f, "/proc/net/stat/nf_conntrack insert_failed") == failed
    assert evidence(f, "/proc/net/stat/nf_conntrack insert_failed - chainlength") == failed
    assert evidence(f, "/proc/net/stat/nf_conntrack chainlength") == a["chaintoolong"] - b["chaintoolong"] == 0


# ---------------------------------------------------------------- proto-mem-pressure

HUGE = r"""
import socket, sys
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: the buffer is not the limit here
rx.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
sys.stdin.readline()
"""


def udp_socket_drops(ns: str, port: int) -> int:
    """The drops column of /proc/net/udp: the socket's sk_drops."""
    for line in ns_cat(ns, "/proc/net/udp").splitlines()[1:]:
        cols = line.split()
        if int(cols[1].split(":")[1], 16) == port:
            return int(cols[-1])
    raise AssertionError(f"no UDP socket on port {port}")


def test_udp_memory_exhausted_is_proto_mem_pressure_equal_to_udpmemerrors(tmp_path: Path) -> None:
    """udp_mem (pages, for all UDP sockets of the host) lowered to one page for the provocation: past the
    per-socket minimum every datagram fails __sk_mem_raise_allocated and counts UdpMemErrors."""
    port = 5323
    with veth_namespace("nppm") as pair:
        proc = in_ns(pair, HUGE, pair.ns_addr, port)
        try:
            before = ns_snmp(pair.ns)
            doc = SavedDoctor(pair, "proto-mem-pressure", tmp_path)
            # the host's UDP memory is counted in per-CPU batches of up to 1 MB (sk_memory_allocated_add):
            # past a few MB queued at the socket the global count is over any udp_mem of a page
            with sysctl("net.ipv4.udp_mem", "1 1 1"), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for _ in range(3000):
                    tx.sendto(b"m" * 1000, (pair.ns_addr, port))
                time.sleep(0.2)
            findings = doc.finish()
            after = ns_snmp(pair.ns)
            sk_drops = udp_socket_drops(pair.ns, port)
            udp_mem = " ".join(Path("/proc/sys/net/ipv4/udp_mem").read_text().split())
        finally:
            stop(proc)
    # Linux 6.18 drops batches from its per-NUMA UDP queues without counting UdpMemErrors (fixed after
    # 6.18): the socket's own drop counter counts every one, UdpMemErrors what this kernel counts
    assert sk_drops >= 500
    f = one(findings, "proto-mem-pressure")
    nothing_else_above_info(findings, "proto-mem-pressure")
    assert f["severity"] in ("warn", "crit")
    assert evidence(f, "kfree_skb reason PROTO_MEM") == sk_drops
    assert evidence(f, "sock_diag skmeminfo drops (/proc/net/udp drops)") == sk_drops
    assert evidence(f, "nstat UdpMemErrors + Udp6MemErrors") == delta(before, after, "UdpMemErrors")
    assert knob(f, "net.ipv4.udp_mem") == udp_mem  # read at the end, after the test put it back


# ---------------------------------------------------------------- socket-headroom

FILLS = r"""
import socket, sys
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
rx.bind((sys.argv[1], int(sys.argv[2])))
l = socket.socket()
l.bind((sys.argv[1], int(sys.argv[2]) + 1))
l.listen(10)
print("ready", rx.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), flush=True)
sys.stdin.readline()
"""


def udp_rx_queue(ns: str, port: int) -> int:
    """rx_queue of /proc/net/udp: the socket's sk_rmem_alloc."""
    for line in ns_cat(ns, "/proc/net/udp").splitlines()[1:]:
        cols = line.split()
        if int(cols[1].split(":")[1], 16) == port:
            return int(cols[4].split(":")[1], 16)
    raise AssertionError(f"no UDP socket on port {port}")


def test_socket_headroom_warns_before_a_drop(tmp_path: Path) -> None:
    port = 5324
    with veth_namespace("npsh") as pair:
        proc = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", FILLS, pair.ns_addr,
                                 str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        rcvbuf = int(proc.stdout.readline().split()[1])
        clients = []
        try:
            before = ns_snmp(pair.ns)
            doc = SavedDoctor(pair, "socket-headroom", tmp_path)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                while udp_rx_queue(pair.ns, port) < 0.8 * rcvbuf:
                    tx.sendto(b"h" * 500, (pair.ns_addr, port))
            for _ in range(9):  # 9 of a backlog of 10, never accepted
                clients.append(socket.create_connection((pair.ns_addr, port + 1), timeout=5))
            findings = doc.finish()
            queued = udp_rx_queue(pair.ns, port)
            after = ns_snmp(pair.ns)
        finally:
            for c in clients:
                c.close()
            stop(proc)
    assert delta(before, after, "UdpRcvbufErrors") == 0 and delta(before, after, "TcpExtListenOverflows") == 0
    heads = {f["where"]["lport"]: f for f in findings if f["id"] == "socket-headroom"}
    nothing_else_above_info(findings, "socket-headroom")
    assert sorted(heads) == [port, port + 1] and {f["severity"] for f in heads.values()} == {"warn"}
    assert evidence(heads[port], "sock_diag skmeminfo rmem_alloc") == queued
    assert evidence(heads[port], "sock_diag skmeminfo rcvbuf") == rcvbuf
    assert evidence(heads[port + 1], "sock_diag idiag_rqueue") == 9
    assert evidence(heads[port + 1], "sock_diag idiag_wqueue") == 10


# ---------------------------------------------------------------- link-errors


def carrier_changes(ns: str, dev: str) -> int:
    return int(ns_cat(ns, f"/sys/class/net/{dev}/carrier_changes"))


def test_carrier_changes_are_link_errors(tmp_path: Path) -> None:
    with veth_namespace("nple") as pair:
        before = carrier_changes(pair.ns, pair.ns_if)
        doc = SavedDoctor(pair, "link-errors", tmp_path)
        ip("link", "set", pair.host_if, "down")  # the peer's carrier goes off, then on
        time.sleep(0.3)
        ip("link", "set", pair.host_if, "up")
        time.sleep(0.5)
        findings = doc.finish()
        flaps = carrier_changes(pair.ns, pair.ns_if) - before
    assert flaps >= 2
    f = one(findings, "link-errors")
    nothing_else_above_info(findings, "link-errors")
    assert f["severity"] == "warn" and f["where"]["iface"] == pair.ns_if
    assert evidence(f, f"/sys/class/net/{pair.ns_if}/carrier_changes") == flaps


# ---------------------------------------------------------------- unexplained-drops


def test_a_drop_no_rule_knows_is_unexplained_with_the_command_to_dig_in(tmp_path: Path) -> None:
    """IP protocol 253 (experimental): no handler, ip_local_deliver_finish drops it with IP_NOPROTO and
    counts IpInUnknownProtos. No rule is about it: the doctor must still account for it."""
    with veth_namespace("npud") as pair:
        before = ns_snmp(pair.ns)
        doc = SavedDoctor(pair, "unexplained-drops", tmp_path)
        send_raw(pair.ns_addr, [ipv4_packet(pair.host_addr, pair.ns_addr, 253, b"u" * 32, ident=i)
                                for i in range(30)])
        findings = doc.finish()
        after = ns_snmp(pair.ns)
    unknown = delta(before, after, "IpInUnknownProtos")
    assert unknown == 30
    f = one(findings, "unexplained-drops")
    nothing_else_above_info(findings, "unexplained-drops")
    assert f["severity"] == "crit"  # every packet the interface received (unexplained policy: 5% is crit)
    assert evidence(f, "kfree_skb reason IP_NOPROTO") == unknown
    assert evidence(f, "nstat IpInUnknownProtos") == unknown
    assert knob(f, "netpath drops") == (f"netpath drops --netns {pair.ns} --iface {pair.ns_if} --reason IP_NOPROTO "
                                        "--by reason,location,iface,flow,socket --stack --duration 30")


# ---------------------------------------------------------------- busy and healthy

BUSY = r"""
import socket, sys, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
u.bind((sys.argv[1], int(sys.argv[2])))
t = socket.socket()
t.bind((sys.argv[1], int(sys.argv[2])))
t.listen(1024)
def udp():
    while True:
        u.recv(2048)
def serve(c):
    while c.recv(1 << 20):
        pass
    c.close()
def tcp():
    while True:
        threading.Thread(target=serve, args=(t.accept()[0],), daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_busy_healthy_namespace_gives_nothing_above_info(tmp_path: Path) -> None:
    """TCP as fast as the veth takes it, 300 short connections, a UDP reader that keeps up."""
    port = 5325
    with veth_namespace("npbh") as pair:
        proc = in_ns(pair, BUSY, pair.ns_addr, port)
        try:
            doc = SavedDoctor(pair, "busy-healthy", tmp_path)
            with socket.create_connection((pair.ns_addr, port), timeout=5) as bulk:
                deadline = time.monotonic() + 2
                chunk = b"b" * (1 << 16)
                while time.monotonic() < deadline:
                    bulk.sendall(chunk)
            for _ in range(300):
                with socket.create_connection((pair.ns_addr, port), timeout=5) as c:
                    c.sendall(b"q" * 200)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
                for i in range(3000):
                    tx.sendto(b"d" * 200, (pair.ns_addr, port))
                    if i % 50 == 0:
                        time.sleep(0.005)
            findings = doc.finish()
        finally:
            stop(proc)
    nothing_else_above_info(findings)


# ---------------------------------------------------------------- the whole host, every namespace

LISTEN0 = r"""
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(0)
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_host_wide_run_diagnoses_a_pods_counter_only_drops_under_its_name(tmp_path: Path) -> None:
    """No --netns: the namespace's SYNs refused at its full accept queue (no drop event: only ListenOverflows
    counts them, and only inside that namespace) and its unknown-protocol drops are found, labelled."""
    port = 5326
    with veth_namespace("nphw") as pair:
        proc = in_ns(pair, LISTEN0, pair.ns_addr, port)
        socks = []
        try:
            before = ns_snmp(pair.ns)
            path = tmp_path / "host.window.json"
            run = NetpathRun(["doctor", "--duration", DURATION, "--no-trace", "--json", "--save", str(path)])
            assert run.wait_start()["filters"]["netns"] is None
            for _ in range(8):
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex((pair.ns_addr, port))
                socks.append(c)
            send_raw(pair.ns_addr, [ipv4_packet(pair.host_addr, pair.ns_addr, 253, b"u" * 32, ident=i)
                                    for i in range(20)])
            time.sleep(1.5)  # one SYN retransmit each
            for c in socks:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
            rc, records, err = run.finish(timeout=120)
            after = ns_snmp(pair.ns)
            inode = os.stat(f"/run/netns/{pair.ns}").st_ino
        finally:
            stop(proc)
    assert rc == 0, err
    mine = [r for r in records if r["type"] == "finding" and r["where"]["netns"] == inode]
    for f in mine:
        assert f["where"]["netns_label"] == pair.ns
    acc = one(mine, "listen-overflow")
    assert evidence(acc, "nstat TcpExtListenOverflows") == delta(before, after, "TcpExtListenOverflows") > 0
    assert acc["where"]["lport"] == port and acc["where"]["pid"] == proc.pid
    unknown = one(mine, "unexplained-drops")
    assert evidence(unknown, "nstat IpInUnknownProtos") == delta(before, after, "IpInUnknownProtos") == 20
    replay = run_netpath("doctor", "--load", str(path), "--json")
    assert [json.loads(x) for x in replay.stdout.splitlines() if '"finding"' in x] == [
        r for r in records if r["type"] == "finding"]
