"""Container, pod and pod-namespace names from the runtimes' state files (podman, containerd, docker)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from netpath.collect.owners import OwnerResolver
from netpath.containers import ContainerRef, ref_of
from netpath.model import Owner
from netpath.runtimes import MAX_STATE_BYTES, RuntimeNames, StateRoots, Workload

CID = "3f2a1b9c0d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
CID2 = "aa" * 32
POD = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f90a"


def put(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def bundle(cgroups_path: str, annotations: dict[str, str] | None = None) -> dict:
    return {"ociVersion": "1.0.2", "linux": {"cgroupsPath": cgroups_path}, "annotations": annotations or {}}


def podman(root: Path, ident: str, name: str, cgroups_path: str, annotations: dict[str, str] | None = None) -> None:
    store = root / "var/lib/containers/storage/overlay-containers"
    listed = json.loads((store / "containers.json").read_text()) if (store / "containers.json").exists() else []
    listed.append({"id": ident, "names": [name], "layer": "x", "metadata": "{}"})
    put(store / "containers.json", listed)
    put(store / ident / "userdata/config.json", bundle(cgroups_path, annotations))


def names(root: Path, ctr: str | None = None, podman: str | None = None) -> RuntimeNames:
    return RuntimeNames(StateRoots.under(root), ctr=ctr, podman=podman)


def test_refs_from_cgroup_shapes():
    assert ref_of(f"/libpod_parent/libpod-{CID}") == ContainerRef("podman", CID)
    assert ref_of(f"/machine.slice/libpod-{CID}.scope") == ContainerRef("podman", CID)
    assert ref_of(f"/docker/{CID}") == ContainerRef("docker", CID)
    assert ref_of(f"/kubepods/burstable/pod{POD}/{CID}") == ContainerRef("", CID)
    assert ref_of(f"/kubepods/burstable/pod{POD}") is None
    assert ref_of("/system.slice/nginx.service") is None
    assert ref_of(None) is None


def test_podman_name_by_cgroupfs_path(tmp_path):
    podman(tmp_path, CID, "web-1", f"/libpod_parent/libpod-{CID}")
    assert names(tmp_path).of_cgroup(f"/libpod_parent/libpod-{CID}") == Workload("web-1", None, None)


def test_cri_o_sandbox_annotations_name_the_pod(tmp_path):
    podman(tmp_path, CID, "web-pod-nginx", f"/libpod_parent/{CID2}/libpod-{CID}",
           {"io.kubernetes.cri-o.SandboxName": "web-pod", "io.kubernetes.cri-o.ContainerName": "nginx"})
    assert names(tmp_path).of_cgroup(f"/libpod_parent/{CID2}/libpod-{CID}") == Workload("nginx", "web-pod", None)


def test_containerd_cri_annotations_by_cgroup_path(tmp_path):
    task = tmp_path / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / CID / "config.json"
    put(task, bundle(f"/kubepods/besteffort/pod{POD}/{CID}", {
        "io.kubernetes.cri.container-name": "dns", "io.kubernetes.cri.sandbox-name": "coredns-5d78c9869d-x7k2p",
        "io.kubernetes.cri.sandbox-namespace": "kube-system", "io.kubernetes.cri.container-type": "container"}))
    got = names(tmp_path).of_cgroup(f"/kubepods/besteffort/pod{POD}/{CID}")
    assert got == Workload("dns", "coredns-5d78c9869d-x7k2p", "kube-system")


def test_containerd_systemd_driver_found_by_id(tmp_path):
    task = tmp_path / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / CID / "config.json"
    put(task, bundle(f"kubepods-besteffort-pod{POD.replace('-', '_')}.slice:cri-containerd:{CID}",
                     {"io.kubernetes.cri.container-name": "dns"}))
    path = (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD.replace('-', '_')}.slice/"
            f"cri-containerd-{CID}.scope")
    assert names(tmp_path).of_cgroup(path) == Workload("dns", None, None)


def test_containerd_labels_from_ctr_when_the_bundle_names_no_pod(tmp_path):
    put(tmp_path / "run/containerd/io.containerd.runtime.v2.task/default/np-a/config.json", bundle("/default/np-a"))
    ctr = tmp_path / "ctr"
    ctr.write_text("#!/bin/sh\n[ \"$2\" = default ] && [ \"$5\" = np-a ] || exit 1\n"
                   "echo '{\"ID\": \"np-a\", \"Labels\": {\"io.kubernetes.pod.name\": \"web-0\", "
                   "\"io.kubernetes.pod.namespace\": \"shop\", \"io.kubernetes.container.name\": \"srv\"}}'\n")
    ctr.chmod(0o755)
    assert names(tmp_path, str(ctr)).of_cgroup("/default/np-a") == Workload("srv", "web-0", "shop")
    # without ctr: the container is known by its containerd id, the pod is unknown (never guessed)
    assert names(tmp_path).of_cgroup("/default/np-a") == Workload("np-a", None, None)


def test_docker_name_and_labels(tmp_path):
    put(tmp_path / "var/lib/docker/containers" / CID / "config.v2.json",
        {"ID": CID, "Name": "/redis", "Config": {"Labels": {"com.example": "x"}}})
    assert names(tmp_path).of_cgroup(f"/system.slice/docker-{CID}.scope") == Workload("redis", None, None)


def test_names_are_untrusted_text(tmp_path):
    podman(tmp_path, CID, "evil\x1b[31m\u202e", f"/libpod_parent/libpod-{CID}")
    got = names(tmp_path).of_cgroup(f"/libpod_parent/libpod-{CID}")
    assert got is not None and got.container == "evil\\x1b[31m\\u202e"


def test_broken_or_huge_state_is_no_name(tmp_path):
    store = tmp_path / "var/lib/containers/storage/overlay-containers"
    store.mkdir(parents=True)
    (store / "containers.json").write_text("{not json")
    assert names(tmp_path).of_cgroup(f"/libpod_parent/libpod-{CID}") is None
    (store / "containers.json").write_bytes(b" " * (MAX_STATE_BYTES + 1))
    assert names(tmp_path).of_cgroup(f"/libpod_parent/libpod-{CID}") is None
    os.symlink("/etc/hostname", store / "link.json")
    assert names(tmp_path).of_cgroup("/system.slice/nginx.service") is None


def test_a_new_container_is_found_after_the_index_refresh(tmp_path, monkeypatch):
    import netpath.runtimes as rt
    clock = [100.0]
    monkeypatch.setattr(rt.time, "monotonic", lambda: clock[0])
    r = names(tmp_path)
    assert r.of_cgroup(f"/libpod_parent/libpod-{CID}") is None
    podman(tmp_path, CID, "late", f"/libpod_parent/libpod-{CID}")
    assert r.of_cgroup(f"/libpod_parent/libpod-{CID}") is None  # indexed less than a second ago
    clock[0] += 1.5
    assert r.of_cgroup(f"/libpod_parent/libpod-{CID}") == Workload("late", None, None)


def test_owner_resolver_names_from_runtime_else_cgroup_shape(tmp_path):
    podman(tmp_path, CID, "web-1", f"/libpod_parent/libpod-{CID}")
    r = OwnerResolver(cgroups=object(), runtimes=names(tmp_path))  # type: ignore[arg-type]
    assert r.named(Owner(cgroup=f"/libpod_parent/libpod-{CID}")).container == "web-1"
    assert r.named(Owner(cgroup=f"/libpod_parent/libpod-{CID2}")).container == "podman:aaaaaaaaaaaa"
    assert r.named(Owner(cgroup="/system.slice/x.service")) == Owner(cgroup="/system.slice/x.service",
                                                                       container="systemd:x.service")


def test_a_pods_namespace_is_named_by_the_containers_that_joined_it(tmp_path):
    sandbox = tmp_path / "netns-cni-1"
    sandbox.write_text("")  # stands for /var/run/netns/cni-...: its inode is the namespace's
    spec = bundle(f"/kubepods/besteffort/pod{POD}/{CID}", {"io.kubernetes.cri.sandbox-name": "coredns-0",
                                                            "io.kubernetes.cri.sandbox-namespace": "kube-system"})
    spec["linux"]["namespaces"] = [{"type": "pid"}, {"type": "network", "path": str(sandbox)}]
    put(tmp_path / "run/containerd/io.containerd.runtime.v2.task/k8s.io" / CID / "config.json", spec)
    r = names(tmp_path)
    got = r.of_netns(os.stat(sandbox).st_ino)
    assert got is not None and (got.pod, got.pod_namespace) == ("coredns-0", "kube-system")
    assert r.of_netns(1) is None


def test_a_podman_pods_name_from_podman_itself(tmp_path):
    podman(tmp_path, CID, "web-pod-srv", f"/libpod_parent/{CID2}/libpod-{CID}")
    tool = tmp_path / "podman"
    tool.write_text(f"#!/bin/sh\n[ \"$1 $2\" = \"pod inspect\" ] && [ \"$5\" = {CID2} ] && echo web-pod\n")
    tool.chmod(0o755)
    got = names(tmp_path, podman=str(tool)).of_cgroup(f"/libpod_parent/{CID2}/libpod-{CID}")
    assert got == Workload("web-pod-srv", "web-pod", None)
    assert names(tmp_path).of_cgroup(f"/libpod_parent/{CID2}/libpod-{CID}") == Workload("web-pod-srv", None, None)
