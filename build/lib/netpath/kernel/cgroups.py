"""cgroup v2: where the unified hierarchy is mounted, and cgroup id <-> path.

A cgroup v2 id (what the kernel keeps in a socket's sk_cgrp_data and what
bpf_get_current_cgroup_id returns) is the inode number of the cgroup's
directory in cgroup2fs. Production hosts mount the hierarchy at
/sys/fs/cgroup; hybrid layouts (these VMs) at /sys/fs/cgroup/unified.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from pathlib import Path

from netpath import untrusted
from netpath.errors import BadInput

_REFRESH_MIN_S = 1.0
CGROUP2_SUPER_MAGIC = 0x63677270  # statfs(2) f_type of a cgroup2 filesystem


def fs_magic(path: Path) -> int:
    """statfs(2)'s f_type: which filesystem `path` is on (f_type is the struct's first field, a long)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def is_cgroup2(path: Path) -> bool:
    try:
        return fs_magic(path) == CGROUP2_SUPER_MAGIC
    except OSError:
        return False


def cgroup2_mount(mountinfo: str) -> Path | None:
    """The first cgroup2 mount point in /proc/self/mountinfo text."""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if sep and right.split()[:1] == ["cgroup2"]:
            fields = left.split()
            if len(fields) >= 5:
                return Path(fields[4].replace("\\040", " "))
    return None


def find_mount(root: Path = Path("/")) -> Path | None:
    try:
        text = (root / "proc/self/mountinfo").read_text()
    except OSError:
        return None
    return cgroup2_mount(text)


class CgroupTree:
    """cgroup id -> path ("/system.slice/nginx.service"), walking the hierarchy again on a miss (at most 1/s)."""

    def __init__(self, mount: Path | None) -> None:
        self.mount = mount
        self._paths: dict[int, str] = {}
        self._last_walk = 0.0

    def _walk(self) -> None:
        self._last_walk = time.monotonic()
        if self.mount is None:
            return
        found: dict[int, str] = {}
        stack = [(self.mount, "/")]
        while stack:
            directory, rel = stack.pop()
            try:
                found[os.stat(directory).st_ino] = rel
                with os.scandir(directory) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            # whoever owns a delegated subtree names its directories
                            stack.append((Path(entry.path), rel.rstrip("/") + "/" + untrusted.name(entry.name)))
            except OSError:  # removed while we walked
                continue
        self._paths = found

    def path(self, cgroup_id: int) -> str | None:
        if not cgroup_id:
            return None
        if cgroup_id not in self._paths and time.monotonic() - self._last_walk >= _REFRESH_MIN_S:
            self._walk()
        return self._paths.get(cgroup_id)

    def id_of(self, spec: str) -> int:
        """--cgroup PATH: a path inside the hierarchy ("/system.slice/x.service") or under its mount."""
        if self.mount is None:
            raise BadInput(f"bad --cgroup {spec!r}: no cgroup v2 hierarchy is mounted on this host")
        if not spec.strip():
            raise BadInput("bad --cgroup '': give a cgroup path such as /system.slice/nginx.service")
        given = Path(spec)
        path = given if given.is_relative_to(self.mount) else self.mount / spec.lstrip("/")
        try:
            # '..' and symlinks are resolved first: the id is the inode of a directory in the cgroup2
            # filesystem itself, never of a look-alike elsewhere (a tmpfs with a planted cgroup.procs)
            real = Path(os.path.realpath(path))
            st = os.stat(real)
            mount_dev = os.stat(self.mount).st_dev
        except (OSError, ValueError):
            raise BadInput(f"bad --cgroup {spec!r}: no such cgroup under {self.mount}") from None
        if not real.is_dir() or not (real / "cgroup.procs").exists():
            raise BadInput(f"bad --cgroup {spec!r}: no such cgroup under {self.mount}")
        if st.st_dev != mount_dev or not is_cgroup2(real):
            raise BadInput(f"bad --cgroup {spec!r}: {real} is not a directory of the cgroup v2 hierarchy "
                           f"mounted at {self.mount}")
        return st.st_ino
