"""IPv6 extension headers: drops, filters and pcap comments see the transport behind them.

Every case sends real packets inside a namespace made here, over its loopback (MTU 1500 so a large
datagram is fragmented): UDP and TCP to a closed port with a hop-by-hop options header, a destination
options header (setsockopt IPV6_HOPOPTS / IPV6_DSTOPTS, each a PadN option, as the issue's reproduction)
and a segment-routing header (IPV6_RTHDR, type 4, segments left 0: the kernel accepts it with
seg6_enabled and passes on to the transport); and fragments (a 3000-byte UDP datagram, which the kernel
cuts in three, and a TCP segment sent in two fragments by a raw socket) that an ip6tables rule in the
raw table drops one by one before reassembly. Only a first fragment carries the ports: the others are
udp/tcp with none, so --port matches only the first and --proto every one.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from netpath_testlib import NetpathRun, ip

N = 40  # packets (datagrams, connection attempts) per case
CASES = ("hop", "dst", "rt", "frag")
UDP_BASE, TCP_BASE = 41100, 41200  # case i goes to BASE + i in the per-case run

SENDER = r"""
import socket, struct, sys, os
kind, proto, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
PADN = bytes([0, 0, 1, 4, 0, 0, 0, 0])      # nexthdr (the kernel fills it), hdrlen 0, PadN of 4 bytes
# segment routing header: type 4, segments left 0, first segment 0, one segment (::1, the destination)
SRH = bytes([0, 2, 4, 0, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, "::1")
OPT = {"hop": (socket.IPV6_HOPOPTS, PADN), "dst": (socket.IPV6_DSTOPTS, PADN), "rt": (socket.IPV6_RTHDR, SRH)}

def sticky(s):
    if kind in OPT:
        s.setsockopt(socket.IPPROTO_IPV6, *OPT[kind])

def raw_tcp_fragments(sport):
    # a TCP SYN with 2000 bytes of data, cut in two fragments: 1448 bytes of TCP, then the rest
    tcp = struct.pack("!HHIIBBHHH", sport, port, 1, 0, 5 << 4, 0x02, 65535, 0, 0) + b"t" * 2000
    ident = os.getpid() & 0xffff
    src = dst = socket.inet_pton(socket.AF_INET6, "::1")
    out = []
    for off, chunk, more in ((0, tcp[:1448], 1), (1448, tcp[1448:], 0)):
        frag = struct.pack("!BBHI", 6, 0, off | more, ident)
        body = frag + chunk
        out.append(struct.pack("!IHBB", 6 << 28, len(body), 44, 64) + src + dst + body)
    return out

if proto == "udp":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sticky(s)
    payload = b"u" * (3000 if kind == "frag" else 16)
    for _ in range(n):
        s.sendto(payload, ("::1", port))
elif kind == "frag":
    r = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for i in range(n):
        for pkt in raw_tcp_fragments(30000 + i):
            r.sendto(pkt, ("::1", 0))
else:
    for _ in range(n):
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sticky(s)
        try:
            s.connect(("::1", port))
        except ConnectionRefusedError:
            pass
        else:
            raise SystemExit("connected to a port that should be closed")
        s.close()
"""


@contextmanager
def exthdr_namespace() -> Iterator[str]:
    ns = f"npx{uuid.uuid4().hex[:6]}"
    ip("netns", "add", ns)
    try:
        ip("-n", ns, "link", "set", "lo", "mtu", "1500")
        ip("-n", ns, "link", "set", "lo", "up")
        for conf in ("all", "lo"):
            ns_run(ns, "sysctl", "-qw", f"net.ipv6.conf.{conf}.seg6_enabled=1")
        # fragments die here one by one: the namespace has no conntrack, so nothing reassembles them first
        ns_run(ns, "ip6tables", "-t", "raw", "-A", "PREROUTING", "-m", "frag", "-j", "DROP")
        yield ns
    finally:
        ip("netns", "del", ns, check=False)


def ns_run(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, text=True).stdout


def send(ns: str, kind: str, proto: str, port: int) -> None:
    ns_run(ns, sys.executable, "-c", SENDER, kind, proto, str(port), str(N))


def frag_rule_drops(ns: str) -> int:
    out = ns_run(ns, "ip6tables", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n")
    return sum(int(line.split()[0]) for line in out.splitlines()[2:] if "DROP" in line)


def snmp6(ns: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in ns_run(ns, "cat", "/proc/net/snmp6").splitlines())}


def tcp_out_rsts(ns: str) -> int:
    lines = [line.split() for line in ns_run(ns, "cat", "/proc/net/snmp").splitlines() if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutRsts")])


def tshark_packets(path: Path) -> list[tuple[str, str, str]]:
    """(comment, the transport port tshark decoded or '', frame.protocols) for each packet in the file."""
    argv = ["tshark", "-r", str(path), "-o", "ipv6.defragment:FALSE", "-T", "fields", "-E", "separator=\t",
            "-E", "occurrence=f", "-e", "frame.comment", "-e", "udp.dstport", "-e", "tcp.dstport",
            "-e", "frame.protocols"]
    out = subprocess.run(argv, capture_output=True, check=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        comment, udp_port, tcp_port, protocols = line.split("\t")
        rows.append((comment, udp_port or tcp_port, protocols))
    return rows


def comment_proto(comment: str) -> str:
    return dict(part.split("=", 1) for part in comment.split(" ") if "=" in part)["proto"]


def drops_while_every_case_is_sent(*args: str) -> NetpathRun:
    """netpath drops in a fresh namespace while every case goes out as UDP and TCP, finished; and the kernel's
    own counts of the same packets checked: 3 N closed UDP ports, 3 N TCP resets, 5 N fragments dropped."""
    with exthdr_namespace() as ns:
        snmp_before, rsts_before = snmp6(ns), tcp_out_rsts(ns)
        run = NetpathRun(["drops", "--netns", ns, "--json", *args])
        run.wait_start()
        for i, kind in enumerate(CASES):
            send(ns, kind, "udp", UDP_BASE + i)
            send(ns, kind, "tcp", TCP_BASE + i)
        rc, _records, err = run.finish()
        assert rc == 0, err
        snmp_after, rsts_after = snmp6(ns), tcp_out_rsts(ns)
        assert snmp_after["Udp6NoPorts"] - snmp_before["Udp6NoPorts"] == 3 * N
        assert rsts_after - rsts_before == 3 * N
        assert frag_rule_drops(ns) == 5 * N
    return run


def test_every_extension_header_udp_and_tcp_rows_say_the_transport_and_its_ports(tmp_path):
    pcap = tmp_path / "exthdr.pcapng"
    run = drops_while_every_case_is_sent("--by", "reason,proto,flow", "--pcap", str(pcap), "--duration", "6")
    rows = run.summary()["rows"]
    by_port: Counter[tuple[str, str, int]] = Counter()
    for row in rows:
        assert row["proto"] in ("udp", "tcp"), row  # never hopopt, ipv6-opts, ipv6-route or ipv6-frag
        assert row["family"] == 6
        by_port[(row["reason"], row["proto"], row["dport"])] += row["count"]
    expected: Counter[tuple[str, str, int]] = Counter()
    for i, kind in enumerate(CASES):
        if kind == "frag":
            # udp: 3 fragments a datagram, tcp: 2; the first has the ports, the rest none (port 0)
            expected[("NETFILTER_DROP", "udp", UDP_BASE + i)] += N
            expected[("NETFILTER_DROP", "udp", 0)] += 2 * N
            expected[("NETFILTER_DROP", "tcp", TCP_BASE + i)] += N
            expected[("NETFILTER_DROP", "tcp", 0)] += N
        else:
            expected[("NO_SOCKET", "udp", UDP_BASE + i)] += N
            expected[("NO_SOCKET", "tcp", TCP_BASE + i)] += N
    assert by_port == expected
    # the capture: every dropped packet, its comment naming the transport tshark decodes behind the headers
    packets = tshark_packets(pcap)
    assert len(packets) == sum(expected.values())
    protos: Counter[str] = Counter()
    for comment, port, protocols in packets:
        proto = comment_proto(comment)
        protos[proto] += 1
        if port:  # tshark found a transport header: the comment names the same one
            assert f":{proto}" in protocols, (comment, protocols)
    assert protos == {"udp": 3 * N + 3 * N, "tcp": 3 * N + 2 * N}


def test_default_rows_name_the_transport_behind_every_extension_header():
    """The default grouping reads the protocols only (no addresses or ports): the same walk of the
    extension headers, so every row is udp or tcp and the counts are the kernel's."""
    run = drops_while_every_case_is_sent("--duration", "5")
    got: Counter[tuple[str, str]] = Counter()
    for row in run.summary()["rows"]:
        assert "family" not in row and "dport" not in row, row  # not grouped by flow
        got[(row["reason"], row["proto"])] += row["count"]
    assert got == {("NO_SOCKET", "udp"): 3 * N, ("NO_SOCKET", "tcp"): 3 * N,
                   ("NETFILTER_DROP", "udp"): 3 * N, ("NETFILTER_DROP", "tcp"): 2 * N}


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_port_and_proto_filters_match_behind_every_extension_header(proto):
    """--proto P --port X: every case to port X matches once a packet (first fragments only); the other
    transport and other ports never do."""
    port, other = 41300, 41301
    with exthdr_namespace() as ns:
        run = NetpathRun(["drops", "--netns", ns, "--proto", proto, "--port", str(port), "--json",
                          "--duration", "5"])
        run.wait_start()
        for kind in CASES:
            for p in ("udp", "tcp"):
                send(ns, kind, p, port)
            send(ns, kind, proto, other)
        rc, _records, err = run.finish()
        assert rc == 0, err
    summary = run.summary()
    assert {r["proto"] for r in summary["rows"]} == {proto}
    assert {r["dport"] for r in summary["rows"]} == {port}
    assert sum(r["count"] for r in summary["rows"]) == len(CASES) * N


RCVBUF_RECEIVER = r"""
import socket, sys
rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
rx.bind(("::1", int(sys.argv[1])))
print("ready", flush=True)
sys.stdin.readline()
"""


def test_a_udp6_receive_buffer_overflow_behind_destination_options_is_counted_with_its_port():
    """The issue's case: Udp6RcvbufErrors rises and drops --port sees every one of them."""
    port, sent = 41400, 400
    with exthdr_namespace() as ns:
        rx = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", RCVBUF_RECEIVER, str(port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
            before = snmp6(ns)["Udp6RcvbufErrors"]
            run = NetpathRun(["drops", "--netns", ns, "--port", str(port), "--proto", "udp", "--json",
                              "--duration", "3"])
            run.wait_start()
            ns_run(ns, sys.executable, "-c", SENDER, "dst", "udp", str(port), str(sent))
            rc, _records, err = run.finish()
            assert rc == 0, err
            overflowed = snmp6(ns)["Udp6RcvbufErrors"] - before
        finally:
            rx.communicate("done\n", timeout=30)
    rows = run.summary()["rows"]
    assert overflowed > 0
    assert [(r["reason"], r["proto"], r["dport"]) for r in rows] == [("SOCKET_RCVBUFF", "udp", port)]
    assert rows[0]["count"] == overflowed

