"""Is netpath running in a container, and does that container give it what netpath/privileges.py lists?

Inside a container a missing capability or mount does not fail cleanly where it is used (bpf() gets
EPERM from the runtime's seccomp profile, setns is refused, a cgroup path is the container's own view),
so the preflight names it first, in one line, with the fix (exit 3). Readable from a fixture root.
"""

from __future__ import annotations

import os
from pathlib import Path

from netpath import containers, privileges
from netpath.kernel import caps as caps_mod

# the initial namespaces' fixed inode numbers (include/linux/proc_ns.h: PROC_PID_INIT_INO, PROC_CGROUP_INIT_INO)
PROC_PID_INIT_INO = 0xEFFFFFFC
PROC_CGROUP_INIT_INO = 0xEFFFFFFB


def _ino(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def own_cgroup(root: Path = Path("/")) -> str | None:
    try:
        text = (root / "proc/self/cgroup").read_text()
    except OSError:
        return None
    return next((line[3:] for line in text.splitlines() if line.startswith("0::")), None)


def in_container(root: Path = Path("/")) -> bool:
    """podman's marker (/run/.containerenv, on the container's own /run), a PID or cgroup namespace that is
    not the initial one, or a cgroup shaped like a container's (netpath/containers.py). Not /.dockerenv:
    root filesystems made from images keep it on plain hosts and VMs."""
    if (root / "run/.containerenv").exists():
        return True
    if _ino(root / "proc/self/ns/pid") not in (None, PROC_PID_INIT_INO):
        return True
    if _ino(root / "proc/self/ns/cgroup") not in (None, PROC_CGROUP_INIT_INO):
        return True
    return containers.ref_of(own_cgroup(root)) is not None


def missing_caps(command: str, cap_eff: int) -> list[str]:
    return [f"{name} ({privileges.WHY[name]})" for name in privileges.COMMAND_CAPS[command]
            if not cap_eff & (1 << privileges.CAP_NUMBERS[name])]


def problems(command: str, root: Path = Path("/"), cap_eff: int | None = None,
             cgroup_mounted: bool = True, cache_dir: Path | None = None) -> list[str]:
    """What this container lacks for `command`, each with its fix; empty when nothing does."""
    out = missing_caps(command, caps_mod.effective_caps(root / "proc/self/status") if cap_eff is None else cap_eff)
    if out:
        out = ["capabilities " + ", ".join(out) + ": add exactly "
               + ",".join(privileges.COMMAND_CAPS[command]) + " (podman --cap-add, Kubernetes "
               "securityContext.capabilities.add)"]
    if command == "probes":
        return out
    if _ino(root / "proc/self/ns/pid") not in (None, PROC_PID_INIT_INO):
        out.append("the host's PID namespace (podman --pid=host, Kubernetes hostPID: true): owners and "
                   "namespaces are found through the host's /proc")
    # a private cgroup namespace (Kubernetes' default on cgroup v2) is fine: owners' cgroups are found by id
    # in the mounted hierarchy, namespaces' pods through the runtimes' configs
    for m in privileges.MOUNTS:
        if not m.required:
            continue
        if m.name == "btf" and not (root / "sys/kernel/btf/vmlinux").is_file():
            out.append(f"the mount {m.host} ({m.why})")
        elif m.name == "cgroup" and not cgroup_mounted:
            out.append(f"the mount {m.host}, the host's cgroup v2 ({m.why})")
        elif m.name == "netns" and not (root / "run/netns").is_dir():
            out.append(f"the mount {m.host} ({m.why})")
        elif m.name == "cache" and cache_dir is not None and not _writable(cache_dir):
            out.append(f"a writable mount at {cache_dir} (a volume or tmpfs: {m.why}; the root is read-only)")
    return out


def _writable(path: Path) -> bool:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return os.access(probe, os.W_OK | os.X_OK)
