"""Whose packet: drops and queueing attributed to real sockets, processes and cgroups the tests create."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from netpath_testlib import STALLED_RECEIVER, NetpathRun, send_spaced, send_udp, veth_namespace

from netpath.kernel.cgroups import find_mount

CGROUP2 = find_mount()
pytestmark = pytest.mark.skipif(CGROUP2 is None, reason="no cgroup v2 hierarchy mounted (CONFIG_CGROUPS)")

# reads each datagram after a fixed delay
DELAYED = r"""
import select, socket, sys, time
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
got, n, delay = 0, int(sys.argv[3]), float(sys.argv[4])
while got < n:
    if not select.select([rx], [], [], 30)[0]:
        break
    time.sleep(delay)
    rx.recv(2048)
    got += 1
print("got", got, flush=True)
"""


@contextmanager
def cgroup(name: str) -> Iterator[tuple[Path, str]]:
    """A fresh cgroup v2 directory; yields (its directory, its path inside the hierarchy)."""
    assert CGROUP2 is not None
    directory = CGROUP2 / f"{name}-{uuid.uuid4().hex[:6]}"
    directory.mkdir()
    try:
        yield directory, "/" + directory.name
    finally:
        for _ in range(50):
            try:
                directory.rmdir()
                break
            except OSError:  # its processes are still exiting
                time.sleep(0.1)


def in_cgroup(directory: Path, ns: str, code: str, *args: str) -> subprocess.Popen:
    """A python process in namespace `ns` that joined `directory` before it made any socket."""
    shell = f'echo $$ > {directory}/cgroup.procs && exec ip netns exec "$0" "$1" -c "$2" "${{@:3}}"'
    proc = subprocess.Popen(["bash", "-c", shell, ns, sys.executable, code, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def snmp(ns: str, name: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-az", name], capture_output=True, text=True,
                         check=True).stdout
    return next(int(line.split()[1]) for line in out.splitlines() if line.startswith(name))


def rcvbuff_rows(summary: dict) -> list[dict]:
    return [r for r in summary["rows"] if r["reason"] == "SOCKET_RCVBUFF"]


def test_a_stalled_receiver_is_named_by_pid_comm_port_and_cgroup():
    sent, port = 1500, 40801
    with veth_namespace("npat") as pair, cgroup("netpath-at") as (cg_dir, cg_path):
        before = snmp(pair.ns, "UdpRcvbufErrors")
        rx = in_cgroup(cg_dir, pair.ns, STALLED_RECEIVER, pair.ns_addr, str(port))
        run = NetpathRun(["drops", "--netns", pair.ns, "--by", "reason,iface,socket,cgroup", "--json",
                          "--duration", "3"])
        run.wait_start()
        send_udp(pair.ns_addr, port, sent, payload=b"z" * 200)
        rc, _records, err = run.finish()  # the receiver is still there to be named
        received = int(rx.communicate("go\n", timeout=30)[0].strip())
        overflowed = snmp(pair.ns, "UdpRcvbufErrors") - before
    assert rc == 0, err
    rows = rcvbuff_rows(run.summary())
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["count"] == sent - received == overflowed
    assert row["pid"] == rx.pid and row["comm"].startswith("python")
    assert row["sock"]["lport"] == port and row["sock"]["proto"] == "udp" and row["sock"]["laddr"] == pair.ns_addr
    assert row["sock"]["inode"] > 0
    assert row["cgroup"] == cg_path
    assert row["netns_label"] == pair.ns


def test_two_cgroups_are_separated_exactly_and_the_cgroup_filter_narrows_to_one():
    sent = {40811: 900, 40812: 600}
    with veth_namespace("npcg") as pair, cgroup("netpath-a") as (dir_a, path_a), \
            cgroup("netpath-b") as (dir_b, path_b):
        rx_a = in_cgroup(dir_a, pair.ns, STALLED_RECEIVER, pair.ns_addr, "40811")
        rx_b = in_cgroup(dir_b, pair.ns, STALLED_RECEIVER, pair.ns_addr, "40812")
        by_cgroup = NetpathRun(["drops", "--netns", pair.ns, "--by", "reason,cgroup", "--json", "--duration", "3"])
        only_a = NetpathRun(["drops", "--netns", pair.ns, "--cgroup", path_a, "--json", "--duration", "3"])
        by_cgroup.wait_start()
        only_a.wait_start()
        for port, n in sent.items():
            send_udp(pair.ns_addr, port, n, payload=b"z" * 200)
        send_udp(pair.ns_addr, 40819, 50)  # a closed port: no socket, no cgroup
        time.sleep(0.5)
        got_a = int(rx_a.communicate("go\n", timeout=30)[0].strip())
        got_b = int(rx_b.communicate("go\n", timeout=30)[0].strip())
        assert by_cgroup.finish()[0] == 0 and only_a.finish()[0] == 0
    rows = {r["cgroup"]: r["count"] for r in rcvbuff_rows(by_cgroup.summary())}
    assert rows == {path_a: 900 - got_a, path_b: 600 - got_b}
    no_socket = [r for r in by_cgroup.summary()["rows"] if r["reason"] == "NO_SOCKET"]
    assert sum(r["count"] for r in no_socket) == 50
    assert all(r["cgroup"] is None and r["sock"] is None and r["pid"] is None for r in no_socket)
    narrowed = only_a.summary()
    assert narrowed["total"] == 900 - got_a
    assert {r["reason"] for r in narrowed["rows"]} == {"SOCKET_RCVBUFF"}


def test_socket_queue_per_reader_separates_two_applications_by_their_delay():
    n, delays = 6, {40821: 0.02, 40822: 0.1}
    with veth_namespace("npsq") as pair, cgroup("netpath-fast") as (dir_f, path_f), \
            cgroup("netpath-slow") as (dir_s, path_s):
        readers = {port: in_cgroup(d, pair.ns, DELAYED, pair.ns_addr, str(port), str(n), str(delay))
                   for (port, delay), d in zip(delays.items(), (dir_f, dir_s), strict=True)}
        run = NetpathRun(["trace", "--netns", pair.ns, "--per-socket", "--json", "--interval", "1"])
        run.wait_start()
        for port, delay in delays.items():
            send_spaced(pair.ns_addr, port, n, delay + 0.03)
        for proc in readers.values():
            proc.communicate(timeout=60)
        time.sleep(1.2)
        run.proc.send_signal(2)
        rc, _records, err = run.finish()
    assert rc == 0, err
    sq = next(s for s in run.summary()["stages"] if s["stage"] == "socket_queue")
    by_reader = {r["cgroup"]: r for r in sq["by_socket"]}
    for (port, delay), path in zip(delays.items(), (path_f, path_s), strict=True):
        row = by_reader[path]
        assert row["count"] == n and row["pid"] == readers[port].pid, row
        assert abs(row["p50_ns"] - delay * 1e9) <= 0.2 * delay * 1e9, row
    assert os.path.basename(path_f) not in str(by_reader[path_s])
