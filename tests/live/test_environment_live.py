"""Broken environments, for real: unprivileged users, tracefs unmounted, no mount(8), a read-only cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from netpath_testlib import REPO, NetpathRun, free_udp_port, send_udp

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# a private mount namespace: unmounting tracefs or covering /var/cache there touches nothing else
PRIVATE_MOUNTS = ["unshare", "--mount", "--propagation", "private"]


def netpath_cmd(*args: str) -> str:
    return " ".join([sys.executable, "-m", "netpath", *args])


def sh(prefix: list[str], script: str, env: dict[str, str] | None = None,
       timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, **(env or {})}, check=False)


def one_line(err: str) -> bool:
    return err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_probes_as_nobody_is_exit_3_with_the_fix():
    got = subprocess.run([*NOBODY, sys.executable, "-m", "netpath", "probes"], capture_output=True, text=True,
                         cwd="/", env={**os.environ, "HOME": "/nonexistent", "PYTHONPATH": str(REPO)},
                         timeout=60, check=False)
    if got.returncode == 0:
        return  # tracefs readable by everyone on this machine: it just works, which is fine too
    assert got.returncode == 3, got.stderr
    assert one_line(got.stderr) and "root" in got.stderr and "tracing" in got.stderr


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_drops_as_nobody_is_exit_3_with_the_fix():
    got = subprocess.run([*NOBODY, sys.executable, "-m", "netpath", "drops", "--duration", "1"], capture_output=True,
                         text=True, cwd="/", env={**os.environ, "HOME": "/nonexistent", "PYTHONPATH": str(REPO)},
                         timeout=60, check=False)
    assert got.returncode == 3 and one_line(got.stderr) and "sudo" in got.stderr, got.stderr


def test_unmounted_tracefs_without_mount_on_path_is_mounted_anyway():
    script = f"umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; PATH=/nonexistent " \
             f"{netpath_cmd('probes', '--json')}"
    got = sh(PRIVATE_MOUNTS, script)
    assert got.returncode == 0, got.stderr
    assert '"type":"probes"' in got.stdout.replace(" ", "") and got.stderr == ""


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_unmounted_tracefs_that_cannot_be_mounted_is_exit_3_with_the_fix():
    # root without CAP_SYS_ADMIN: mount(2) says EPERM
    no_admin = [str(shutil.which("setpriv")), "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]
    script = f"umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; " \
             f"PATH=/nonexistent exec {' '.join(no_admin)} {netpath_cmd('probes')}"
    got = sh(PRIVATE_MOUNTS, script, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert got.returncode == 3, got.stderr
    assert one_line(got.stderr) and "mount -t tracefs tracefs /sys/kernel/tracing" in got.stderr


def test_a_read_only_var_cache_still_counts_drops_and_cleans_up(tmp_path):
    port = free_udp_port()
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir(mode=0o700)
    script = ("mount -t tmpfs -o ro,size=1m tmpfs /var/cache && "
              f"exec {netpath_cmd('drops', '--port', str(port), '--json', '--duration', '3')}")
    env = {k: v for k, v in os.environ.items() if k != "NETPATH_CACHE"} | {"TMPDIR": str(private_tmp)}
    proc = subprocess.Popen([*PRIVATE_MOUNTS, "sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=env)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert '"type":"start"' in first.replace(" ", ""), proc.stderr.read() if proc.stderr else ""
    send_udp("127.0.0.1", port, 300)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert '"reason":"NO_SOCKET"' in out.replace(" ", "") and '"count":300' in out.replace(" ", "")
    assert "Traceback" not in err
    assert not list(private_tmp.iterdir())  # the private shim tree went away with netpath


def test_a_shim_header_planted_by_another_user_never_reaches_the_compiler(tmp_path):
    """The issue's attack: an open (umask 000) shim tree and a header in it owned by someone else."""
    from netpath.kernel import facts as facts_mod
    from netpath.kernel import shim

    cdir = tmp_path / "cache"
    release = facts_mod.KernelFacts.load("/").release_tuple
    root = shim.ensure(cdir, release)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    planted = root / "include/linux/types.h"
    planted.write_text("#error planted by another user\n")
    os.chown(planted, 65534, 65534)
    port = free_udp_port()

    job = NetpathRun(["drops", "--port", str(port), "--json", "--duration", "3"], env={"NETPATH_CACHE": str(cdir)})
    job.wait_start()
    send_udp("127.0.0.1", port, 3000)
    rc, _records, err = job.finish()
    assert rc == 0, err
    assert sum(r["count"] for r in job.summary()["rows"] if r["reason"] == "NO_SOCKET") == 3000
    assert planted.read_text() == shim.STUBS["include/linux/types.h"] and planted.stat().st_uid == 0
    assert all((p.stat().st_mode & 0o022) == 0 for p in [root, *root.rglob("*")])


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_a_pid_nobody_may_not_open_is_reported_as_such():
    got = subprocess.run([*NOBODY, sys.executable, "-m", "netpath", "drops", "--netns", "1"], capture_output=True,
                         text=True, cwd="/", env={**os.environ, "HOME": "/nonexistent", "PYTHONPATH": str(REPO)},
                         timeout=60, check=False)
    assert got.returncode == 2 and one_line(got.stderr), got.stderr
    assert "'1'" in got.stderr and "cannot be opened" in got.stderr


def test_umask_000_still_makes_a_0755_root_and_one_private_store(tmp_path):
    cdir = tmp_path / "fresh" / "cache"
    script = f"umask 000 && exec {netpath_cmd('drops', '--json', '--duration', '0.5')}"
    got = sh([], script, env={"NETPATH_CACHE": str(cdir)})
    assert got.returncode == 0, got.stderr
    for path in (cdir.parent, cdir):
        assert (path.stat().st_mode & 0o777) == 0o755, path
    store = cdir / "store"  # every cache: BTF facts, the shim tree, compiled builds, the symbol index
    assert [p.name for p in cdir.iterdir()] == ["store"]
    paths = list(store.rglob("*"))
    assert len(paths) > 10  # offsets, reasons, the shim tree, the build and the symbol index
    for path in [store, *paths]:
        assert (path.stat().st_mode & 0o777) == (0o700 if path.is_dir() else 0o600), path
    assert {p.name.split("-")[0] for p in store.iterdir()} >= {"prog", "kallsyms", "offsets", "reasons", "headers"}


def test_a_cache_dir_owned_by_another_user_is_ignored_with_one_warning(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    got = sh([], netpath_cmd("drops", "--json", "--duration", "0.5"), env={"NETPATH_CACHE": str(theirs)})
    assert got.returncode == 0, got.stderr
    assert one_line(got.stderr) and "NETPATH_CACHE" in got.stderr and "uid 65534" in got.stderr
    assert not list(theirs.iterdir())


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
@pytest.mark.parametrize("command", [["drops", "--duration", "1"], ["export", "--duration", "1"]])
def test_root_without_cap_bpf_is_exit_3_naming_the_capability(command):
    """uid 0 with CAP_BPF and CAP_SYS_ADMIN dropped: the fix names them, not the first bpf(2) call's EPERM."""
    drop = ["setpriv", "--inh-caps=-bpf,-sys_admin", "--bounding-set=-bpf,-sys_admin"]
    got = subprocess.run([*drop, sys.executable, "-m", "netpath", *command], capture_output=True, text=True,
                         cwd=REPO, timeout=60, check=False)
    assert got.returncode == 3, got.stderr
    assert one_line(got.stderr) and "CAP_BPF" in got.stderr and "root" in got.stderr, got.stderr
    assert "Operation not permitted" not in got.stderr
