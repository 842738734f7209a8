"""Whose packet: a socket inode and cgroup id from the kernel -> socket, process, cgroup path, container.

The BPF side hands over numbers only (the socket's inode, the cgroup v2 id,
a reader's tgid). Everything with a name is looked up here from /proc and
the cgroup hierarchy, cached, and looked up again on a miss at most once a
second, so a busy host is not scanned per row. Anything not found is None:
attribution is never guessed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from netpath import netns, untrusted
from netpath.containers import container_of
from netpath.kernel.cgroups import CgroupTree, find_mount
from netpath.model import Owner, SockInfo
from netpath.runtimes import RuntimeNames

_REFRESH_MIN_S = 1.0
_SOCKET_LINK = re.compile(r"^socket:\[(\d+)\]$")
PROC_NET = (("udp", 4), ("udp6", 6), ("tcp", 4), ("tcp6", 6), ("raw", 4), ("raw6", 6), ("udplite", 4),
            ("udplite6", 6))


def _addr(hexaddr: str, family: int) -> str:
    raw = bytes.fromhex(hexaddr)
    # /proc/net prints the address as host-order 32-bit words
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.IPv4Address(words) if family == 4 else ipaddress.IPv6Address(words))


def parse_proc_net(text: str, proto: str, family: int) -> dict[int, SockInfo]:
    """/proc/net/{udp,tcp,...}[6] -> inode -> the socket's local address and port."""
    out: dict[int, SockInfo] = {}
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10 or ":" not in cols[1]:
            continue
        try:
            addr, port = cols[1].split(":")
            inode = int(cols[9])
            info = SockInfo(inode, proto.removesuffix("6"), family, _addr(addr, family), int(port, 16))
        except ValueError:
            continue
        if inode:
            out[inode] = info
    return out


def socket_holders(proc: Path = Path("/proc")) -> dict[int, tuple[int, str]]:
    """Socket inode -> (pid, comm) of the lowest pid holding it, from /proc/PID/fd."""
    out: dict[int, tuple[int, str]] = {}
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return out
    for pid in pids:
        fd_dir = proc / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to read
            continue
        comm: str | None = None
        for fd in fds:
            try:
                m = _SOCKET_LINK.match(os.readlink(fd_dir / fd))
            except OSError:
                continue
            if m and int(m.group(1)) not in out:
                if comm is None:
                    comm = process_comm(pid, proc) or ""
                out[int(m.group(1))] = (pid, comm)
    return out


def process_comm(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The process's name: any 15 bytes it chose (prctl PR_SET_NAME), in the untrusted-name form."""
    try:
        return untrusted.proc_comm((proc / str(pid) / "comm").read_bytes())
    except OSError:
        return None


@dataclass
class _Cached:
    values: dict
    at: float = 0.0


class OwnerResolver:
    def __init__(self, cgroups: CgroupTree | None = None, runtimes: RuntimeNames | None = None) -> None:
        self.cgroups = cgroups if cgroups is not None else CgroupTree(find_mount())
        self.runtimes = runtimes if runtimes is not None else RuntimeNames()
        self._socks: dict[int, _Cached] = {}  # netns inode -> inode -> SockInfo
        self._holders = _Cached({})
        self._comms: dict[int, str | None] = {}

    def sock(self, inode: int, netns_inode: int | None) -> SockInfo | None:
        """The socket's local address and port from /proc/net of its namespace (the row's, else any)."""
        if not inode:
            return None
        for cached in self._socks.values():
            if inode in cached.values:
                return cached.values[inode]
        namespaces = netns.known_namespaces()
        first = [ns for ns in namespaces if ns.inode == netns_inode]
        for ns in first + [ns for ns in namespaces if ns.inode != netns_inode]:
            cached = self._socks.setdefault(ns.inode, _Cached({}))
            if time.monotonic() - cached.at >= _REFRESH_MIN_S:
                cached.values, cached.at = self._read_socks(ns), time.monotonic()
            if inode in cached.values:
                return cached.values[inode]
        return None

    @staticmethod
    def _read_socks(target: netns.Netns) -> dict[int, SockInfo]:
        def read() -> dict[int, SockInfo]:
            base = Path("/proc/thread-self/net")
            out: dict[int, SockInfo] = {}
            for name, family in PROC_NET:
                try:
                    out.update(parse_proc_net((base / name).read_text(), name, family))
                except OSError:
                    continue
            return out

        try:
            return netns.run_in(target, read)
        except OSError:
            return {}

    def holder(self, inode: int) -> tuple[int, str] | None:
        if not inode:
            return None
        if inode not in self._holders.values and time.monotonic() - self._holders.at >= _REFRESH_MIN_S:
            self._holders = _Cached(socket_holders(), time.monotonic())
        return self._holders.values.get(inode)

    def comm(self, pid: int) -> str | None:
        if pid not in self._comms:
            self._comms[pid] = process_comm(pid)
        return self._comms[pid]

    def of_socket(self, sk_ino: int, cgroup_id: int, netns_inode: int | None) -> Owner:
        """A dropped packet's receiving socket and who holds it."""
        held = self.holder(sk_ino)
        path = self.cgroups.path(cgroup_id)
        return self.named(Owner(self.sock(sk_ino, netns_inode), held[0] if held else None,
                                held[1] if held else None, path))

    def of_reader(self, tgid: int, cgroup_id: int) -> Owner:
        """The process that read from a socket, and its cgroup."""
        path = self.cgroups.path(cgroup_id)
        return self.named(Owner(None, tgid or None, self.comm(tgid) if tgid else None, path))

    def named(self, owner: Owner) -> Owner:
        """The owner with its container's names: the runtime's, else the cgroup path's shape (no pod)."""
        found = self.runtimes.of_cgroup(owner.cgroup)
        if found is None:
            return replace(owner, container=container_of(owner.cgroup))
        return replace(owner, container=found.container or container_of(owner.cgroup), pod=found.pod,
                       pod_namespace=found.pod_namespace)
