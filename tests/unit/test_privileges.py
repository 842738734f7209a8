"""Least privilege has one source (netpath/privileges.py): the container preflight, the podman line and the
Kubernetes manifests all say the same capabilities and mounts."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from netpath import privileges
from netpath.kernel import container_env

KUBE = Path(__file__).parents[2] / "contrib/kubernetes"
ALL_CAPS = sum(1 << n for n in privileges.CAP_NUMBERS.values())


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBE / name).read_text()) if d]


def pod_spec() -> dict:
    (ds,) = docs("daemonset.yaml")
    assert ds["kind"] == "DaemonSet"
    return ds["spec"]["template"]["spec"]


def test_manifests_parse_and_select_the_same_pods():
    (ds,) = docs("daemonset.yaml")
    (svc,) = docs("service.yaml")
    (pm,) = docs("podmonitor.yaml")
    (secret,) = docs("secret.example.yaml")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert pm["kind"] == "PodMonitor" and pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (ctr,) = pod_spec()["containers"]
    port = ctr["ports"][0]
    assert port["containerPort"] == 9872 and svc["spec"]["ports"][0]["targetPort"] == port["name"]
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == port["name"]
    # the web config comes from the Secret the example makes, at the path the args name
    web = next(v for v in pod_spec()["volumes"] if v["name"] == "web-config")
    assert web["secret"]["secretName"] == secret["metadata"]["name"]
    mount = next(m for m in ctr["volumeMounts"] if m["name"] == "web-config")
    assert ctr["args"][ctr["args"].index("--web-config-file") + 1] == f"{mount['mountPath']}/web-config.yml"
    assert "web-config.yml" in secret["stringData"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert ctr[probe]["httpGet"]["path"] == "/healthz" and ctr[probe]["httpGet"]["port"] == port["name"]
    assert ctr["resources"]["requests"] and ctr["resources"]["limits"]


def test_the_pod_spec_has_exactly_the_export_capabilities_and_host_namespaces():
    spec = pod_spec()
    (ctr,) = spec["containers"]
    sc = ctr["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted("CAP_" + c for c in sc["capabilities"]["add"]) == sorted(privileges.COMMAND_CAPS["export"])
    assert sc["readOnlyRootFilesystem"] is True and sc["privileged"] is False
    assert spec["hostPID"] is True and spec["hostNetwork"] is True
    assert set(privileges.HOST_NAMESPACES) == {"pid", "network"}


def test_the_pod_spec_mounts_what_privileges_lists():
    spec = pod_spec()
    (ctr,) = spec["containers"]
    mounts = {m["name"]: m for m in ctr["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in privileges.MOUNTS:
        got = mounts[m.name]
        assert got["mountPath"] == m.path and bool(got.get("readOnly")) == m.read_only, m
        if m.name == "cache":
            assert "emptyDir" in volumes[m.name]
        else:
            assert volumes[m.name]["hostPath"]["path"] == m.host, m
        if m.propagation == "rslave":
            assert got["mountPropagation"] == "HostToContainer"
    assert set(mounts) - {m.name for m in privileges.MOUNTS} == {"web-config"}


def test_podman_args_are_the_same_list():
    args = privileges.podman_args("export", cgroup_root="/sys/fs/cgroup/unified", names=False)
    assert args[0] == "--cap-drop=all"
    assert args[1] == "--cap-add=" + ",".join(privileges.COMMAND_CAPS["export"])
    assert {"--read-only", "--pid=host", "--cgroupns=host", "--network=host"} <= set(args)
    assert "--volume=/sys/fs/cgroup/unified:/sys/fs/cgroup:ro" in args
    assert "--volume=/run/netns:/run/netns:ro,rslave" in args
    assert "--tmpfs=/var/cache/netpath:mode=0755" in args
    assert not any("overlay-containers" in a for a in args)
    assert privileges.podman_args("probes", names=False)[:2] == ["--cap-drop=all", "--read-only"]


def fake_root(tmp: Path, pid_ns: bool = True, btf: bool = True, netns: bool = True, cgroup: str = "/") -> Path:
    (tmp / "proc/self/ns").mkdir(parents=True)
    (tmp / "proc/self/status").write_text(f"Name:\tx\nCapEff:\t{ALL_CAPS:016x}\n")
    (tmp / "proc/self/cgroup").write_text(f"0::{cgroup}\n")
    if btf:
        (tmp / "sys/kernel/btf").mkdir(parents=True)
        (tmp / "sys/kernel/btf/vmlinux").write_bytes(b"\x9f\xeb")
    if netns:
        (tmp / "run/netns").mkdir(parents=True)
    if not pid_ns:  # a file stands for the namespace link: its inode is not the initial namespace's
        (tmp / "proc/self/ns/pid").write_text("")
    return tmp


def test_in_container_by_marker_namespace_or_cgroup(tmp_path):
    assert not container_env.in_container(fake_root(tmp_path / "a"))
    assert container_env.in_container(fake_root(tmp_path / "b", pid_ns=False))
    assert container_env.in_container(fake_root(tmp_path / "c", cgroup="/libpod_parent/libpod-" + "ab" * 32))
    root = fake_root(tmp_path / "d")
    (root / "run/.containerenv").write_text("")
    assert container_env.in_container(root)
    (root / ".dockerenv").write_text("")  # VM and host images keep it: not a sign
    assert container_env.in_container(fake_root(tmp_path / "e")) is False


def test_problems_name_each_missing_capability_and_mount(tmp_path):
    root = fake_root(tmp_path / "ok")
    assert container_env.problems("export", root, cache_dir=tmp_path) == []
    lacking = ALL_CAPS & ~(1 << privileges.CAP_NUMBERS["CAP_SYS_ADMIN"]) & ~(1 << privileges.CAP_NUMBERS["CAP_BPF"])
    (line,) = container_env.problems("export", root, cap_eff=lacking, cache_dir=tmp_path)
    assert "CAP_BPF (" in line and "CAP_SYS_ADMIN (" in line and "CAP_PERFMON (" not in line.split(": add")[0]
    bare = fake_root(tmp_path / "bare", pid_ns=False, btf=False, netns=False)
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    got = " ; ".join(container_env.problems("export", bare, cgroup_mounted=False, cache_dir=ro / "cache"))
    for said in ("hostPID", "/sys/kernel/btf", "/sys/fs/cgroup", "/run/netns"):
        assert said in got, said
    if os.geteuid() != 0:  # root writes anywhere: the cache check is the live test's
        assert "writable mount at" in got
    assert container_env.problems("probes", bare, cgroup_mounted=False, cache_dir=ro) == []
