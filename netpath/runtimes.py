"""The names a container runtime gave the workload in a cgroup: container, and on Kubernetes pod and namespace.

netpath/containers.py says what a cgroup path looks like (runtime, container id, pod uid); this module
asks the runtime that owns it for the names a person knows the workload by, from the state files the
runtime keeps on disk (reading files is bounded and needs no socket or daemon):

- podman: containers/storage's `overlay-containers/containers.json` (the container's names) and the
  OCI bundle `overlay-containers/<id>/userdata/config.json` (its cgroupsPath and namespaces); a podman
  pod's name is only in podman's database: `podman pod inspect` (a child with a timeout) where podman is;
- containerd: each task's OCI bundle `/run/containerd/io.containerd.runtime.v2.task/<ns>/<id>/config.json`
  (its cgroupsPath, and the annotations the CRI plugin writes from the kubelet's config:
  io.kubernetes.cri.container-name, sandbox-name, sandbox-namespace); the container's labels
  (io.kubernetes.pod.name, pod.namespace, container.name, which the kubelet sets) live only in
  containerd's metadata database, so when the bundle names no pod they are read with
  `ctr -n NS containers info ID` (a child with a timeout), where ctr and containerd's socket are there;
- docker: `/var/lib/docker/containers/<id>/config.v2.json` (Name, and Config.Labels with the same
  io.kubernetes.* labels under dockershim/cri-dockerd).

Every name is untrusted text (netpath/untrusted.py). Nothing found is None, never a guess. State is
indexed at most once a second (a miss on a busy host does not rescan per row) and one file is read at
most MAX_STATE_BYTES.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netpath import containers, untrusted

MAX_STATE_BYTES = 4 << 20  # a bundle's config.json is ~10-30 KB; podman's containers.json grows ~0.5 KB a container
_REFRESH_MIN_S = 1.0
CTR_TIMEOUT_S = 2.0
# a podman pod's cgroup: /libpod_parent/<pod id>/libpod-<id> (cgroupfs), machine-libpod_pod_<pod id>.slice
_PODMAN_POD = re.compile(r"(?:/libpod_parent/|machine-libpod_pod_)(?P<pod>[0-9a-f]{64})")
MAX_CACHED = 4096  # cgroup paths remembered; cleared when full (churning hosts)

# the kubelet's container labels (pkg/kubelet/types/labels.go), as CRI runtimes store them
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
CONTAINER_NAME = "io.kubernetes.container.name"
# the annotations containerd's CRI plugin writes into the OCI bundle (pkg/cri/annotations)
CRI_CONTAINER = "io.kubernetes.cri.container-name"
CRI_SANDBOX = "io.kubernetes.cri.sandbox-name"
CRI_SANDBOX_NS = "io.kubernetes.cri.sandbox-namespace"
# cri-o's (podman's bundles carry other io.kubernetes.cri-o.* keys, but not these names)
CRIO_CONTAINER = "io.kubernetes.cri-o.ContainerName"
CRIO_SANDBOX = "io.kubernetes.cri-o.SandboxName"


@dataclass(frozen=True)
class Workload:
    """A cgroup's names from its runtime; a field is None when the runtime does not know it."""

    container: str | None = None
    pod: str | None = None
    pod_namespace: str | None = None


@dataclass(frozen=True)
class StateRoots:
    """Where each runtime keeps its state: the host's paths, or a fixture tree's in tests."""

    podman: Path = Path("/var/lib/containers/storage")
    containerd: Path = Path("/run/containerd/io.containerd.runtime.v2.task")
    docker: Path = Path("/var/lib/docker/containers")

    @classmethod
    def under(cls, root: Path) -> StateRoots:
        base = cls()
        return cls(*(root / str(p).lstrip("/") for p in (base.podman, base.containerd, base.docker)))


def read_json(path: Path) -> Any:
    """A runtime's JSON file, or None when it is missing, too big, or not JSON (runtimes rewrite them)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_STATE_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_STATE_BYTES:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _text(value: object) -> str | None:
    return untrusted.name(value) if isinstance(value, str) and value else None


def _labels(value: object) -> Mapping[str, object]:
    return value if isinstance(value, dict) else {}


def from_labels(labels: Mapping[str, object], fallback_container: str | None) -> Workload:
    """Kubernetes labels or CRI annotations -> names; a container outside Kubernetes keeps its own name."""
    pod = _text(labels.get(POD_NAME)) or _text(labels.get(CRI_SANDBOX)) or _text(labels.get(CRIO_SANDBOX))
    ns = _text(labels.get(POD_NAMESPACE)) or _text(labels.get(CRI_SANDBOX_NS))
    name = (_text(labels.get(CONTAINER_NAME)) or _text(labels.get(CRI_CONTAINER))
            or _text(labels.get(CRIO_CONTAINER)) or fallback_container)
    return Workload(name, pod, ns)


def _cgroup_key(cgroups_path: object) -> str | None:
    """An OCI cgroupsPath as the path below the cgroup v2 mount (cgroupfs drivers); systemd's
    `slice:prefix:name` form maps to `<prefix>-<name>.scope`, which the id rules match instead."""
    if not isinstance(cgroups_path, str) or not cgroups_path.startswith("/"):
        return None
    return cgroups_path.rstrip("/")


def _netns_path(linux: Mapping[str, object]) -> str | None:
    """The network namespace an OCI config joins (linux.namespaces[type=network].path), if it names one."""
    spaces = linux.get("namespaces")
    for ns in spaces if isinstance(spaces, list) else []:
        if isinstance(ns, dict) and ns.get("type") == "network" and isinstance(ns.get("path"), str):
            return str(ns["path"])
    return None


@dataclass
class _Entry:
    runtime: str
    ident: str  # the runtime's container id
    namespace: str | None  # containerd's namespace
    bundle: Mapping[str, object]  # the OCI config's annotations
    netns_path: str | None = None  # the network namespace it joined (a pod's sandbox, ip netns, podman's)
    cgroups_path: str | None = None


class RuntimeNames:
    """cgroup path -> Workload, from the runtimes' state on this host."""

    def __init__(self, roots: StateRoots | None = None, ctr: str | None = "auto", podman: str | None = "auto"
                 ) -> None:
        self.roots = roots or StateRoots()
        self._ctr = shutil.which("ctr") if ctr == "auto" else ctr
        self._podman = shutil.which("podman") if podman == "auto" else podman
        self._pods: dict[str, str | None] = {}
        self._by_cgroup: dict[str, _Entry] = {}
        self._by_id: dict[str, _Entry] = {}
        self._by_netns: dict[int, _Entry] = {}
        self._podman_names: dict[str, str] = {}
        self._indexed_at = -_REFRESH_MIN_S
        self._cache: dict[str, Workload | None] = {}

    # ---------------------------------------------------------------- index

    def _index(self) -> None:
        by_cgroup: dict[str, _Entry] = {}
        by_id: dict[str, _Entry] = {}
        by_netns: dict[int, _Entry] = {}
        for entry, cgroups_path in [*self._podman_entries(), *self._containerd_entries()]:
            by_id.setdefault(entry.ident, entry)
            if key := _cgroup_key(cgroups_path):
                by_cgroup[key] = entry
            if entry.netns_path:
                try:
                    # a pod's containers all join its sandbox's namespace: the first one names the pod
                    by_netns.setdefault(os.stat(entry.netns_path).st_ino, entry)
                except OSError:
                    pass
        self._by_cgroup, self._by_id, self._by_netns = by_cgroup, by_id, by_netns
        self._indexed_at = time.monotonic()

    def _podman_entries(self) -> Iterator[tuple[_Entry, object]]:
        store = self.roots.podman / "overlay-containers"
        listed = read_json(store / "containers.json")
        names: dict[str, str] = {}
        for c in listed if isinstance(listed, list) else []:
            if isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("names"), list) \
                    and c["names"] and isinstance(c["names"][0], str):
                names[c["id"]] = c["names"][0]
        self._podman_names = names
        for ident in names:
            spec = read_json(store / ident / "userdata" / "config.json")
            spec = spec if isinstance(spec, dict) else {}
            linux = _labels(spec.get("linux"))
            cgroups_path = linux.get("cgroupsPath")
            yield (_Entry("podman", ident, None, _labels(spec.get("annotations")), _netns_path(linux),
                          cgroups_path if isinstance(cgroups_path, str) else None), cgroups_path)

    def _containerd_entries(self) -> Iterator[tuple[_Entry, object]]:
        try:
            namespaces = sorted(os.listdir(self.roots.containerd))
        except OSError:
            return
        for ns in namespaces:
            try:
                idents = sorted(os.listdir(self.roots.containerd / ns))
            except OSError:
                continue
            for ident in idents:
                spec = read_json(self.roots.containerd / ns / ident / "config.json")
                if not isinstance(spec, dict):
                    continue
                linux = _labels(spec.get("linux"))
                yield (_Entry("containerd", ident, ns, _labels(spec.get("annotations")), _netns_path(linux)),
                       linux.get("cgroupsPath"))

    # ---------------------------------------------------------------- names

    def _ctr_labels(self, namespace: str, ident: str) -> Mapping[str, object]:
        """The container's labels from containerd's metadata (only ctr reads its database)."""
        if not self._ctr:
            return {}
        try:
            done = subprocess.run([self._ctr, "-n", namespace, "containers", "info", ident], capture_output=True,
                                  timeout=CTR_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        if done.returncode != 0:
            return {}
        try:
            info = json.loads(done.stdout)
        except ValueError:
            return {}
        return _labels(info.get("Labels")) if isinstance(info, dict) else {}

    def _podman_pod(self, cgroups_path: str | None) -> str | None:
        """A podman pod's name: only podman's database has it, so `podman pod inspect` (a child with a timeout,
        where podman is installed), for a container whose cgroup sits in a pod's."""
        m = _PODMAN_POD.search(cgroups_path or "")
        if m is None or not self._podman:
            return None
        if m["pod"] not in self._pods:
            try:
                done = subprocess.run([self._podman, "pod", "inspect", "--format", "{{.Name}}", m["pod"]],
                                      capture_output=True, timeout=CTR_TIMEOUT_S, check=False)
                name = done.stdout.decode("utf-8", "surrogateescape").strip() if done.returncode == 0 else ""
            except (OSError, subprocess.TimeoutExpired):
                name = ""
            self._pods[m["pod"]] = _text(name)
        return self._pods[m["pod"]]

    def _docker(self, ident: str) -> Workload | None:
        config = read_json(self.roots.docker / ident / "config.v2.json")
        if not isinstance(config, dict):
            return None
        name = config.get("Name")
        fallback = _text(name.lstrip("/")) if isinstance(name, str) else None
        return from_labels(_labels(_labels(config.get("Config")).get("Labels")), fallback)

    def _named(self, entry: _Entry) -> Workload:
        if entry.runtime == "podman":
            found = from_labels(entry.bundle, _text(self._podman_names.get(entry.ident)))
            if found.pod is None:  # a podman pod (not Kubernetes: no namespace)
                found = Workload(found.container, self._podman_pod(entry.cgroups_path), None)
            return found
        found = from_labels(entry.bundle, None)
        if found.pod is None and entry.namespace is not None:
            labels = self._ctr_labels(entry.namespace, entry.ident)
            found = from_labels({**entry.bundle, **labels}, None)
        return Workload(found.container or _text(entry.ident), found.pod, found.pod_namespace)

    def _lookup(self, path: str) -> Workload | None:
        ref = containers.ref_of(path)
        entry = self._by_cgroup.get(path.rstrip("/")) or (self._by_id.get(ref.ident) if ref else None)
        if entry is not None:
            return self._named(entry)
        if ref is not None and ref.runtime == "docker":
            return self._docker(ref.ident)
        return None

    def of_netns(self, inode: int) -> Workload | None:
        """The workload whose OCI config joined network namespace `inode` (a pod's sandbox namespace names the
        pod); None when no runtime's container names it."""
        entry = self._by_netns.get(inode)
        if entry is None and time.monotonic() - self._indexed_at >= _REFRESH_MIN_S:
            self._index()
            entry = self._by_netns.get(inode)
        return self._named(entry) if entry is not None else None

    def of_cgroup(self, path: str | None) -> Workload | None:
        """The runtime's names for the workload in cgroup `path`; None when no runtime on this host owns it."""
        if not path:
            return None
        if path in self._cache:
            return self._cache[path]
        found = self._lookup(path)
        if found is None and time.monotonic() - self._indexed_at >= _REFRESH_MIN_S:
            self._index()
            found = self._lookup(path)
        if found is not None:  # a miss is not remembered: the container may be starting
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[path] = found
        return found
