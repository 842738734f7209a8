"""Helpers shared by the live and VM tiers: namespaces, veth pairs, running netpath."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def netpath_argv() -> list[str]:
    return [sys.executable, "-m", "netpath"]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@dataclass
class VethPair:
    """Host side `host_if` (in the root namespace or `host_ns`) <-> `ns_if` inside namespace `ns`."""

    ns: str
    ns_if: str
    host_if: str
    ns_addr: str
    host_addr: str
    host_ns: str | None = None

    def ns_exec(self, *argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True, check=False,
                              **kw)


@contextmanager
def veth_namespace(prefix: str = "np", subnet: int | None = None) -> Iterator[VethPair]:
    """A fresh namespace with a veth pair to the root namespace, 10.201.N.0/30 addressing.

    The link is quiet: IPv6 is off on both ends before they come up (no DAD, MLD or router
    solicitations) and the neighbour entries are static (no ARP), so the only packets on it are the
    ones a test sends, and a test can count them exactly."""
    tag = uuid.uuid4().hex[:6]
    ns = f"{prefix}{tag}"
    host_if = f"nh{tag}"
    ns_if = f"nn{tag}"
    n = subnet if subnet is not None else int(tag[:2], 16)
    host_addr, ns_addr = f"10.201.{n}.1", f"10.201.{n}.2"
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        disable_ipv6(host_if)
        disable_ipv6(ns_if, ns)
        ip("addr", "add", f"{host_addr}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{ns_addr}/30", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("neigh", "replace", ns_addr, "lladdr", link_mac(ns_if, ns), "dev", host_if, "nud", "permanent")
        ip("-n", ns, "neigh", "replace", host_addr, "lladdr", link_mac(host_if), "dev", ns_if, "nud", "permanent")
        yield VethPair(ns, ns_if, host_if, ns_addr, host_addr)
    finally:
        ip("link", "del", host_if, check=False)
        ip("netns", "del", ns, check=False)


def disable_ipv6(dev: str, ns: str | None = None) -> None:
    argv = ["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"]
    subprocess.run(["ip", "netns", "exec", ns, *argv] if ns else argv, check=True, capture_output=True)


def _link_json(dev: str, ns: str | None) -> dict:
    return json.loads(ip(*(["-n", ns] if ns else []), "-j", "-s", "link", "show", "dev", dev).stdout)[0]


def link_mac(dev: str, ns: str | None = None) -> str:
    return _link_json(dev, ns)["address"]


def rx_packets(dev: str, ns: str | None = None) -> int:
    """The interface's own count of packets received: the kernel's ground truth on a quiet link."""
    return int(_link_json(dev, ns)["stats64"]["rx"]["packets"])


class NetpathRun:
    """A running `netpath ... --json`; lines are parsed as they arrive."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [*netpath_argv(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
            cwd=REPO,
        )
        self.records: list[dict] = []

    def _read_line(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        return self.proc.stdout.readline()

    def wait_start(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._read_line(deadline - time.monotonic())
            if line is None:
                break
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"netpath exited before start: rc={self.proc.wait()} stderr={err}")
            rec = json.loads(line)
            self.records.append(rec)
            if rec["type"] == "start":
                return rec
        self.proc.kill()
        raise AssertionError("netpath did not print its start line in time")

    def finish(self, timeout: float = 60.0) -> tuple[int, list[dict], str]:
        out, err = self.proc.communicate(timeout=timeout)
        for line in out.splitlines():
            if line.strip():
                self.records.append(json.loads(line))
        return self.proc.returncode, self.records, err

    def summary(self) -> dict:
        return next(r for r in self.records if r["type"] == "summary")


def run_netpath(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*netpath_argv(), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          check=False)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send_udp(addr: str, port: int, count: int, payload: bytes = b"x" * 16, netns: str | None = None) -> None:
    """Send `count` datagrams, from inside `netns` when given (through a helper process)."""
    if netns is None:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            for _ in range(count):
                s.sendto(payload, (addr, port))
        return
    code = (
        "import socket,sys\n"
        f"s=socket.socket(socket.AF_INET6 if ':' in {addr!r} else socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for _ in range({count}): s.sendto({payload!r}, ({addr!r}, {port}))\n"
    )
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code], check=True)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


DELAYED_RECEIVER = """
import select, socket, sys, time
addr, port, n, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, port))
print("ready", flush=True)
got = 0
while got < n:
    r, _, _ = select.select([s], [], [], 30)
    if not r:
        break
    time.sleep(delay)          # the datagram waits on the socket queue for `delay`
    s.recv(2048)
    got += 1
print("got", got, flush=True)
"""


def start_receiver(pair: VethPair, port: int, n: int, delay_s: float) -> subprocess.Popen:
    """A UDP receiver in the pair's namespace that waits delay_s before reading each of n datagrams."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", pair.ns, sys.executable, "-c", DELAYED_RECEIVER, pair.ns_addr, str(port), str(n),
         str(delay_s)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def send_spaced(addr: str, port: int, n: int, gap_s: float) -> None:
    for _ in range(n):
        send_udp(addr, port, 1)
        time.sleep(gap_s)


# binds with a tiny receive buffer, says ready, reads nothing until a line on stdin, then reports how many
# datagrams it got: the rest overflowed its buffer (SOCKET_RCVBUFF, UdpRcvbufErrors)
_RECEIVER = r"""
import socket, sys
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, %s)
rx.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
sys.stdin.readline()
rx.setblocking(False)
n = 0
try:
    while True:
        rx.recv(2048)
        n += 1
except BlockingIOError:
    pass
print(n, flush=True)
"""
STALLED_RECEIVER = _RECEIVER % "socket.SO_RCVBUF, 1024"
# one that never overflows: SO_RCVBUFFORCE (root) past rmem_max, so its buffer is never the bottleneck
COUNTING_RECEIVER = _RECEIVER % "33, 64 << 20"


def wait_served(port: int, timeout: float = 60.0) -> None:
    """Until a `netpath export` on 127.0.0.1:port answers /healthz with 200 (every probe attached)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("netpath export did not start serving")
