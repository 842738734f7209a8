"""netpath drops --pcap against real traffic: Wireshark's tshark reads back what was sent, as netpath counted it."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from netpath_testlib import (
    REPO,
    NetpathRun,
    VethPair,
    ip,
    link_mac,
    netpath_argv,
    run_netpath,
    veth_namespace,
)

from netpath import contract

pytestmark = pytest.mark.skipif(subprocess.run(["which", "tshark"], capture_output=True, check=False).returncode != 0,
                                reason="needs Wireshark's tshark (Debian package tshark; make apt installs it)")

UDP_CLOSED, UDP_DROPPED, TCP_CLOSED, TCP_DROPPED = 40111, 40112, 40113, 40114
FIELDS = ("frame.comment", "frame.len", "frame.cap_len", "frame.interface_name", "frame.protocols", "eth.src",
          "ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "udp.dstport", "tcp.dstport", "tcp.flags.syn", "data.data")


def tshark(path: str, *extra: str, stdin: bytes | None = None) -> list[dict[str, str]]:
    """One dict per packet of the fields above, read by tshark itself (`-` reads stdin)."""
    argv = ["tshark", "-r", path, "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f",
            *(a for f in FIELDS for a in ("-e", f)), *extra]
    out = subprocess.run(argv, input=stdin, capture_output=True, check=True).stdout.decode()
    return [dict(zip(FIELDS, line.split("\t"), strict=True)) for line in out.splitlines()]


def comment_fields(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(" "))


@contextmanager
def ipv6_pair() -> VethPair:
    """A veth namespace with fd00:: addresses (no DAD, static neighbours) beside its IPv4 ones."""
    with veth_namespace("npp") as pair:
        n = int(pair.ns_addr.split(".")[2])
        host6, ns6 = f"fd00:201:{n:x}::1", f"fd00:201:{n:x}::2"
        for dev, ns in ((pair.host_if, None), (pair.ns_if, pair.ns)):
            argv = ["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=0"]
            subprocess.run(["ip", "netns", "exec", ns, *argv] if ns else argv, check=True, capture_output=True)
        ip("addr", "add", f"{host6}/64", "dev", pair.host_if, "nodad")
        ip("-n", pair.ns, "addr", "add", f"{ns6}/64", "dev", pair.ns_if, "nodad")
        ip("neigh", "replace", ns6, "lladdr", link_mac(pair.ns_if, pair.ns), "dev", pair.host_if, "nud", "permanent")
        ip("-n", pair.ns, "neigh", "replace", host6, "lladdr", link_mac(pair.host_if), "dev", pair.ns_if, "nud",
           "permanent")
        pair.ns_addr, pair.host_addr = ns6, host6
        yield pair


def drop_rules(pair: VethPair, family: int) -> None:
    tool = "ip6tables" if family == 6 else "iptables"
    for proto, port in (("udp", UDP_DROPPED), ("tcp", TCP_DROPPED)):
        rule = pair.ns_exec(tool, "-A", "INPUT", "-p", proto, "--dport", str(port), "-j", "DROP")
        assert rule.returncode == 0, rule.stderr


def send_all(addr: str, n: int) -> dict[str, list[bytes]]:
    """n datagrams to a closed port and n through a DROP rule (each payload its own), and n SYNs to each
    TCP port: every connect is closed at once, so each sends exactly one SYN (no retransmission)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sent: dict[str, list[bytes]] = {"udp_closed": [], "udp_dropped": []}
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        for i in range(n):
            for kind, port in (("udp_closed", UDP_CLOSED), ("udp_dropped", UDP_DROPPED)):
                payload = f"netpath-pcap {kind} {i:04d}".encode()
                s.sendto(payload, (addr, port))
                sent[kind].append(payload)
    for port in (TCP_CLOSED, TCP_DROPPED):
        for _ in range(n):
            c = socket.socket(family, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect((addr, port))
            except BlockingIOError:
                pass
            c.close()
    return sent


def check_capture(pair: VethPair, family: int, n: int, summary: dict, packets: list[dict[str, str]],
                  sent: dict[str, list[bytes]]) -> None:
    """What tshark read equals what was sent and what netpath counted, packet by packet."""
    rows = summary["rows"]
    assert summary["total"] == 4 * n == sum(r["count"] for r in rows)
    health = summary["health"]
    assert (health["pcap_written"], health["pcap_skipped"], health["pcap_lost"]) == (4 * n, 0, 0)
    assert len(packets) == 4 * n
    ns_inode = os.stat(f"/run/netns/{pair.ns}").st_ino
    src, dst = ("ipv6.src", "ipv6.dst") if family == 6 else ("ip.src", "ip.dst")
    by_comment: Counter[tuple[str, str, str]] = Counter()
    payloads: dict[int, list[bytes]] = {UDP_CLOSED: [], UDP_DROPPED: []}
    syns: Counter[int] = Counter()
    host_mac = link_mac(pair.host_if)
    for p in packets:
        c = comment_fields(p["frame.comment"])
        assert (c["iface"], c["netns"], c["netns_label"], c["ifindex"]) == (
            pair.ns_if, str(ns_inode), pair.ns, c["ifindex"])
        assert p["frame.interface_name"] == pair.ns_if
        assert p["frame.protocols"].startswith("eth:ethertype:ipv6:" if family == 6 else "eth:ethertype:ip:")
        assert p["eth.src"] == host_mac and p[src] == pair.host_addr and p[dst] == pair.ns_addr
        assert p["frame.len"] == p["frame.cap_len"]  # all shorter than the snaplen
        by_comment[(c["reason"], c["location"], c["proto"])] += 1
        if c["proto"] == "udp":
            payloads[int(p["udp.dstport"])].append(bytes.fromhex(p["data.data"].replace(":", "")))
            assert c["reason"] == ("NO_SOCKET" if int(p["udp.dstport"]) == UDP_CLOSED else "NETFILTER_DROP")
        else:
            assert c["proto"] == "tcp" and p["tcp.flags.syn"] in ("1", "True")
            syns[int(p["tcp.dstport"])] += 1
            assert c["reason"] == ("NO_SOCKET" if int(p["tcp.dstport"]) == TCP_CLOSED else "NETFILTER_DROP")
    assert payloads[UDP_CLOSED] == sent["udp_closed"] and payloads[UDP_DROPPED] == sent["udp_dropped"]
    assert syns == {TCP_CLOSED: n, TCP_DROPPED: n}
    counted: Counter[tuple[str, str, str]] = Counter()
    for r in rows:  # rows are per flow (--host): each SYN has its own source port
        counted[(r["reason"], r["location"], r["proto"])] += r["count"]
    assert by_comment == counted


def ip6tables_dropped(pair: VethPair, family: int) -> int:
    out = pair.ns_exec("ip6tables" if family == 6 else "iptables", "-L", "INPUT", "-v", "-x", "-n").stdout
    return sum(int(line.split()[0]) for line in out.splitlines()[2:] if "DROP" in line)


@pytest.mark.parametrize("family", [4, 6])
def test_every_dropped_packet_is_in_the_file_as_sent_and_as_counted(tmp_path, family):
    n = 25
    ctx = ipv6_pair() if family == 6 else veth_namespace("npp")
    with ctx as pair:
        drop_rules(pair, family)
        path = tmp_path / "drops.pcapng"
        run = NetpathRun(["drops", "--netns", pair.ns, "--host", pair.ns_addr, "--pcap", str(path), "--json",
                          "--interval", "0.5"])
        run.wait_start()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        sent = send_all(pair.ns_addr, n)
        time.sleep(1.2)  # two intervals: the file is flushed at each
        mid_run = tshark(str(path))
        assert len(mid_run) == 4 * n  # readable while netpath still runs
        run.proc.send_signal(signal.SIGTERM if family == 4 else signal.SIGINT)
        rc, _records, err = run.finish()
        assert rc == 0, err
        summary = run.summary()
        assert summary["stop_reason"] == ("SIGTERM" if family == 4 else "SIGINT")
        check_capture(pair, family, n, summary, tshark(str(path)), sent)
        assert ip6tables_dropped(pair, family) == 2 * n  # the kernel's own count of the DROP rule's packets


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # BCC's own str-vs-bytes notes
def test_the_raw_tracepoint_build_captures_the_same(tmp_path):
    """Where the kernel refuses tp_btf, netpath loads kfree_skb as a raw tracepoint: capture must work there too."""
    import ipaddress

    from netpath import bpf
    from netpath.cli.preflight import load_facts
    from netpath.collect import drops as drops_mod
    from netpath.model import CapturedPacket
    from netpath.netns import resolve
    from netpath.query import Filters
    from netpath.render import records
    from netpath.render.pcapng import PcapngWriter

    n = 10
    with veth_namespace("npp") as pair:
        drop_rules(pair, 4)
        facts = load_facts()
        netns = resolve(pair.ns)
        query = drops_mod.DropsQuery(Filters(netns=netns, host=ipaddress.ip_address(pair.ns_addr)),
                                     tp_btf=False, pcap=drops_mod.PcapQuery())
        source = drops_mod.program_source(query, facts, bpf.struct_offsets(facts))
        assert "TP_BTF" not in source.defines and "capture.c" in source.files
        session = drops_mod.DropsSession(query, facts, source, drops_mod.drop_reasons(facts))
        try:
            start = session.start()
            assert start.attached[0].method == "raw_tracepoint"
            sent = send_all(pair.ns_addr, n)
            session.wait(0.2)
            events = session.events()
            summary = session.summary(10**9)
        finally:
            session.close()
        path = tmp_path / "raw.pcapng"
        with open(path, "wb") as f:
            writer = PcapngWriter(f)
            for e in events:
                assert isinstance(e, CapturedPacket)
                writer.packet(e)
            writer.flush()
        check_capture(pair, 4, n, records.summary(summary, "duration", None), tshark(str(path)), sent)


def test_pcap_to_stdout_pipes_into_tshark_and_the_table_goes_to_stderr():
    n = 20
    with veth_namespace("npp") as pair:
        drop_rules(pair, 4)
        proc = subprocess.Popen([*netpath_argv(), "drops", "--netns", pair.ns, "--host", pair.ns_addr, "--pcap", "-",
                                 "--interval", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        reader = subprocess.Popen(["tshark", "-r", "-", "-T", "fields", "-e", "frame.comment", "-e", "udp.dstport"],
                                  stdin=proc.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # tshark holds the pipe now
        assert b"attached" in proc.stderr.readline()
        time.sleep(0.3)
        sent = send_all(pair.ns_addr, n)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, err
        out, terr = reader.communicate(timeout=60)
        assert reader.returncode == 0, terr
        lines = [line.split("\t") for line in out.decode().splitlines()]
        assert len(lines) == 4 * n
        assert Counter(comment_fields(c)["reason"] for c, _ in lines) == {"NO_SOCKET": 2 * n, "NETFILTER_DROP": 2 * n}
        assert sorted(int(p) for _, p in lines if p) == sorted([UDP_CLOSED] * n + [UDP_DROPPED] * n)
        assert len(sent["udp_closed"]) == n
        assert "summary (SIGINT" in err and f"pcap_written={4 * n} pcap_skipped=0 pcap_lost=0" in err
        assert f"{4 * n} dropped packets written to stdout" in err


def test_a_packet_without_a_mac_header_is_raw_ip(tmp_path):
    """Dropped on the way out (an OUTPUT DROP rule): no MAC header yet, so the bytes start at the IP header."""
    n = 7
    with veth_namespace("npp") as pair:
        rule = pair.ns_exec("iptables", "-A", "OUTPUT", "-p", "udp", "--dport", str(UDP_DROPPED), "-j", "DROP")
        assert rule.returncode == 0, rule.stderr
        path = tmp_path / "out.pcapng"
        run = NetpathRun(["drops", "--host", pair.host_addr, "--port", str(UDP_DROPPED), "--pcap", str(path),
                          "--json", "--duration", "2"])
        run.wait_start()
        code = (f"import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range({n}):\n"
                f"    try:\n        s.sendto(b'out %d' % i, ({pair.host_addr!r}, {UDP_DROPPED}))\n"
                "    except PermissionError:\n        pass  # the OUTPUT rule's verdict, as sendto(2) reports it\n")
        subprocess.run(["ip", "netns", "exec", pair.ns, sys.executable, "-c", code], check=True)
        rc, _records, err = run.finish()
        assert rc == 0, err
    summary = run.summary()
    packets = tshark(str(path))
    assert summary["total"] == summary["health"]["pcap_written"] == len(packets) == n
    assert {p["frame.protocols"] for p in packets} == {"raw:ip:udp:data"}
    assert [bytes.fromhex(p["data.data"].replace(":", "")) for p in packets] == [b"out %d" % i for i in range(n)]
    assert all(comment_fields(p["frame.comment"])["reason"] == "NETFILTER_DROP" for p in packets)
    assert all(p["frame.len"] == str(20 + 8 + 5) for p in packets)


STORM = """
import socket, sys
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"s" * 64
for _ in range(n):
    s.sendto(payload, (addr, port))
"""


def storm(pair: VethPair, n: int) -> None:
    """n datagrams as fast as one Python process sends them, to a closed port in the namespace."""
    subprocess.run([sys.executable, "-c", STORM, pair.ns_addr, str(UDP_CLOSED), str(n)], check=True, timeout=300)


def snmp(summary: dict, name: str) -> int:
    return sum(c["count"] for c in summary["counters"] if c["source"] == "snmp" and c["name"] == name)


@pytest.mark.parametrize("case", ["cap", "rate"])
def test_under_a_storm_the_cap_and_the_rate_limit_hold_and_the_counts_stay_exact(tmp_path, case):
    n = 200_000
    cap = 300 if case == "cap" else contract.PCAP_MAX_LIMIT  # 300: less than one CPU's burst
    with veth_namespace("npp") as pair:
        path = tmp_path / "storm.pcapng"
        run = NetpathRun(["drops", "--netns", pair.ns, "--host", pair.ns_addr, "--pcap", str(path), "--json",
                          "--pcap-max", str(cap), "--snaplen", "128"])
        run.wait_start()
        storm(pair, n)
        time.sleep(0.5)
        run.proc.send_signal(signal.SIGINT)
        rc, _records, err = run.finish()
        assert rc == 0, err
    summary = run.summary()
    h = summary["health"]
    # the counts are exact whatever the capture did, and equal the kernel's own counter
    assert summary["total"] == h["matched"] == n == sum(r["count"] for r in summary["rows"])
    assert snmp(summary, "UdpNoPorts") == n
    assert h["pcap_written"] + h["pcap_skipped"] + h["pcap_lost"] == n
    packets = tshark(str(path))
    assert len(packets) == h["pcap_written"]
    assert all(p["frame.cap_len"] == p["frame.len"] == str(14 + 20 + 8 + 64) for p in packets)
    if case == "cap":
        assert h["pcap_written"] == cap and h["pcap_lost"] == 0
    else:
        # per CPU: a burst, then PCAP_RATE_PER_CPU a second, for at most the run's length
        ncpu = os.cpu_count() or 1
        bound = ncpu * (contract.PCAP_BURST + contract.PCAP_RATE_PER_CPU * (summary["elapsed_ns"] / 1e9 + 1))
        assert 0 < h["pcap_written"] <= bound and h["pcap_skipped"] >= n - bound


def test_a_symlink_is_never_followed_and_an_existing_file_needs_force(tmp_path):
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    link = tmp_path / "drops.pcapng"
    link.symlink_to(target)
    for extra in ([], ["--force"]):
        done = run_netpath("drops", "--pcap", str(link), "--duration", "1", *extra)
        assert done.returncode == 2 and "symbolic link" in done.stderr, done.stderr
    assert target.read_bytes() == b"keep me" and link.is_symlink()
    done = run_netpath("drops", "--pcap", str(target), "--duration", "1")
    assert done.returncode == 2 and "--force" in done.stderr
    done = run_netpath("drops", "--pcap", str(target), "--duration", "0.5", "--force", "--port", "9")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert tshark(str(target)) == []  # a valid, empty capture
    assert Path(target).read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"


def test_with_by_socket_each_packet_names_the_socket_owner(tmp_path):
    """A receiver that stopped reading overflows: each captured datagram names its pid, comm, socket, cgroup."""
    from test_attribution_live import CGROUP2, cgroup, in_cgroup

    if CGROUP2 is None:
        pytest.skip("no cgroup v2 hierarchy mounted (CONFIG_CGROUPS)")
    from netpath_testlib import STALLED_RECEIVER, send_udp

    sent, port = 300, 40115
    with veth_namespace("npp") as pair, cgroup("netpath-pcap") as (cg_dir, cg_path):
        rx = in_cgroup(cg_dir, pair.ns, STALLED_RECEIVER, pair.ns_addr, str(port))
        path = tmp_path / "owner.pcapng"
        run = NetpathRun(["drops", "--netns", pair.ns, "--by", "reason,iface,socket", "--reason", "SOCKET_RCVBUFF",
                          "--pcap", str(path), "--json", "--duration", "3"])
        run.wait_start()
        send_udp(pair.ns_addr, port, sent, payload=b"z" * 400)
        rc, _records, err = run.finish()  # the receiver is still there to be named
        received = int(rx.communicate("go\n", timeout=30)[0].strip())
    assert rc == 0, err
    summary = run.summary()
    packets = tshark(str(path))
    assert summary["total"] == sent - received == len(packets) == summary["health"]["pcap_written"] > 0
    for p in packets:
        c = comment_fields(p["frame.comment"])
        assert c["reason"] == "SOCKET_RCVBUFF" and c["proto"] == "udp"
        assert c["pid"] == str(rx.pid) and c["comm"].startswith("python") and c["cgroup"] == cg_path
        assert c["sock"] == f"udp:{pair.ns_addr}:{port}"
        assert p["frame.len"] == str(14 + 20 + 8 + 400) and p["frame.cap_len"] == str(contract.SNAPLEN_DEFAULT)  # cut


def whole_blocks_end(raw: bytes) -> int:
    """Where the last whole pcapng block ends: each block's two length fields must agree."""
    off = 0
    while off + 12 <= len(raw):
        total = struct.unpack_from("<I", raw, off + 4)[0]
        if total < 12 or off + total > len(raw) or struct.unpack_from("<I", raw, off + total - 4)[0] != total:
            break
        off += total
    return off


@contextmanager
def small_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fsize_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: netpath itself must turn SIGXFSZ into EFBIG, so it is left at default
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("case", ["tmpfs", "rlimit_fsize"])
def test_a_full_disk_stops_the_capture_keeps_counting_and_leaves_whole_blocks(tmp_path, case):
    """A write that fails mid-run: one line says so, the summary still comes (exit 3, netpath-drops(8)),
    the counts equal UdpNoPorts, and the file ends at a whole block that tshark reads."""
    n, limit = 3000, 48 * 1024
    with ExitStack() as stack:
        pair = stack.enter_context(veth_namespace("npp"))
        if case == "tmpfs":
            path, preexec = stack.enter_context(small_tmpfs(tmp_path, "48k")) / "full.pcapng", None
        else:
            path, preexec = tmp_path / "big.pcapng", _fsize_limit(limit)
        proc = subprocess.Popen([*netpath_argv(), "drops", "--netns", pair.ns, "--port", str(UDP_CLOSED),
                                 "--pcap", str(path), "--json", "--interval", "0.5", "--duration", "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                preexec_fn=preexec)  # noqa: PLW1509 - the limit must be the child's own
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert '"type":"start"' in first, proc.stderr.read() if proc.stderr else ""
        for _ in range(6):  # spread over the intervals: several flushes, the disk fills in one of them
            subprocess.run([sys.executable, "-c", STORM, pair.ns_addr, str(UDP_CLOSED), str(n // 6)], check=True)
            time.sleep(0.3)
        out, err = proc.communicate(timeout=60)
        raw = path.read_bytes()
        packets = tshark(str(path))
    records = [json.loads(line) for line in [first, *out.splitlines()] if line.strip()]
    summary = next(r for r in records if r["type"] == "summary")
    assert proc.returncode == 3, err
    assert "Traceback" not in err and "internal error" not in err
    stopped = [line for line in err.splitlines() if "capture stopped after" in line]
    errname = "ENOSPC" if case == "tmpfs" else "EFBIG"
    assert len(stopped) == 1 and errname in stopped[0], err
    h = summary["health"]
    assert errname in h["pcap_error"]
    # counting went on: every datagram, as the kernel counted them
    assert summary["total"] == h["matched"] == n == snmp(summary, "UdpNoPorts")
    assert h["pcap_written"] + h["pcap_skipped"] + h["pcap_lost"] + h["pcap_unwritten"] == n
    assert h["pcap_written"] > 0 and h["pcap_unwritten"] + h["pcap_skipped"] > 0
    # the intervals add up to the summary
    intervals = [r for r in records if r["type"] == "interval"]
    assert sum(r["health"]["pcap_written"] for r in intervals) == h["pcap_written"]
    # the file: whole blocks to its last byte, within the limit, every packet in it readable
    assert len(raw) <= limit and whole_blocks_end(raw) == len(raw)
    assert len(packets) == h["pcap_written"]
    assert all(comment_fields(p["frame.comment"])["reason"] == "NO_SOCKET" for p in packets)
