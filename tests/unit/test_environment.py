"""Environment faults are exit 3 with the fix; NETPATH_* paths another user controls are ignored as root."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from netpath.cli import main as main_mod
from netpath.errors import EXIT_ENVIRONMENT, MissingCapability
from netpath.kernel import cache, caps, facts

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
REAL_UID = os.geteuid()


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(caps, "_warned", set())
    monkeypatch.delenv("NETPATH_DEBUG", raising=False)


def as_root(monkeypatch) -> None:
    """Pretend to be root. Run as root for real, foreign() chowns; as a user, our own files are foreign to root."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def foreign(path: Path) -> Path:
    if REAL_UID == 0:
        os.chown(path, 65534, 65534)
    return path


def one_line(err: str) -> bool:
    return err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err


# --- NETPATH_* as root ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["NETPATH_CACHE", "NETPATH_ROOT"])
def test_a_path_owned_by_another_user_is_ignored_with_one_warning(tmp_path, monkeypatch, capsys, name):
    planted = tmp_path / "planted"
    planted.mkdir()
    foreign(planted)
    monkeypatch.setenv(name, str(planted))
    as_root(monkeypatch)
    assert caps.env_path(name) is None
    assert caps.env_path(name) is None
    err = capsys.readouterr().err
    assert one_line(err) and name in err and str(planted) in err and "owned by uid" in err


def test_a_world_writable_path_is_ignored(tmp_path, monkeypatch, capsys):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    monkeypatch.setenv("NETPATH_CACHE", str(open_dir))
    if REAL_UID != 0:
        monkeypatch.setattr(caps, "trusted_owner", lambda uid, euid=None: True)
    as_root(monkeypatch)
    assert cache.cache_dir() == cache.SYSTEM_CACHE
    assert "writable by others" in capsys.readouterr().err


def test_a_path_below_a_foreign_directory_is_ignored(tmp_path, monkeypatch, capsys):
    parent = tmp_path / "theirs"
    parent.mkdir()
    foreign(parent)
    monkeypatch.setenv("NETPATH_CACHE", str(parent / "cache"))  # does not exist yet: they could make it
    as_root(monkeypatch)
    assert caps.env_path("NETPATH_CACHE") is None
    assert "theirs" in capsys.readouterr().err


def test_a_symlink_owned_by_another_user_is_ignored(tmp_path, monkeypatch, capsys):
    if REAL_UID != 0:
        pytest.skip("lchown to another uid needs root")
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    os.lchown(link, 65534, 65534)
    monkeypatch.setenv("NETPATH_ROOT", str(link))
    assert caps.env_path("NETPATH_ROOT") is None
    assert "owned by uid 65534" in capsys.readouterr().err


def test_a_trusted_path_is_used_silently(monkeypatch, capsys):
    monkeypatch.setenv("NETPATH_ROOT", "/usr")
    as_root(monkeypatch)
    assert caps.env_path("NETPATH_ROOT") == Path("/usr")
    assert capsys.readouterr().err == ""


def test_a_user_may_point_netpath_anywhere(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setenv("NETPATH_CACHE", "/tmp/anything")
    assert caps.env_path("NETPATH_CACHE") == Path("/tmp/anything")
    assert capsys.readouterr().err == ""


def test_unset_or_empty_means_the_default(monkeypatch):
    monkeypatch.setenv("NETPATH_CACHE", "")
    assert caps.env_path("NETPATH_CACHE") is None
    monkeypatch.delenv("NETPATH_CACHE")
    assert caps.env_path("NETPATH_CACHE") is None


def test_an_ignored_netpath_root_reads_the_real_kernel(tmp_path, monkeypatch, capsys):
    planted = tmp_path / "fake-kernel"
    planted.mkdir()
    foreign(planted)
    monkeypatch.setenv("NETPATH_ROOT", str(planted))
    as_root(monkeypatch)
    assert facts.KernelFacts.load(str(planted)).root == Path("/")
    assert "NETPATH_ROOT" in capsys.readouterr().err


def test_a_fixture_root_given_directly_is_used(monkeypatch):
    monkeypatch.delenv("NETPATH_ROOT", raising=False)
    assert facts.KernelFacts.load(FIXTURE).root == FIXTURE


def test_a_user_cache_without_a_home_still_has_a_place(monkeypatch):
    monkeypatch.delenv("NETPATH_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert "4242" in str(cache.cache_dir())


# --- tracefs --------------------------------------------------------------------------------------

def test_unreadable_tracefs_is_exit_3_with_the_fix_and_probes_shows_the_rest(monkeypatch, capsys):
    real_stat = os.stat

    def denied(path, *args, **kwargs):
        if str(path).startswith("/sys/kernel/tracing") or str(path).startswith("/sys/kernel/debug/tracing"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", denied)
    monkeypatch.setattr(facts.KernelFacts, "tracefs", property(lambda self: None))
    monkeypatch.setattr(facts, "_mount_tracefs", lambda: pytest.fail("must not try to mount a tracefs it may not read"))
    rc = main_mod.main(["drops", "--duration", "1"])
    err = capsys.readouterr().err
    assert rc == EXIT_ENVIRONMENT and one_line(err)
    assert "/sys/kernel/tracing" in err and "root" in err
    # probes attaches nothing: it shows what it can read (release, BTF, kprobes, programs) and says sudo
    rc = main_mod.main(["probes"])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    assert out.startswith("kernel ") and "BTF" in out and "sudo netpath probes" in " ".join(out.split())
    assert "STAGE" not in out  # no attach plan without the tracepoints


class FakeLibc:
    def __init__(self, errno_value: int) -> None:
        self.errno_value = errno_value

    def mount(self, *_args: object) -> int:
        return -1 if self.errno_value else 0


@pytest.mark.parametrize(("err", "hint"), [(errno.EPERM, "as root"), (errno.ENODEV, "CONFIG_TRACING")])
def test_a_failed_tracefs_mount_says_how_to_fix_it(monkeypatch, err, hint):
    monkeypatch.setattr(facts.ctypes, "CDLL", lambda *_a, **_k: FakeLibc(err))
    monkeypatch.setattr(facts.ctypes, "get_errno", lambda: err)
    with pytest.raises(MissingCapability) as info:
        facts._mount_tracefs()
    assert hint in str(info.value) and "mount -t tracefs tracefs /sys/kernel/tracing" in str(info.value)


def test_mounting_tracefs_needs_no_mount_binary(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(facts.ctypes, "CDLL", lambda *_a, **_k: FakeLibc(0))
    facts._mount_tracefs()  # no FileNotFoundError: the syscall, not mount(8)
    monkeypatch.setattr(facts.ctypes, "CDLL", lambda *_a, **_k: FakeLibc(errno.EBUSY))
    monkeypatch.setattr(facts.ctypes, "get_errno", lambda: errno.EBUSY)
    facts._mount_tracefs()  # mounted meanwhile: fine


def test_unmounted_tracefs_that_cannot_be_mounted_is_exit_3_from_the_cli(monkeypatch, capsys):
    monkeypatch.setattr(facts.KernelFacts, "tracefs", property(lambda self: None))
    monkeypatch.setattr(facts.KernelFacts, "unreadable_tracefs", lambda self: None)
    monkeypatch.setattr(facts.ctypes, "CDLL", lambda *_a, **_k: FakeLibc(errno.EPERM))
    monkeypatch.setattr(facts.ctypes, "get_errno", lambda: errno.EPERM)
    rc = main_mod.main(["probes"])
    err = capsys.readouterr().err
    assert rc == EXIT_ENVIRONMENT and one_line(err) and "mount -t tracefs" in err


def test_a_partly_readable_events_dir_gives_no_tracepoints_not_a_traceback(tmp_path, monkeypatch):
    (tmp_path / "sys/kernel/tracing/events/skb").mkdir(parents=True)

    def denied(self):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "iterdir", denied)
    assert facts.KernelFacts.load(tmp_path).tracepoints == frozenset()


# --- every NETPATH_* the code reads is documented -------------------------------------------------

def _variables_read_by_netpath() -> set[str]:
    import re

    package = Path(__file__).resolve().parents[2] / "netpath"
    names: set[str] = set()
    for path in package.rglob("*.py"):
        names |= set(re.findall(r"\b(NETPATH_[A-Z][A-Z0-9_]*)\b", path.read_text()))
    return names


def test_every_netpath_variable_is_documented():
    top = Path(__file__).resolve().parents[2]
    man = (top / "man/man8/netpath.8").read_text().replace("\\_", "_")
    readme = (top / "README.md").read_text()
    environment = readme[readme.index("## Environment"):]
    names = _variables_read_by_netpath()
    assert {"NETPATH_CACHE", "NETPATH_ROOT", "NETPATH_HEADERS", "NETPATH_DEBUG"} <= names
    for name in names:
        assert f".B {name}" in man, f"{name}: not in netpath(8) ENVIRONMENT"
        assert f"`{name}`" in environment, f"{name}: not in README's Environment section"


# --- other faults a user can cause are exit 3, not internal errors ---------------------------------

def test_an_unenterable_namespace_for_iface_is_exit_3(monkeypatch, capsys):
    def no_setns(_ns, _fn):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr("netpath.netns.run_in", no_setns)
    rc = main_mod.main(["drops", "--netns", "/proc/self/ns/net", "--iface", "lo"])
    err = capsys.readouterr().err
    assert rc == EXIT_ENVIRONMENT and one_line(err) and "'lo'" in err and "root" in err


def test_unreadable_btf_is_exit_3_with_the_fix(tmp_path):
    with pytest.raises(MissingCapability) as info:
        cache.cached_json(tmp_path / "no-such-vmlinux", "offsets", lambda blob: {}, valid=lambda _v: True)
    assert "BTF" in str(info.value) and "root" in str(info.value)


def test_root_whose_capabilities_were_dropped_is_told_which(tmp_path, monkeypatch):
    status = tmp_path / "status"
    all_caps = (1 << 41) - 1
    status.write_text(f"Name:\tx\nCapEff:\t{all_caps & ~(1 << caps.CAP_BPF) & ~(1 << caps.CAP_SYS_ADMIN):016x}\n")
    monkeypatch.setattr(caps, "tracefs_readable", lambda: True)
    as_root(monkeypatch)
    fix = caps.missing_capability(status)
    assert fix is not None and "runs as root" in fix and "CAP_BPF" in fix and "CAP_PERFMON" not in fix
    status.write_text(f"Name:\tx\nCapEff:\t{all_caps:016x}\n")
    assert caps.missing_capability(status) is None
