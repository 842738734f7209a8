"""Smaller contract breaks (issue 22, class 5), provoked for real: capabilities, the open-file limit, --cgroup
outside cgroup2, --listen values."""

from __future__ import annotations

import json
import resource
import subprocess
import tempfile
from pathlib import Path

import pytest
from netpath_testlib import REPO, netpath_argv, run_netpath

from netpath.kernel.cgroups import find_mount

BPF_CAPS = "+bpf,+perfmon"


def as_nobody(caps: str, *args: str) -> subprocess.CompletedProcess[str]:
    """netpath as uid 65534 holding only `caps` (ambient, so they survive the exec of python)."""
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", f"--inh-caps={caps}",
            f"--ambient-caps={caps}", *netpath_argv(), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/", check=False)


def _no_default_addresses() -> bool:
    kptr = int(Path("/proc/sys/kernel/kptr_restrict").read_text())
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    return not (kptr == 0 and paranoid <= 1)


def test_bpf_and_perfmon_alone_are_told_exactly_what_else_is_missing():
    if not (REPO / "netpath").stat().st_mode & 0o005:
        pytest.skip("the source tree is not readable by others: uid 65534 could not run it")
    proc = as_nobody(BPF_CAPS, "drops", "--duration", "1", "--json")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1 and "CAP_DAC_READ_SEARCH" in proc.stderr
    assert ("CAP_SYSLOG" in proc.stderr) == _no_default_addresses()
    assert "CAP_BPF (" not in proc.stderr and "CAP_PERFMON (" not in proc.stderr


def test_the_named_capabilities_are_enough():
    if not (REPO / "netpath").stat().st_mode & 0o005:
        pytest.skip("the source tree is not readable by others: uid 65534 could not run it")
    no_locations = as_nobody(BPF_CAPS + ",+dac_read_search", "drops", "--by", "reason,iface", "--duration", "1",
                             "--json")
    assert no_locations.returncode == 0, no_locations.stderr
    full = as_nobody(BPF_CAPS + ",+dac_read_search,+syslog", "drops", "--duration", "1", "--json")
    assert full.returncode == 0, full.stderr
    assert json.loads(full.stdout.splitlines()[-1])["type"] == "summary"


def _nofile(n: int):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return limit


def test_an_open_file_limit_of_16_is_named_as_the_cause():
    proc = subprocess.run([*netpath_argv(), "trace", "--duration", "1"], capture_output=True, text=True, cwd=REPO,
                          timeout=120, preexec_fn=_nofile(16), check=False)
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1 and "RLIMIT_NOFILE" in proc.stderr and "is 16" in proc.stderr
    assert "free space" not in proc.stderr and "internal error" not in proc.stderr


def test_a_low_soft_limit_is_raised_to_the_hard_one():
    proc = subprocess.run([*netpath_argv(), "drops", "--duration", "0.5", "--json"], capture_output=True, text=True,
                          cwd=REPO, timeout=120, preexec_fn=lambda: resource.setrlimit(
                              resource.RLIMIT_NOFILE, (16, resource.getrlimit(resource.RLIMIT_NOFILE)[1])),
                          check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_cgroup_path_that_climbs_out_of_cgroup2_is_exit_2():
    mount = find_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy mounted (CONFIG_CGROUPS)")
    with tempfile.TemporaryDirectory(prefix="netpath-fakecg-") as tmp:
        (Path(tmp) / "cgroup.procs").write_text("")
        climb = str(mount) + "/.." * len(mount.parts) + tmp
        proc = run_netpath("drops", "--cgroup", climb, "--duration", "1")
    assert proc.returncode == 2, proc.stderr
    assert repr(climb) in proc.stderr and "not a directory of the cgroup v2 hierarchy" in proc.stderr


@pytest.mark.parametrize("value", ["127.0.0.1:\u00b2", "[fe80::1%lo]:9872"])
def test_bad_listen_values_are_exit_2_naming_them(value):
    proc = run_netpath("export", "--listen", value)
    assert proc.returncode == 2, proc.stderr
    assert repr(value) in proc.stderr and proc.stderr.count("\n") == 1
