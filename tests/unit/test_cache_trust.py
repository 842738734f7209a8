"""The cache is a trust boundary: one private store (0700, entries 0600 with their key and checksum)
for the BTF facts, the header shim and the programs; foreign or open entries refused, corrupt ones rebuilt."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from btf_builder import kernel_like

from netpath.bpfload import cache as store
from netpath.kernel import cache, offsets, reasons, shim
from netpath.kernel.btf import BTF

RELEASE = (6, 18, 0)
AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="planting a file owned by another uid needs root")


@pytest.fixture(autouse=True)
def _no_system_cache(tmp_path, monkeypatch):
    """Where an ignored NETPATH_CACHE falls back to, as root: never the machine's /var/cache/netpath here."""
    monkeypatch.setattr(cache, "SYSTEM_CACHE", tmp_path / "system-cache")


@pytest.fixture
def btf(tmp_path) -> Path:
    path = tmp_path / "vmlinux"
    path.write_bytes(kernel_like().blob())
    return path


@pytest.fixture
def cdir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("NETPATH_CACHE", str(path))
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def entry(cdir: Path, kind: str) -> Path:
    (path,) = (cdir / store.SUBDIR).glob(f"{kind}-*")
    return path


def payload(path: Path) -> object:
    """The JSON inside an entry (after its magic and header lines)."""
    return json.loads(path.read_bytes().split(b"\n", 2)[2])


def rewrite(path: Path, data: bytes) -> None:
    """Replace an entry's payload with `data` under a matching checksum: only the payload's checks stand."""
    header = json.loads(path.read_bytes().split(b"\n", 2)[1])
    path.write_bytes(store.encode_entry(header["key"], data))


def good_offsets(btf: Path) -> dict[str, int]:
    return offsets.compute(BTF(btf.read_bytes()))


def good_reasons(btf: Path) -> reasons.DropReasons:
    return reasons.from_btf(BTF(btf.read_bytes()))


OFFSET_JUNK = [b"", b"junk", b'{"OFF_SKB_DEV": 16', b"null", b"[]", b'{"OFF_SKB_DEV": "16", "SIZE_SKB_DEV": 8}',
               b'{"OFF_SKB_DEV": true, "SIZE_SKB_DEV": 8}', b'{"OFF_NOPE": 1, "SIZE_NOPE": 1}',
               b'{"OFF_SKB_DEV": -1, "SIZE_SKB_DEV": 8}', b'{"OFF_SKB_DEV": 16}', b"\xff\xfe\x00", b"[" * 100000]
REASON_JUNK = [b"", b"junk", b"[{}, {}", b"null", b'{"3": "NO_SOCKET"}', b"[{}, {}]", b'[{"x": "A"}, {}, {}]',
               b'[{"3": 5}, {}, {}]', b'[{"3": ""}, {}, {}]', b"[[], [], []]", b'[{"-3": "A"}, {}, {}]']


@pytest.mark.parametrize("junk", OFFSET_JUNK)
def test_corrupt_offsets_are_rebuilt(btf, cdir, junk):
    assert offsets.load(btf) == good_offsets(btf)
    rewrite(entry(cdir, "offsets"), junk)
    assert offsets.load(btf) == good_offsets(btf)
    assert payload(entry(cdir, "offsets")) == good_offsets(btf)


@pytest.mark.parametrize("junk", REASON_JUNK)
def test_corrupt_reasons_are_rebuilt(btf, cdir, junk):
    first = reasons.load(btf, None)
    rewrite(entry(cdir, "reasons"), junk)
    again = reasons.load(btf, None)
    assert again.core == first.core == good_reasons(btf).core and again.source == "btf"
    assert reasons.valid_cached(payload(entry(cdir, "reasons")))


def _shim_root(cdir: Path) -> Path:
    return shim.ensure(cdir, RELEASE)


def _shim_ok(cdir: Path) -> bool:
    fd = os.open(cdir / store.SUBDIR, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return shim.verify(fd, shim.tree_name(RELEASE), shim.manifest(RELEASE))
    finally:
        os.close(fd)


def _truncate(root: Path) -> None:
    (root / "include/linux/types.h").write_text("#pragma once\n")


def _extra_file(root: Path) -> None:
    (root / "include/linux/skbuff.h").write_text("#define kfree_skb(x) 0\n")


def _symlinked_header(root: Path) -> None:
    target = root.parent / "elsewhere.h"
    target.write_text(shim.STUBS["include/linux/types.h"])
    (root / "include/linux/types.h").unlink()
    (root / "include/linux/types.h").symlink_to(target)


def _open_dir(root: Path) -> None:
    (root / "include/linux").chmod(0o777)


def _removed_marker(root: Path) -> None:
    (root / ".complete").unlink()


@pytest.mark.parametrize("damage", [_truncate, _extra_file, _symlinked_header, _open_dir, _removed_marker])
def test_a_damaged_shim_tree_is_rebuilt(cdir, damage):
    root = _shim_root(cdir)
    damage(root)
    assert not _shim_ok(cdir)
    assert _shim_root(cdir) == root and _shim_ok(cdir)
    assert (root / "include/linux/types.h").read_text() == shim.STUBS["include/linux/types.h"]


def test_umask_000_still_gives_a_0755_root_and_a_private_store(btf, tmp_path, monkeypatch):
    deep = tmp_path / "a" / "b" / "cache"
    monkeypatch.setenv("NETPATH_CACHE", str(deep))
    old = os.umask(0)
    try:
        offsets.load(btf)
        reasons.load(btf, None)
        root = shim.ensure(deep, RELEASE)
    finally:
        os.umask(old)
    for d in (tmp_path / "a", tmp_path / "a" / "b", deep):
        assert mode(d) == 0o755, d
    assert [p.name for p in deep.iterdir()] == [store.SUBDIR]  # every cache in the one store
    for path in deep.rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert any(root.rglob("*.h")) and root.parent == deep / store.SUBDIR
    assert {p.name.split("-")[0] for p in (deep / store.SUBDIR).glob("*-*")} >= {"offsets", "reasons", "headers"}


def test_a_group_writable_entry_is_refused_and_rebuilt(btf, cdir):
    offsets.load(btf)
    planted = entry(cdir, "offsets")
    rewrite(planted, json.dumps({**good_offsets(btf), "OFF_SKB_DEV": 999}).encode())
    planted.chmod(0o664)
    assert offsets.load(btf)["OFF_SKB_DEV"] == good_offsets(btf)["OFF_SKB_DEV"]
    assert mode(planted) == 0o600 and payload(planted) == good_offsets(btf)


@needs_root
def test_an_entry_owned_by_another_uid_is_refused_and_rebuilt(btf, cdir):
    offsets.load(btf)
    planted = entry(cdir, "offsets")
    rewrite(planted, json.dumps({**good_offsets(btf), "OFF_SKB_DEV": 999}).encode())
    os.chown(planted, 65534, 65534)
    assert offsets.load(btf)["OFF_SKB_DEV"] == good_offsets(btf)["OFF_SKB_DEV"]
    assert planted.stat().st_uid == os.geteuid()


@needs_root
def test_a_shim_header_owned_by_another_uid_is_refused_and_rebuilt(cdir):
    root = _shim_root(cdir)
    header = root / "include/linux/types.h"
    os.chown(header, 65534, 65534)
    assert not _shim_ok(cdir)
    _shim_root(cdir)
    assert header.stat().st_uid == os.geteuid() and _shim_ok(cdir)


@needs_root
def test_a_cache_dir_owned_by_another_uid_is_not_used(btf, cdir, monkeypatch):
    cdir.mkdir()
    os.chown(cdir, 65534, 65534)
    monkeypatch.setattr(cache, "cache_dir", lambda: cdir)  # as if it came from somewhere trusted
    assert offsets.load(btf) == good_offsets(btf)
    assert not list(cdir.iterdir())
    root = shim.ensure(cdir, RELEASE)
    assert cdir not in root.parents  # built privately instead


def test_a_group_writable_cache_dir_of_ours_is_tightened(tmp_path):
    cdir = tmp_path / "cache"
    cdir.mkdir()
    cdir.chmod(0o777)
    fd = cache.open_dir(cdir)
    assert fd is not None
    os.close(fd)
    assert mode(cdir) == 0o755


def test_a_symlink_planted_at_the_temp_path_is_not_followed(btf, cdir, tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    offsets.load(btf)
    name = entry(cdir, "offsets").name
    entry(cdir, "offsets").unlink()
    monkeypatch.setattr(cache, "temp_name", lambda name: f".{name}.planted.tmp")
    (cdir / store.SUBDIR / f".{name}.planted.tmp").symlink_to(victim)
    assert offsets.load(btf) == good_offsets(btf)
    assert victim.read_text() == "precious"
    assert not list((cdir / store.SUBDIR).glob("offsets-*"))  # could not write safely, so did not write


def test_a_symlink_planted_at_the_entry_is_replaced_not_followed(btf, cdir, tmp_path):
    victim = tmp_path / "victim"
    offsets.load(btf)
    planted = entry(cdir, "offsets")
    victim.write_bytes(planted.read_bytes())
    rewrite(victim, json.dumps({**good_offsets(btf), "OFF_SKB_DEV": 999}).encode())
    planted.unlink()
    planted.symlink_to(victim)
    assert offsets.load(btf) == good_offsets(btf)
    assert not planted.is_symlink() and payload(victim)["OFF_SKB_DEV"] == 999


def test_a_fifo_planted_at_the_entry_does_not_hang(btf, cdir):
    offsets.load(btf)
    planted = entry(cdir, "offsets")
    planted.unlink()
    os.mkfifo(planted)
    assert offsets.load(btf) == good_offsets(btf)
    assert stat.S_ISREG(os.lstat(planted).st_mode)


def test_an_unwritable_cache_builds_the_shim_privately_and_cleans_up(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cleanups = []
    monkeypatch.setattr(shim.atexit, "register", lambda fn, *args: cleanups.append((fn, args)))
    root = shim.ensure(blocker / "cache", RELEASE)  # cannot mkdir under a regular file
    assert mode(root) == 0o700 and (root / "include/linux/types.h").is_file()
    assert tmp_path not in root.parents
    for fn, args in cleanups:
        fn(*args)
    assert not root.exists()


def test_an_unwritable_cache_still_answers(btf, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("NETPATH_CACHE", str(blocker / "cache"))
    assert offsets.load(btf) == good_offsets(btf)
    assert reasons.load(btf, None).core == good_reasons(btf).core


def test_missing_uapi_headers_are_an_environment_fault_with_the_fix(cdir, monkeypatch, tmp_path):
    monkeypatch.setattr(shim, "_uapi_roots", lambda: [tmp_path / "no-include"])
    with pytest.raises(shim.ShimError) as info:
        shim.ensure(cdir, RELEASE)
    assert info.value.exit_code == 3 and "apt-get install linux-libc-dev" in str(info.value)


def test_no_cache_and_no_temp_dir_is_an_environment_fault_with_the_fix(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(shim.tempfile, "tempdir", str(blocker))  # mkdtemp under a regular file fails
    with pytest.raises(shim.ShimError) as info:
        shim.ensure(blocker / "cache", RELEASE)
    assert info.value.exit_code == 3 and "TMPDIR" in str(info.value)


def test_a_good_tree_another_netpath_just_built_is_kept(cdir, monkeypatch):
    root = _shim_root(cdir)
    inode = root.stat().st_ino
    calls = iter([False, True, True])  # ours looked bad, then the other's is good by the time we built
    real_verify = shim.verify
    monkeypatch.setattr(shim, "verify", lambda *a: next(calls) and real_verify(*a))
    assert _shim_root(cdir) == root and root.stat().st_ino == inode
    assert not [p for p in (cdir / store.SUBDIR).iterdir() if p.name.endswith(".tmp")]


def test_the_running_kernels_btf_hash_is_kept_per_boot(btf, cdir, monkeypatch):
    """/sys/kernel/btf/vmlinux cannot change before a reboot: its hash is read from the store once a run of
    this boot has taken it; any other file is hashed at each run."""
    monkeypatch.setattr(cache, "RUNNING_BTF", str(btf))
    first = cache.btf_digest(btf)
    assert len(entry(cdir, "btf-digest").read_bytes()) > 0
    original = btf.read_bytes()
    btf.write_bytes(bytes(len(original)))  # the same size: only the store can still give the old hash
    cache._DIGESTS.clear()
    assert cache.btf_digest(btf) == first
    monkeypatch.setattr(cache, "RUNNING_BTF", "/sys/kernel/btf/vmlinux")
    cache._DIGESTS.clear()
    assert cache.btf_digest(btf) != first  # a captured tree's BTF: hashed afresh


def test_a_damaged_btf_hash_entry_is_hashed_again(btf, cdir, monkeypatch):
    monkeypatch.setattr(cache, "RUNNING_BTF", str(btf))
    first = cache.btf_digest(btf)
    rewrite(entry(cdir, "btf-digest"), b"not a hash")
    cache._DIGESTS.clear()
    assert cache.btf_digest(btf) == first
