"""Can this process load and attach BPF programs?"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_SYS_ADMIN = 21
CAP_SYSLOG = 34
CAP_PERFMON = 38
CAP_BPF = 39
TRACEFS = Path("/sys/kernel/tracing")


def effective_caps(status_path: Path = Path("/proc/self/status")) -> int:
    try:
        for line in status_path.read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def _sysctl(path: Path, default: int) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def addresses_shown(proc_sys: Path = Path("/proc/sys")) -> bool:
    """Would /proc/kallsyms show kernel addresses to a process without CAP_SYSLOG? (kallsyms_show_value:
    only with kernel.kptr_restrict=0 and kernel.perf_event_paranoid <= 1)."""
    return (_sysctl(proc_sys / "kernel/kptr_restrict", 1) == 0
            and _sysctl(proc_sys / "kernel/perf_event_paranoid", 2) <= 1)


def tracefs_readable(tracefs: Path = TRACEFS) -> bool:
    """tracefs is root's (mode 0700): reading its event formats and ids takes CAP_DAC_READ_SEARCH. A
    tracefs that is not mounted there is load_facts' to report."""
    try:
        return not tracefs.is_dir() or os.access(tracefs / "events", os.R_OK | os.X_OK, effective_ids=True)
    except OSError:  # even its mount point may not be looked at
        return False


def missing_caps(caps: int, tracefs_ok: bool, addresses_ok: bool, locations: bool) -> list[str]:
    """The capabilities a run lacks, each with what it is for."""
    def has(cap: int) -> bool:
        return bool(caps & (1 << cap))

    out = []
    if not has(CAP_SYS_ADMIN):
        out += [f"{name} (to load and attach BPF programs)" for cap, name in ((CAP_BPF, "CAP_BPF"),
                                                                               (CAP_PERFMON, "CAP_PERFMON"))
                if not has(cap)]
    if not tracefs_ok and not (has(CAP_DAC_READ_SEARCH) or has(CAP_DAC_OVERRIDE)):
        out.append(f"CAP_DAC_READ_SEARCH (to read tracefs, {TRACEFS}, which is root's)")
    if locations and not addresses_ok and not has(CAP_SYSLOG):
        out.append("CAP_SYSLOG (to read kernel code addresses for drop locations; or leave location out of --by)")
    return out


def missing_capability(status_path: Path = Path("/proc/self/status"), locations: bool = False) -> str | None:
    """None when this process can run netpath (with `locations`: name where drops happen), else the fix."""
    # root is checked too: uid 0 with its capabilities dropped (setpriv, capsh, a container's --cap-drop)
    # would otherwise get the kernel's bare EPERM from the first bpf(2) call
    missing = missing_caps(effective_caps(status_path), tracefs_readable(), addresses_shown(), locations)
    if not missing:
        return None
    if os.geteuid() == 0:
        return (f"netpath runs as root but this process lacks capabilities: {'; '.join(missing)}: they were "
                "dropped (setpriv, capsh, a container's --cap-drop): give them back, e.g. "
                "podman run --cap-add BPF,PERFMON (or SYS_ADMIN)")
    return f"netpath needs root, or capabilities this process lacks: {'; '.join(missing)}: run it with sudo"


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
