"""Can this process load and attach BPF programs?"""

from __future__ import annotations

import os
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
