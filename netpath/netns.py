"""Network namespaces: resolve what the user named, and run code inside one.

ifindex is only unique inside a namespace, so interface names are always
looked up in the namespace the packet was in (identified by its inode).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import queue
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from netpath import untrusted
from netpath.errors import BadInput

CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71  # Linux 5.14+: the namespace's net_cookie, which the kernel never reuses (inodes are)
NETNS_RUN_DIR = Path("/run/netns")

T = TypeVar("T")


@dataclass(frozen=True)
class Netns:
    path: Path
    inode: int
    label: str
    cookie: int = 0  # net_cookie (resolve() reads it; 0 when unknown): the identity the kernel never reuses


def current() -> Netns:
    path = Path("/proc/self/ns/net")
    return Netns(path, os.stat(path).st_ino, "host")


# ioctl(NS_GET_NSTYPE) (Linux 4.11+) answers "what kind of namespace is this fd?"; any other file says ENOTTY.
NS_GET_NSTYPE = 0xB703
NS_TYPES = {
    0x00020000: "mount", 0x02000000: "cgroup", 0x04000000: "uts", 0x08000000: "ipc",
    0x10000000: "user", 0x20000000: "pid", CLONE_NEWNET: "network", 0x00000080: "time",
}


def _ns_spec_path(spec: str) -> Path:
    """Where --netns SPEC lives: a PID's /proc entry, a path, or an `ip netns` name under /run/netns."""
    if spec.isascii() and spec.isdigit():
        return Path(f"/proc/{int(spec)}/ns/net")
    if "/" in spec:
        return Path(spec)
    if spec in (".", ".."):
        raise BadInput(f"bad --netns {spec!r}: not a namespace name")
    return NETNS_RUN_DIR / spec


def _open_failure(spec: str, path: Path, exc: OSError) -> BadInput:
    if spec.isascii() and spec.isdigit():
        if not Path(f"/proc/{int(spec)}").exists():
            return BadInput(f"bad --netns {spec!r}: no process with PID {int(spec)}")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return BadInput(f"bad --netns {spec!r}: process {int(spec)} exists but its network namespace "
                            f"cannot be opened ({exc.strerror}): run netpath as root")
        return BadInput(f"bad --netns {spec!r}: process {int(spec)} has no network namespace to open "
                        f"({exc.strerror}; exited or a zombie?)")
    if exc.errno == errno.ENOENT:
        return BadInput(f"unknown network namespace {spec!r} (no {path})")
    return BadInput(f"cannot open network namespace {spec!r} ({path}): {exc.strerror}")


def _ns_type(fd: int) -> int | None:
    """The namespace type of fd (CLONE_NEW*), None when fd is no namespace at all."""
    try:
        return int(fcntl.ioctl(fd, NS_GET_NSTYPE))
    except OSError as exc:
        if exc.errno != errno.ENOTTY:
            raise
    # before 4.11 nsfs had no NS_GET_NSTYPE: a file on the nsfs device is still a namespace
    try:
        nsfs_dev = os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return None
    return CLONE_NEWNET if os.fstat(fd).st_dev == nsfs_dev else None


def resolve(spec: str) -> Netns:
    """--netns NAME (ip netns), PATH (a netns file) or PID, checked to really be a network namespace."""
    if not spec.strip():
        raise BadInput(f"bad --netns {spec!r}: empty; name an 'ip netns' namespace, a netns file or a PID")
    path = _ns_spec_path(spec)
    try:
        # nsfs files are regular files; opening anything else (a FIFO, a device) could block or act
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise BadInput(f"bad --netns {spec!r}: {path} is not a namespace file")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except ValueError:  # an embedded NUL byte
        raise BadInput(f"bad --netns {spec!r}: not a valid path") from None
    except OSError as exc:
        raise _open_failure(spec, path, exc) from None
    try:
        kind = _ns_type(fd)
        inode = os.fstat(fd).st_ino
    except OSError as exc:
        raise BadInput(f"cannot inspect network namespace {spec!r} ({path}): {exc.strerror}") from None
    finally:
        os.close(fd)
    if kind is None:
        raise BadInput(f"bad --netns {spec!r}: {path} is not a namespace file")
    if kind != CLONE_NEWNET:
        raise BadInput(f"bad --netns {spec!r}: {path} is a {NS_TYPES.get(kind, hex(kind))} namespace, "
                       "not a network namespace")
    ns = Netns(path, inode, spec)
    try:
        return Netns(path, inode, spec, cookie_of(ns))
    except OSError:  # setns refused: the inode alone filters
        return ns


def cookie_here() -> int:
    """The net_cookie of the namespace this thread is in (0 where SO_NETNS_COOKIE is unknown: before 5.14)."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
    except OSError:
        return 0


def cookie_of(ns: Netns | None) -> int:
    """The net_cookie of `ns` (None: this namespace), read from a socket made inside it."""
    return run_in(ns, cookie_here)


_LIBC: list[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL:
    """The C library's handle for setns, made once (a CDLL per call cost a dlopen each namespace visit)."""
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def _join(ns: Netns) -> None:
    """Move the calling thread into ns (setns affects that thread alone)."""
    libc = _libc()
    fd = os.open(ns.path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def run_in(ns: Netns | None, fn: Callable[[], T], visitor: Visitor | None = None) -> T:
    """Run fn in a short-lived thread that has joined `ns` (None: this namespace), or on `visitor`'s thread.

    setns affects only the calling thread, so the rest of netpath stays put;
    sockets created inside (netlink, for pyroute2) stay bound to `ns`.
    """
    if ns is None or ns.inode == os.stat("/proc/self/ns/net").st_ino:
        return fn()
    if visitor is not None:
        return visitor.run(ns, fn)
    with Visitor() as once:  # a thread for this one call, ended before returning
        return once.run(ns, fn)


class Visitor:
    """One thread that joins namespaces in turn, for a reading of many (collect/netns_counters.py), or one
    (run_in without a visitor).

    Starting a thread for each namespace cost more than what is read there (an exporter reads every
    namespace at every scrape). The thread is this reading's alone and ends with it (`with`), so it keeps
    no namespace alive past the reading; each job setns()es into its namespace first (a failed setns fails
    that job only, and the job's own check says where the thread really is)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Netns, Callable[[], object], list[object], threading.Event] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Visitor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def run(self, ns: Netns, fn: Callable[[], T]) -> T:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="netpath-netns", daemon=True)
            self._thread.start()
        box: list[object] = []
        done = threading.Event()
        self._jobs.put((ns, fn, box, done))
        done.wait()
        value, failure = box
        if failure is not None:
            raise failure  # type: ignore[misc]
        return value  # type: ignore[return-value]

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            ns, fn, box, done = job
            try:
                _join(ns)
                box.extend((fn(), None))
            except BaseException as exc:  # handed to the caller's thread
                box.extend((None, exc))
            done.set()


def _ns_inode(path: str) -> int | None:
    """The inode of the namespace a /proc/PID/ns/net link names, None when the process is gone.

    The link's text is "net:[INODE]" (ns_get_name in fs/nsfs.c prints ns->inum, which is also the nsfs
    inode's number, what stat returns): reading it costs half of a stat, which follows the link into nsfs,
    and the exporter does this for every process at every scrape."""
    try:
        text = os.readlink(path)
    except OSError:
        return None
    if text.startswith("net:[") and text.endswith("]") and text[5:-1].isdigit():
        return int(text[5:-1])
    try:  # not the form above: ask stat
        return os.stat(path).st_ino
    except OSError:
        return None


def known_namespaces() -> list[Netns]:
    """Named namespaces plus those of running processes, unique by inode."""
    seen: dict[int, Netns] = {}
    try:
        seen[os.stat("/proc/self/ns/net").st_ino] = Netns(Path("/proc/self/ns/net"), 0, "host")
    except OSError:
        pass
    if NETNS_RUN_DIR.is_dir():
        for entry in sorted(NETNS_RUN_DIR.iterdir()):
            try:
                ino = os.stat(entry).st_ino
            except OSError:
                continue
            # whoever may write /run/netns chose the name: shown in the untrusted-name form
            seen.setdefault(ino, Netns(entry, ino, untrusted.name(entry.name)))
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        path = f"/proc/{pid}/ns/net"  # a str: most processes share a namespace, and a Path per pid cost more
        found = _ns_inode(path)        # than its stat (the exporter walks every process at each scrape)
        if found is not None and found not in seen:
            seen[found] = Netns(Path(path), found, f"pid:{pid}")
    return [Netns(ns.path, ino, ns.label) for ino, ns in seen.items()]
