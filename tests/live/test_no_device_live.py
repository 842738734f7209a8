"""Drops whose skb no longer names its device keep their namespace and interface (issue 22, class 3).

The kernel clears skb->dev in tcp_v4_rcv before socket processing, overlays it with dev_scratch for
queued UDP datagrams and with the rb-tree node for queued IP fragments. Each case is provoked for real in
a namespace the test made, and `netpath drops --netns NS` must count every one, equal to the namespace's
own counters.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time

import pytest
from netpath_testlib import REPO, NetpathRun, VethPair, netpath_argv, veth_namespace


def nstat(ns: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-az"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()[1:] if len(line.split()) >= 2}


def ns_run(pair: VethPair, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", pair.ns, *argv], check=True, capture_output=True)


def rx_csum_off(pair: VethPair) -> None:
    """veth marks a CHECKSUM_NONE skb as verified when its peer has rx checksumming on: turn it off, so the
    receiving stack checks the checksum itself."""
    ns_run(pair, "ethtool", "-K", pair.ns_if, "rx", "off")


def _csum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def _ip_header(src: str, dst: str, proto: int, payload_len: int, ident: int = 1, frag: int = 0) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, frag, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    return head[:10] + struct.pack("!H", _csum(head)) + head[12:]


def send_raw(pair: VethPair, packets: list[bytes]) -> None:
    """Whole IPv4 packets (IP_HDRINCL) from the host side into the namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, pair.host_if.encode())
        for pkt in packets:
            s.sendto(pkt, (pair.ns_addr, 0))


def bad_tcp_syns(pair: VethPair, port: int, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        tcp = struct.pack("!HHIIBBHHH", 42000 + i, port, 1000 + i, 0, 5 << 4, 0x02, 1024, 0xBAD, 0) + bytes(200)
        out.append(_ip_header(pair.host_addr, pair.ns_addr, 6, len(tcp), ident=i + 1) + tcp)
    return out


def bad_udp(pair: VethPair, port: int, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        body = b"bad-checksum" * 20  # over CHECKSUM_BREAK: verified at the read, not in __udp4_lib_rcv
        udp = struct.pack("!HHHH", 43000 + i, port, 8 + len(body), 0xBAD) + body
        out.append(_ip_header(pair.host_addr, pair.ns_addr, 17, len(udp), ident=i + 1) + udp)
    return out


def first_fragments(pair: VethPair, n: int) -> list[bytes]:
    """Two fragments of each of n datagrams (offsets 0 and 16, both with more-fragments): never whole."""
    out = []
    for i in range(n):
        for offset in (0, 2):  # in 8-byte units
            out.append(_ip_header(pair.host_addr, pair.ns_addr, 17, 16, ident=5000 + i, frag=0x2000 | offset)
                       + bytes(16))
    return out


def drops_run(pair: VethPair, seconds: str = "4") -> tuple[NetpathRun, NetpathRun]:
    """The namespace-filtered run and an unfiltered one beside it, by reason, location and interface."""
    by = "reason,location,iface"
    scoped = NetpathRun(["drops", "--netns", pair.ns, "--by", by, "--json", "--duration", seconds])
    every = NetpathRun(["drops", "--by", by, "--json", "--duration", seconds])
    scoped.wait_start()
    every.wait_start()
    return scoped, every


def by_reason(run: NetpathRun, reason: str) -> list[dict]:
    return [r for r in run.summary()["rows"] if r["reason"] == reason]


def finish(*runs: NetpathRun) -> None:
    for run in runs:
        rc, _records, err = run.finish()
        assert rc == 0, err


def assert_in_namespace(rows: list[dict], pair: VethPair, ns_inode: int) -> None:
    assert {(r["iface"], r["netns"]) for r in rows} == {(pair.ns_if, ns_inode)}, rows


def bad_tcp_segments(pair: VethPair, sport: int, dport: int, n: int) -> list[bytes]:
    """ACK segments of a real connection (its 4-tuple) with a wrong checksum, longer than CHECKSUM_BREAK
    (76 bytes: shorter ones are verified at once, in tcp_v4_rcv, before skb->dev is cleared)."""
    out = []
    for i in range(n):
        tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, 0x10, 1024, 0xBAD, 0) + bytes(200)
        out.append(_ip_header(pair.host_addr, pair.ns_addr, 6, len(tcp), ident=i + 1) + tcp)
    return out


@pytest.mark.parametrize("established", [False, True])
def test_tcp_checksum_errors_are_all_counted_in_their_namespace(established: bool):
    """At a listener (checked in tcp_v4_rcv, device still set) and in an established connection (checked in
    tcp_rcv_established under tcp_v4_do_rcv, after tcp_v4_rcv set skb->dev to NULL)."""
    sent, port = 40, 40941
    with veth_namespace("npcs") as pair:
        rx_csum_off(pair)
        listener = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c",
                                     "import socket,sys\ns=socket.socket()\ns.bind((sys.argv[1],int(sys.argv[2])))\n"
                                     "s.listen(8)\nprint('ready',flush=True)\nc=s.accept()\nsys.stdin.readline()",
                                     pair.ns_addr, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        conn = socket.create_connection((pair.ns_addr, port), timeout=5)
        try:
            time.sleep(0.2)
            before = nstat(pair.ns)
            scoped, every = drops_run(pair)
            packets = (bad_tcp_segments(pair, conn.getsockname()[1], port, sent) if established
                       else bad_tcp_syns(pair, port, sent))
            send_raw(pair, packets)
            finish(scoped, every)
            errors = nstat(pair.ns)["TcpInCsumErrors"] - before["TcpInCsumErrors"]
        finally:
            conn.close()
            listener.kill()
            listener.wait()
    assert errors == sent
    rows = by_reason(scoped, "TCP_CSUM")
    assert sum(r["count"] for r in rows) == errors
    assert {r["netns"] for r in rows} == {ns_inode_of(scoped)}


def ns_inode_of(run: NetpathRun) -> int:
    start = next(r for r in run.records if r["type"] == "start")
    return int(start["filters"]["netns"])


READER = """
import select, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
sys.stdin.readline()
if sys.argv[3] == "poll":  # udp_poll: first_packet_length checks each queued checksum and drops the bad ones
    select.select([s], [], [], 0.5)
s.setblocking(False)
n = 0
try:
    while True:
        s.recv(4096)
        n += 1
except BlockingIOError:
    pass
print(n, flush=True)
"""


def _udp_checksum_errors(how: str) -> tuple[int, NetpathRun, NetpathRun, int]:
    sent, port = 30, 40942
    with veth_namespace("npcu") as pair:
        rx_csum_off(pair)
        proc = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", READER, pair.ns_addr,
                                 str(port), how], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        before = nstat(pair.ns)
        people = subprocess.Popen([*netpath_argv(), "drops", "--netns", pair.ns, "--duration", "6"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert people.stderr is not None and "attached" in people.stderr.readline()  # its start note
        scoped, every = drops_run(pair)
        send_raw(pair, bad_udp(pair, port, sent))
        time.sleep(0.3)
        got = int(proc.communicate("go\n", timeout=30)[0].strip())  # the read finds each bad checksum
        finish(scoped, every)
        said, err = people.communicate(timeout=60)
        errors = nstat(pair.ns)["UdpInCsumErrors"] - before["UdpInCsumErrors"]
    assert got == 0 and errors == sent
    assert people.returncode == 0, err
    summary = said[said.index("summary ("):].replace("\n    ", " ")
    assert "UDP_CSUM" in summary and "no device or namespace" not in summary
    return errors, scoped, every, sent, pair


@pytest.mark.parametrize("how", ["recv", "poll"])
def test_udp_checksum_errors_found_at_the_read_are_placed_by_the_reader(how: str):
    """udp_recvmsg and __first_packet_length (poll, FIONREAD) free a bad datagram with no socket on the
    tracepoint, no skb->sk and dev_scratch where dev was, in the context of the task reading the socket:
    its namespace places them (placed_by "reader") on the interface they came in on (skb_iif), so --netns
    counts every one, equal to UdpInCsumErrors, and none is left without a namespace."""
    errors, scoped, every, _sent, pair = _udp_checksum_errors(how)
    rows = by_reason(scoped, "UDP_CSUM")
    assert sum(r["count"] for r in rows) == errors
    assert_in_namespace(rows, pair, ns_inode_of(scoped))
    assert {r["placed_by"] for r in rows} == {"reader"}
    assert {r["location"].split("+")[0] for r in rows} <= {"udp_recvmsg", "__first_packet_length",
                                                          "first_packet_length"}
    assert scoped.summary()["health"].get("no_device", 0) == 0
    everywhere = by_reason(every, "UDP_CSUM")
    assert sum(r["count"] for r in everywhere if r["netns"] is None) == 0


def later_fragments(pair: VethPair, n: int) -> list[bytes]:
    """The second and last fragments of each of n datagrams (offsets 16 and 32): the first never comes."""
    out = []
    for i in range(n):
        for flags in (0x2000 | 2, 4):  # in 8-byte units; the last one without more-fragments
            out.append(_ip_header(pair.host_addr, pair.ns_addr, 17, 16, ident=7000 + i, frag=flags) + bytes(16))
    return out


def test_fragments_of_a_queue_whose_first_fragment_never_came_are_counted_in_their_namespace():
    """ip_expire frees no head for such a queue (nothing restores a device) and inet_frag_rbtree_purge frees
    the rest with their rb-tree node where dev was: the queue's own namespace (fqdir->net, noted at its
    timer) places each one (placed_by "fragment_queue")."""
    datagrams = 12
    with veth_namespace("npfl") as pair:
        ns_run(pair, "sysctl", "-qw", "net.ipv4.ipfrag_time=1")
        before = nstat(pair.ns)
        scoped, every = drops_run(pair, "5")
        send_raw(pair, later_fragments(pair, datagrams))
        time.sleep(3.0)  # ipfrag_time 1 s, and the expiry timer's slack
        finish(scoped, every)
        after = nstat(pair.ns)
    timeouts = after["IpReasmTimeout"] - before["IpReasmTimeout"]
    assert timeouts == datagrams
    rows = by_reason(scoped, "FRAG_REASM_TIMEOUT")
    assert sum(r["count"] for r in rows) == 2 * timeouts  # every fragment of every queue
    assert_in_namespace(rows, pair, ns_inode_of(scoped))
    assert {r["placed_by"] for r in rows} == {"fragment_queue"}
    everywhere = by_reason(every, "FRAG_REASM_TIMEOUT")
    assert sum(r["count"] for r in everywhere if r["netns"] is None) == 0
    assert scoped.summary()["health"].get("no_device", 0) == 0


def test_fragments_that_time_out_are_counted_in_their_namespace():
    datagrams = 12
    with veth_namespace("npfr") as pair:
        ns_run(pair, "sysctl", "-qw", "net.ipv4.ipfrag_time=1")
        before = nstat(pair.ns)
        scoped, every = drops_run(pair, "5")
        send_raw(pair, first_fragments(pair, datagrams))
        time.sleep(3.0)  # ipfrag_time 1 s, and the expiry timer's slack
        finish(scoped, every)
        timeouts = nstat(pair.ns)["IpReasmTimeout"] - before["IpReasmTimeout"]
    assert timeouts == datagrams
    rows = by_reason(scoped, "FRAG_REASM_TIMEOUT")
    assert sum(r["count"] for r in rows) == 2 * timeouts  # every fragment of every queue
    assert {r["netns"] for r in rows} == {ns_inode_of(scoped)}


def test_listen_overflows_with_syn_cookies_are_counted_in_their_namespace():
    """Every SYN gets a cookie while the accept queue is empty; the ACKs are held back by a rule in the
    namespace, then the clients' data arrives at a full queue: each overflow is a drop in cookie_v4_check
    (this kernel says NO_SOCKET: tcp_get_cookie_sock found no room), where skb->dev is already NULL."""
    clients, port = 10, 40943
    with veth_namespace("npso") as pair:
        if subprocess.run(["ip", "netns", "exec", pair.ns, "iptables", "-V"], capture_output=True,
                          check=False).returncode != 0:
            pytest.skip("iptables is not installed")
        ns_run(pair, "sysctl", "-qw", "net.ipv4.tcp_syncookies=2")
        hold = ["INPUT", "-p", "tcp", "--dport", str(port), "--tcp-flags", "SYN,ACK,FIN,RST,PSH", "ACK", "-j",
                "DROP"]
        ns_run(pair, "iptables", "-A", *hold)
        listener = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c",
                                     "import socket,sys\ns=socket.socket()\ns.bind((sys.argv[1],int(sys.argv[2])))\n"
                                     "s.listen(0)\nprint('ready',flush=True)\nsys.stdin.readline()",
                                     pair.ns_addr, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        socks = []
        try:
            before = nstat(pair.ns)
            scoped, every = drops_run(pair, "5")
            for _ in range(clients):
                s = socket.socket()
                s.settimeout(5)
                s.connect((pair.ns_addr, port))  # the cookie SYN-ACK answers; our ACK is held back
                socks.append(s)
            ns_run(pair, "iptables", "-D", *hold)
            for s in socks:
                s.send(b"x")  # the first makes the child that fills the queue; the rest overflow
            time.sleep(1.5)
            for s in socks:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            socks = []
            finish(scoped, every)
            after = nstat(pair.ns)
        finally:
            for s in socks:
                s.close()
            listener.kill()
            listener.wait()
    overflows = after["TcpExtListenOverflows"] - before["TcpExtListenOverflows"]
    assert overflows >= clients - 1
    rows = [r for r in scoped.summary()["rows"] if r["location"].startswith("cookie_v4_check+")]
    assert sum(r["count"] for r in rows) == overflows, scoped.summary()["rows"]
    assert {r["netns"] for r in rows} == {ns_inode_of(scoped)}
    everywhere = [r for r in every.summary()["rows"] if r["location"].startswith("cookie_v4_check+")]
    assert sum(r["count"] for r in everywhere) == overflows  # none left without a namespace
