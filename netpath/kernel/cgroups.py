"""cgroup v2: where the unified hierarchy is mounted, and cgroup id <-> path.

A cgroup v2 id (what the kernel keeps in a socket's sk_cgrp_data and what
bpf_get_current_cgroup_id returns) is the inode number of the cgroup's
directory in cgroup2fs. Production hosts mount the hierarchy at
/sys/fs/cgroup; hybrid layouts (these VMs) at /sys/fs/cgroup/unified.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from netpath import untrusted
from netpath.errors import BadInput

_REFRESH_MIN_S = 1.0


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
        candidates = [given] if given.is_relative_to(self.mount) else [self.mount / spec.lstrip("/")]
        for path in candidates:
            try:
                st = os.stat(path)
            except OSError:
                continue
            if path.is_dir() and (path / "cgroup.procs").exists():
                return st.st_ino
        raise BadInput(f"bad --cgroup {spec!r}: no such cgroup under {self.mount}")
