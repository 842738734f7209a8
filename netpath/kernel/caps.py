"""Can this process load and attach BPF programs?"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def effective_caps(status_path: Path = Path("/proc/self/status")) -> int:
    try:
        for line in status_path.read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def missing_capability(status_path: Path = Path("/proc/self/status")) -> str | None:
    """None when BPF tracing is allowed, else the fix to tell the user."""
    if os.geteuid() == 0:
        return None
    caps = effective_caps(status_path)
    if caps & (1 << CAP_SYS_ADMIN):
        return None
    if caps & (1 << CAP_BPF) and caps & (1 << CAP_PERFMON):
        return None
    return "netpath needs root or CAP_BPF+CAP_PERFMON to load BPF programs: run it with sudo"


# --- trust: what a privileged netpath may read its inputs from ---------------------------------

_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH
_warned: set[str] = set()


def trusted_owner(uid: int, euid: int | None = None) -> bool:
    """Root's files and our own: nobody else may have written what we compile or parse."""
    return uid in (0, os.geteuid() if euid is None else euid)


def _component_reason(path: str, st: os.stat_result, final: bool, euid: int) -> str | None:
    if not trusted_owner(st.st_uid, euid):
        return f"{path} is owned by uid {st.st_uid}, not root"
    if st.st_mode & _GROUP_OTHER_WRITE and not stat.S_ISLNK(st.st_mode):
        # a sticky directory (/tmp) above the path is fine: others cannot rename or remove our entries
        if final or not st.st_mode & stat.S_ISVTX:
            return f"{path} is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'}"
    return None


def _prefixes(path: Path) -> list[str]:
    parts = path.parts
    return [os.path.join(*parts[: i + 1]) for i in range(len(parts))]


def untrusted_reason(path: Path | str, euid: int | None = None, container: bool = False) -> str | None:
    """Why the file or directory at `path` (or the place it would be created) cannot be trusted; None if it can.

    Every existing component, symlinks included and then the resolved path, must be owned by root or
    by us and not writable by group or others (a sticky directory above it excepted). With
    `container`, `path` is only the directory our own entries go in, so it may be sticky too (/tmp).
    """
    euid = os.geteuid() if euid is None else euid
    lexical = Path(os.path.abspath(path))
    resolved = Path(os.path.realpath(lexical))
    for candidates in (_prefixes(lexical), _prefixes(resolved)):
        for i, prefix in enumerate(candidates):
            try:
                st = os.lstat(prefix)
            except (FileNotFoundError, NotADirectoryError):
                break  # the rest does not exist (yet): netpath creates it with its own modes, or cannot
            except OSError as exc:
                return f"cannot check {prefix}: {exc.strerror}"
            reason = _component_reason(prefix, st, not container and i == len(candidates) - 1, euid)
            if reason:
                return reason
    return None


def warn_once(key: str, message: str) -> None:
    """One line on stderr per process: these checks run on every cache lookup."""
    if key not in _warned:
        _warned.add(key)
        sys.stderr.write(f"netpath: warning: {message}\n")
        sys.stderr.flush()


def env_path(name: str) -> Path | None:
    """A path from environment variable `name`, or None when unset or (as root) not trustworthy.

    As root, netpath compiles and parses what these point at, so a path another user controls is
    ignored with a one-line warning rather than followed.
    """
    value = os.environ.get(name)
    if not value:
        return None
    if os.geteuid() != 0:
        return Path(value)
    reason = untrusted_reason(value)
    if reason is not None:
        warn_once(name, f"ignoring {name}={value}: {reason}")
        return None
    return Path(value)
