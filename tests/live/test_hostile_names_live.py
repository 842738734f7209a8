"""Names a local user chooses reach root's terminal, JSON and scrapes only as inert text (issue 22, class 1).

An unprivileged user (nobody) makes its own user and network namespace, sets its process name to
terminal escapes, rich markup and bytes that are not UTF-8, renames the veth that root moved into its
namespace to more of the same, and owns a socket in a cgroup whose directory name is hostile too.
Then netpath drops (JSON and on a pty), trace --per-socket and export run against its drops and reads,
with counts checked against the namespace's own counters.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from netpath_testlib import REPO, NetpathRun, disable_ipv6, ip, netpath_argv, send_spaced, send_udp, wait_served
from prometheus_client.parser import text_string_to_metric_families

from netpath import untrusted
from netpath.kernel.cgroups import find_mount

COMM = b"\x1b]0;\x07[/x]\xff\xfe\x1b[2J"  # 15 bytes: OSC title, markup, not UTF-8, CSI clear
IFNAME = b'\x1b[2J"\\\xff[b]\x07'  # an interface name can hold all of it ('/', ':', spaces aside)
CGROUP = b"np\x1b]8;;x\x07[link=x]y[bold red]\xfe"  # a directory name: no '/'; an open tag, styles

# run as nobody inside `unshare -Urn`: names itself, renames the veth root moved in, owns a socket
HOSTILE = r"""
import ctypes, os, select, socket, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0) == 0  # PR_SET_NAME
print("ready", os.getpid(), flush=True)
old, new, addr, port = sys.stdin.readline().split()
new = bytes.fromhex(new)
for argv in (["ip", "link", "set", "dev", old, "name", new], ["ip", "addr", "add", addr + "/30", "dev", new],
             ["ip", "link", "set", "dev", new, "up"], ["ip", "link", "set", "dev", "lo", "up"]):
    subprocess.run(argv, check=True)
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
rx.bind((addr, int(port)))
print("bound", flush=True)
for line in sys.stdin:
    cmd = line.split()
    n = 0
    if cmd[0] == "drain":  # read what is queued
        rx.setblocking(False)
        try:
            while True:
                rx.recv(4096)
                n += 1
        except BlockingIOError:
            pass
        rx.setblocking(True)
    elif cmd[0] == "read":  # read N, as they come
        while n < int(cmd[1]) and select.select([rx], [], [], 30)[0]:
            rx.recv(4096)
            n += 1
    print(n, flush=True)
"""


@dataclass
class Hostile:
    proc: subprocess.Popen
    pid: int
    host_if: str
    host_addr: str
    addr: str
    port: int
    cgroup_path: str | None

    def ask(self, line: str) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def snmp(self, name: str) -> int:
        """The namespace's own counter, read through the process's /proc."""
        lines = Path(f"/proc/{self.pid}/net/snmp").read_text().splitlines()
        for head, vals in zip(lines[::2], lines[1::2], strict=True):
            if head.startswith("Udp:"):
                return int(dict(zip(head.split()[1:], vals.split()[1:], strict=True))[name])
        raise AssertionError("no Udp line")


def _unprivileged_userns() -> bool:
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "unshare", "-Urn", "true"],
                           capture_output=True, check=False)
    return probe.returncode == 0


@contextmanager
def hostile_user(port: int) -> Iterator[Hostile]:
    if not _unprivileged_userns():
        pytest.skip("this kernel refuses unprivileged user namespaces (CONFIG_USER_NS or a sysctl)")
    tag = uuid.uuid4().hex[:6]
    n = int(tag[:2], 16)
    host_if, peer = f"nh{tag}", f"nq{tag}"
    proc = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "unshare", "-Urn", "/usr/bin/python3",
         "-c", HOSTILE, COMM.hex()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    cg_dir: Path | None = None
    try:
        word, pid = proc.stdout.readline().split()
        assert word == "ready"
        mount = find_mount()
        if mount is not None:  # root files the user's process under a cgroup with a hostile name
            cg_dir = mount / os.fsdecode(CGROUP + tag.encode())
            cg_dir.mkdir()
            (cg_dir / "cgroup.procs").write_text(pid)
        ip("link", "add", host_if, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", pid)
        disable_ipv6(host_if)
        ip("addr", "add", f"10.202.{n}.1/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        proc.stdin.write(f"{peer} {IFNAME.hex()} 10.202.{n}.2 {port}\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "bound"
        yield Hostile(proc, int(pid), host_if, f"10.202.{n}.1", f"10.202.{n}.2", port,
                      "/" + untrusted.name(CGROUP + tag.encode()) if cg_dir else None)
    finally:
        proc.kill()
        proc.wait()
        ip("link", "del", host_if, check=False)
        if cg_dir is not None:
            for _ in range(50):
                try:
                    cg_dir.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


class PtyRun:
    """netpath for people, on a pseudo-terminal as an operator would run it; every byte it writes is kept."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        env = {**os.environ, "COLUMNS": "160", "LINES": "50", "TERM": "xterm-256color"}
        self.proc = subprocess.Popen([*netpath_argv(), *args], stdin=slave, stdout=slave, stderr=slave, cwd=REPO,
                                     env=env, close_fds=True)
        os.close(slave)
        self.master = master
        self.out = bytearray()

    def wait_for(self, marker: bytes, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.out and time.monotonic() < deadline:
            if not self._read(deadline - time.monotonic()):
                break
        assert marker in self.out, bytes(self.out)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], max(timeout, 0))
        if not ready:
            return False
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the other side closed
            return False
        self.out += chunk
        return bool(chunk)

    def finish(self, timeout: float = 60.0) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()):
            pass
        rc = self.proc.wait(timeout=10)
        os.close(self.master)
        return rc, bytes(self.out)


SHOWN_COMM = untrusted.name(COMM)
SHOWN_IF = untrusted.name(IFNAME)


def assert_inert(out: bytes) -> None:
    """No byte a hostile name carried reaches the terminal raw: no OSC, no BEL, no clear-screen, no C1."""
    assert b"\x1b]" not in out and b"\x07" not in out and b"\x1b[2J" not in out, out
    assert b"\xff" not in out and b"\xfe" not in out and b"\xc2\x9b" not in out
    assert b"internal error" not in out and b"Traceback" not in out, out


def test_drops_by_socket_with_hostile_names_json_pty_and_export_match_the_kernel():
    sent, port = 900, 40901
    with hostile_user(port) as user:
        before = user.snmp("RcvbufErrors")
        by = "reason,iface,socket" + (",cgroup" if user.cgroup_path else "")
        export_port = 40000 + int(uuid.uuid4().hex[:3], 16)
        exporter = subprocess.Popen([*netpath_argv(), "export", "--listen", f"127.0.0.1:{export_port}", "--netns",
                                     str(user.pid), "--by-cgroup"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd=REPO)
        try:
            wait_served(export_port)  # one compile at a time: three at once on two busy cores can take long
            run = NetpathRun(["drops", "--netns", str(user.pid), "--by", by, "--json", "--duration", "4"])
            run.wait_start()
            people = PtyRun("drops", "--netns", str(user.pid), "--by", by, "--duration", "4")
            people.wait_for(b"Ctrl-C")
            send_udp(user.addr, port, sent, payload=b"z" * 300)
            time.sleep(0.5)
            scrape = _scrape(export_port)
            rc, _records, err = run.finish()
            prc, pout = people.finish()
        finally:
            exporter.terminate()
            _eout, eerr = exporter.communicate(timeout=30)
        received = user.ask("drain")
        overflowed = user.snmp("RcvbufErrors") - before
    assert rc == 0, err
    assert_inert(err.encode())
    rows = [r for r in run.summary()["rows"] if r["reason"] == "SOCKET_RCVBUFF"]
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["count"] == sent - received == overflowed > 0
    assert row["iface"] == SHOWN_IF and row["comm"] == SHOWN_COMM and row["pid"] == user.pid
    assert row["netns_label"] == f"{SHOWN_COMM}[{user.pid}]"
    if user.cgroup_path:
        assert row["cgroup"] == user.cgroup_path
    # on a terminal: exit 0, the names as escapes, the markup as text
    assert prc == 0, pout
    assert_inert(pout)
    text = pout.decode()
    assert SHOWN_COMM in text and f"{overflowed:,}" in text
    # a scrape: 200, valid exposition, the series labelled with the names as shown
    assert_inert(eerr)
    samples = [s for fam in text_string_to_metric_families(scrape) for s in fam.samples
               if s.name == "netpath_drops_total" and s.labels.get("reason") == "SOCKET_RCVBUFF"]
    assert [(s.labels["iface"], s.labels["netns_label"], s.value) for s in samples] == [
        (SHOWN_IF, f"{SHOWN_COMM}[{user.pid}]", float(overflowed))]
    if user.cgroup_path:
        assert samples[0].labels["cgroup"] == user.cgroup_path


def test_trace_per_socket_names_a_hostile_reader_as_escapes_json_and_pty():
    n, port = 6, 40902
    with hostile_user(port) as user:
        run = NetpathRun(["trace", "--netns", str(user.pid), "--per-socket", "--json", "--duration", "4"])
        people = PtyRun("trace", "--netns", str(user.pid), "--per-socket", "--duration", "4")
        run.wait_start()
        people.wait_for(b"Ctrl-C")
        assert user.proc.stdin is not None
        user.proc.stdin.write(f"read {n}\n")
        user.proc.stdin.flush()
        send_spaced(user.addr, port, n, 0.05)
        assert user.proc.stdout is not None and int(user.proc.stdout.readline()) == n
        rc, _records, err = run.finish()
        prc, pout = people.finish()
    assert rc == 0, err
    sq = next(s for s in run.summary()["stages"] if s["stage"] == "socket_queue")
    readers = [r for r in sq["by_socket"] if r["pid"] == user.pid]
    assert len(readers) == 1 and readers[0]["count"] == n and readers[0]["comm"] == SHOWN_COMM, sq["by_socket"]
    assert prc == 0, pout
    assert_inert(pout)
    assert "[/x]" in pout.decode()


def test_an_ip_netns_name_of_escapes_and_bytes_is_shown_as_escapes():
    name = b"np\x1b]0;t\x07\xff[b]" + uuid.uuid4().hex[:4].encode()
    shown = untrusted.name(name)
    path = os.fsdecode(name)
    ip("netns", "add", path)
    try:
        ip("-n", path, "link", "set", "lo", "up")
        run = NetpathRun(["drops", "--netns", path, "--json", "--duration", "2"])
        run.wait_start()
        subprocess.run(["ip", "netns", "exec", path, sys.executable, "-c",
                        "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                        "[s.sendto(b'x', ('127.0.0.1', 9)) for _ in range(7)]"], check=True)
        rc, _records, err = run.finish()
        people = PtyRun("drops", "--netns", path, "--duration", "1")
        prc, pout = people.finish()
    finally:
        ip("netns", "del", path, check=False)
    assert rc == 0 and prc == 0, (err, pout)
    rows = [r for r in run.summary()["rows"] if r["reason"] == "NO_SOCKET"]
    assert sum(r["count"] for r in rows) == 7 and {r["netns_label"] for r in rows} == {shown}
    assert_inert(pout)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()
