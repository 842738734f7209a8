"""Container and unit names from real cgroup path shapes (docker, containerd, cri-o, podman, k8s, systemd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from netpath.containers import container_of
from netpath.errors import BadInput
from netpath.kernel.cgroups import CgroupTree, cgroup2_mount

CID = "3f2a1b9c0d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
POD = "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f90a"


@pytest.mark.parametrize(("path", "name"), [
    (f"/system.slice/docker-{CID}.scope", "docker:3f2a1b9c0d4e"),
    (f"/docker/{CID}", "docker:3f2a1b9c0d4e"),
    (f"/machine.slice/libpod-{CID}.scope", "podman:3f2a1b9c0d4e"),
    (f"/system.slice/containerd.service/cri-containerd-{CID}.scope", "containerd:3f2a1b9c0d4e"),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}.slice/"
     f"cri-containerd-{CID}.scope", f"k8s:pod/{POD}/containerd:3f2a1b9c0d4e"),
    (f"/kubepods.slice/kubepods-pod{POD.replace('-', '_')}.slice/crio-{CID}.scope",
     f"k8s:pod/{POD}/cri-o:3f2a1b9c0d4e"),
    (f"/kubepods/besteffort/pod{POD}/{CID}", f"k8s:pod/{POD}/3f2a1b9c0d4e"),
    (f"/kubepods/pod{POD}/{CID}", f"k8s:pod/{POD}/3f2a1b9c0d4e"),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD.replace('-', '_')}.slice",
     f"k8s:pod/{POD}"),
    ("/system.slice/nginx.service", "systemd:nginx.service"),
    ("/system.slice/system-getty.slice/getty@tty1.service", "systemd:getty@tty1.service"),
    ("/user.slice/user-1000.slice/session-3.scope", "systemd:user-1000/session-3.scope"),
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox.scope",
     "systemd:user-1000/app-firefox.scope"),
    ("/", None), ("/netpath-test-a1b2", None), (None, None), ("/system.slice", None),
])
def test_runtime_shapes(path, name):
    assert container_of(path) == name


def test_cgroup2_mount_from_mountinfo_hybrid_and_unified():
    hybrid = ("24 23 0:21 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
              "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
    assert cgroup2_mount(hybrid) == Path("/sys/fs/cgroup/unified")
    unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n"
    assert cgroup2_mount(unified) == Path("/sys/fs/cgroup")
    assert cgroup2_mount("22 1 8:1 / / rw - ext4 /dev/vda rw\n") is None


def test_ids_are_directory_inodes_and_paths_resolve_both_ways(tmp_path, monkeypatch):
    from netpath.kernel import cgroups

    monkeypatch.setattr(cgroups, "is_cgroup2", lambda path: True)  # tmp_path stands in for cgroup2fs
    svc = tmp_path / "system.slice" / "web.service"
    svc.mkdir(parents=True)
    (svc / "cgroup.procs").write_text("")
    tree = CgroupTree(tmp_path)
    ino = svc.stat().st_ino
    assert tree.path(ino) == "/system.slice/web.service"
    assert tree.path(tmp_path.stat().st_ino) == "/"
    assert tree.id_of("/system.slice/web.service") == ino
    assert tree.id_of(str(svc)) == ino
    with pytest.raises(BadInput, match="no such cgroup"):
        tree.id_of("/system.slice/nope.service")
    with pytest.raises(BadInput, match="no cgroup v2"):
        CgroupTree(None).id_of("/x")


def test_a_cgroup_path_must_be_a_directory_of_the_cgroup2_filesystem(tmp_path):
    """A look-alike with a planted cgroup.procs, reached directly or by climbing out of the mount, is exit 2."""
    from netpath.kernel.cgroups import find_mount, fs_magic

    fake = tmp_path / "x"
    fake.mkdir()
    (fake / "cgroup.procs").write_text("")
    with pytest.raises(BadInput, match="not a directory of the cgroup v2 hierarchy"):
        CgroupTree(tmp_path).id_of("/x")  # statfs says it is no cgroup2fs
    mount = find_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted here (CONFIG_CGROUPS) to climb out of")
    assert fs_magic(mount) == 0x63677270
    climb = str(mount) + "/.." * len(mount.parts) + str(fake)
    with pytest.raises(BadInput, match=r"is not a directory of the cgroup v2 hierarchy") as err:
        CgroupTree(mount).id_of(climb)
    assert repr(climb) in str(err.value)
    assert CgroupTree(mount).id_of("/") == mount.stat().st_ino  # the real root is one
