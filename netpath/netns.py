"""Network namespaces: resolve what the user named, and run code inside one.

ifindex is only unique inside a namespace, so interface names are always
looked up in the namespace the packet was in (identified by its inode).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from netpath.errors import BadInput

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")

T = TypeVar("T")


@dataclass(frozen=True)
class Netns:
    path: Path
    inode: int
    label: str


def current() -> Netns:
    path = Path("/proc/self/ns/net")
    return Netns(path, os.stat(path).st_ino, "host")


def resolve(spec: str) -> Netns:
    """--netns NAME (ip netns), PATH (a netns file) or PID."""
    if spec.isdigit():
        path = Path(f"/proc/{spec}/ns/net")
    elif "/" in spec:
        path = Path(spec)
    else:
        path = NETNS_RUN_DIR / spec
    try:
        inode = os.stat(path).st_ino
    except OSError:
        raise BadInput(f"unknown network namespace {spec!r} (no {path})") from None
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise BadInput(f"cannot open network namespace {spec!r}: {exc.strerror}") from None
    return Netns(path, inode, spec)


def run_in(ns: Netns | None, fn: Callable[[], T]) -> T:
    """Run fn in a short-lived thread that has joined `ns` (None: this namespace).

    setns affects only the calling thread, so the rest of netpath stays put;
    sockets created inside (netlink, for pyroute2) stay bound to `ns`.
    """
    if ns is None or ns.inode == os.stat("/proc/self/ns/net").st_ino:
        return fn()
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(ns.path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=body, name="netpath-netns")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


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
            seen.setdefault(ino, Netns(entry, ino, entry.name))
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        path = Path(f"/proc/{pid}/ns/net")
        try:
            ino = os.stat(path).st_ino
        except OSError:
            continue
        seen.setdefault(ino, Netns(path, ino, f"pid:{pid}"))
    return [Netns(ns.path, ino, ns.label) for ino, ns in seen.items()]
