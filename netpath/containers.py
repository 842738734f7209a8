"""Naming the workload behind a cgroup path, the way the usual runtimes lay cgroups out.

Rules are data: (pattern, how to name a match), first match wins. They cover
systemd units (services, scopes, user sessions), docker (systemd and
cgroupfs drivers), podman/libpod, containerd and cri-o, and Kubernetes pods
(kubepods slices with the pod UID) wrapping any of those.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

Namer = Callable[[re.Match[str]], str]

_ID = r"(?P<id>[0-9a-f]{64})"
_POD = r"pod(?P<pod>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
_RUNTIME = {"docker": "docker", "cri-containerd": "containerd", "crio": "cri-o", "libpod": "podman"}


def _short(m: re.Match[str]) -> str:
    return m["id"][:12]


def _pod(m: re.Match[str]) -> str:
    return m["pod"].replace("_", "-")


RULES: tuple[tuple[re.Pattern[str], Namer], ...] = (
    # Kubernetes, systemd driver: .../kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope
    (re.compile(rf"kubepods[^/]*/(?:[^/]*/)?kubepods[^/]*-{_POD}\.slice/(?P<rt>docker|cri-containerd|crio)-{_ID}"
                r"\.scope$"),
     lambda m: f"k8s:pod/{_pod(m)}/{_RUNTIME[m['rt']]}:{_short(m)}"),
    # Kubernetes, cgroupfs driver: /kubepods/burstable/pod<uid>/<id>
    (re.compile(rf"/kubepods/(?:[^/]+/)?{_POD}/{_ID}$"), lambda m: f"k8s:pod/{_pod(m)}/{_short(m)}"),
    # a pod's own cgroup, no container below it (systemd, then cgroupfs driver)
    (re.compile(rf"kubepods[^/]*-{_POD}\.slice$"), lambda m: f"k8s:pod/{_pod(m)}"),
    (re.compile(rf"/kubepods/(?:[^/]+/)?{_POD}$"), lambda m: f"k8s:pod/{_pod(m)}"),
    # docker / containerd / cri-o / podman, systemd driver
    (re.compile(rf"/(?P<rt>docker|cri-containerd|crio|libpod)-{_ID}\.scope$"),
     lambda m: f"{_RUNTIME[m['rt']]}:{_short(m)}"),
    # docker, cgroupfs driver
    (re.compile(rf"^/docker/{_ID}$"), lambda m: f"docker:{_short(m)}"),
    # podman, cgroupfs driver: /libpod_parent/libpod-<id>, or below a pod's /libpod_parent/<pod id>/
    (re.compile(rf"^/libpod_parent/(?:[0-9a-f]{{64}}/)?(?P<rt>libpod)-{_ID}$"), lambda m: f"podman:{_short(m)}"),
    # systemd: user sessions and user services, then system units
    (re.compile(r"/user-(?P<uid>\d+)\.slice/(?:user@\d+\.service/(?:[^/]+\.slice/)*)?"
                r"(?P<unit>[^/]+\.(?:service|scope))$"),
     lambda m: f"systemd:user-{m['uid']}/{m['unit']}"),
    (re.compile(r"/(?P<unit>[^/]+\.(?:service|scope))$"), lambda m: f"systemd:{m['unit']}"),
)


def container_of(cgroup_path: str | None) -> str | None:
    """The workload's name from its cgroup path; None when no rule knows the shape (never a guess)."""
    if not cgroup_path:
        return None
    for pattern, name in RULES:
        m = pattern.search(cgroup_path)
        if m:
            return name(m)
    return None


@dataclass(frozen=True)
class ContainerRef:
    """The runtime and container id a cgroup path names (runtimes.py asks that runtime for names)."""

    runtime: str  # docker, containerd, cri-o, podman
    ident: str  # the full 64-hex id


def ref_of(cgroup_path: str | None) -> ContainerRef | None:
    """The runtime and id in a container's cgroup path, by the same rules; None for other cgroups."""
    if not cgroup_path:
        return None
    for pattern, _name in RULES:
        m = pattern.search(cgroup_path)
        if m:
            if "id" not in m.groupdict():
                return None
            rt = m.groupdict().get("rt")
            return ContainerRef(_RUNTIME[rt] if rt else "docker" if cgroup_path.startswith("/docker/") else "", m["id"])
    return None
