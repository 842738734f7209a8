"""The compiled-program and symbol caches are a trust boundary too: a private directory, entries that are
exactly ours, keyed by everything a build depends on and checksummed; anything else is refused and removed."""

from __future__ import annotations

import json
import os
import stat
import struct
from array import array
from pathlib import Path

import pytest

from netpath.bpfload import cache as progcache
from netpath.bpfload import libbpf, load
from netpath.kernel import cache, kallsyms

AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="planting a file owned by another uid needs root")

LD_MAP = struct.pack("<BBhi", 0x18, 0x10 | 1, 0, 7) + bytes(8)  # r1 = map fd 7 (two slots)
MOV_EXIT = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = 0; exit


@pytest.fixture(autouse=True)
def cdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(cache, "SYSTEM_CACHE", tmp_path / "system-cache")
    path = tmp_path / "cache"
    monkeypatch.setenv("NETPATH_CACHE", str(path))
    monkeypatch.delenv("NETPATH_PROGRAM_CACHE", raising=False)
    return path


def a_build() -> dict:
    fn = load.unrelocate("raw_tracepoint__kfree_skb", LD_MAP + MOV_EXIT, {7: 0})
    return {"license": "GPL", "kern_version": 0, "functions": [fn],
            "maps": [{"name": "drops", "type": libbpf.MAP_TYPE_PERCPU_HASH, "key_size": 16, "value_size": 8,
                      "max_entries": 1024, "flags": 0}]}


def a_key(tmp_path: Path, text: str = "int x;", cflags: tuple[str, ...] = ("-DX=1",)) -> dict:
    bpf_dir = tmp_path / "bpf"
    bpf_dir.mkdir(exist_ok=True)
    if not (bpf_dir / "netpath.h").exists():
        (bpf_dir / "netpath.h").write_text("#define A 1\n")
    return progcache.key(text, list(cflags), "shim", "6.18.0", bpf_dir)


def entry(cdir: Path, k: dict) -> Path:
    return cdir / progcache.SUBDIR / progcache.entry_name("prog", k)


def test_a_stored_build_loads_back_and_lives_in_a_private_directory(tmp_path, cdir):
    k = a_key(tmp_path)
    assert progcache.store(k, a_build())
    assert progcache.load(k) == (a_build(), "")
    assert stat.S_IMODE((cdir / progcache.SUBDIR).stat().st_mode) == 0o700
    assert stat.S_IMODE(entry(cdir, k).stat().st_mode) == 0o600


def test_the_key_follows_the_source_the_flags_the_headers_and_the_kernel(tmp_path):
    k = a_key(tmp_path)
    assert a_key(tmp_path, text="int y;") != k
    assert a_key(tmp_path, cflags=("-DX=2",)) != k
    (tmp_path / "bpf" / "netpath.h").write_text("#define A 2\n")  # an included header changed
    assert a_key(tmp_path) != k
    assert progcache.key("int x;", ["-DX=1"], "kernel", "6.18.0", tmp_path / "bpf")["headers"] == "kernel"
    assert {"kernel", "kernel_version", "kernel_build", "bcc"} <= set(k)


def test_a_changed_source_misses_instead_of_loading_the_old_build(tmp_path):
    progcache.store(a_key(tmp_path), a_build())
    assert progcache.load(a_key(tmp_path, text="int changed;")) == (None, "")


def _refused_and_removed(k: dict, path: Path, why: str) -> None:
    build, reason = progcache.load(k)
    assert build is None and why in reason
    assert not path.exists() or path.is_dir()
    assert progcache.load(k) == (None, "")  # a miss now: the caller rebuilds and stores afresh


def test_a_tampered_build_is_refused_and_removed(tmp_path, cdir):
    k = a_key(tmp_path)
    progcache.store(k, a_build())
    path = entry(cdir, k)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b'"GPL"', b'"BSD"'))
    _refused_and_removed(k, path, "checksum")


def test_a_truncated_entry_is_refused(tmp_path, cdir):
    k = a_key(tmp_path)
    progcache.store(k, a_build())
    path = entry(cdir, k)
    path.write_bytes(path.read_bytes()[:-10])
    _refused_and_removed(k, path, "checksum")


def test_an_entry_made_for_another_key_under_this_name_is_refused(tmp_path, cdir):
    k, other = a_key(tmp_path), a_key(tmp_path, text="int other;")
    progcache.store(other, a_build())
    entry(cdir, other).rename(entry(cdir, k))
    _refused_and_removed(k, entry(cdir, k), "another kernel")


def test_an_entry_open_to_others_is_refused(tmp_path, cdir):
    k = a_key(tmp_path)
    progcache.store(k, a_build())
    entry(cdir, k).chmod(0o644)
    _refused_and_removed(k, entry(cdir, k), "mode 0644")


def test_a_planted_symlink_is_refused(tmp_path, cdir):
    k = a_key(tmp_path)
    progcache.store(k, a_build())
    real = tmp_path / "elsewhere"
    entry(cdir, k).rename(real)
    entry(cdir, k).symlink_to(real)
    _refused_and_removed(k, entry(cdir, k), "symlink")


def test_a_hard_linked_entry_is_refused(tmp_path, cdir):
    k = a_key(tmp_path)
    progcache.store(k, a_build())
    os.link(entry(cdir, k), tmp_path / "second-name")
    _refused_and_removed(k, entry(cdir, k), "hard-linked")


@needs_root
def test_a_foreign_entry_is_refused(tmp_path, cdir):
    k = a_key(tmp_path)
    progcache.store(k, a_build())
    os.chown(entry(cdir, k), 65534, 65534)
    _refused_and_removed(k, entry(cdir, k), "owned by uid 65534")


@needs_root
def test_a_foreign_program_directory_is_not_used(tmp_path, cdir):
    k = a_key(tmp_path)
    progcache.store(k, a_build())
    os.chown(cdir / progcache.SUBDIR, 65534, 65534)
    assert progcache.load(k) == (None, "")
    assert not progcache.store(k, a_build())


def test_an_opened_up_program_directory_is_closed_again(tmp_path, cdir):
    k = a_key(tmp_path)
    progcache.store(k, a_build())
    (cdir / progcache.SUBDIR).chmod(0o777)
    assert progcache.load(k)[0] == a_build()
    assert stat.S_IMODE((cdir / progcache.SUBDIR).stat().st_mode) == 0o700


def test_no_cache_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("NETPATH_PROGRAM_CACHE", "0")
    k = a_key(tmp_path)
    assert not progcache.store(k, a_build())
    assert progcache.load(k) == (None, "")


# ---------------------------------------------------------------- what a build may hold


def test_map_references_round_trip_through_relocation():
    fn = a_build()["functions"][0]
    assert fn["relocs"] == [[0, 0]]
    code = load.relocate(fn, [42])
    assert struct.unpack_from("<i", code, 4)[0] == 42 and code[16:] == MOV_EXIT


def test_an_fd_that_is_no_map_of_the_program_is_an_error():
    with pytest.raises(ValueError, match="no map"):
        load.unrelocate("f", LD_MAP, {8: 0})


def _mutated(**change) -> dict:
    build = a_build()
    fn = build["functions"][0]
    code = bytearray(load.relocate(fn, [0]))
    if "imm" in change:
        code[4:8] = struct.pack("<i", change["imm"])
    if "stray" in change:  # a second map load the relocations do not mention
        code += LD_MAP
    fn["insns"] = __import__("base64").b64encode(bytes(code)).decode()
    if "reloc" in change:
        fn["relocs"] = change["reloc"]
    if "map_type" in change:
        build["maps"][0]["type"] = change["map_type"]
    return build


@pytest.mark.parametrize("change", [{"imm": 5}, {"stray": True}, {"reloc": [[0, 3]]}, {"reloc": [[2, 0]]},
                                    {"reloc": []}, {"map_type": 99}])
def test_a_build_that_could_reach_beyond_its_own_maps_is_malformed(change):
    assert progcache.valid_build(a_build())
    assert not progcache.valid_build(_mutated(**change))


def test_a_well_checksummed_but_malformed_build_is_refused(tmp_path, cdir):
    k = a_key(tmp_path)
    progcache.store_payload("prog", k, json.dumps(_mutated(stray=True)).encode())
    build, why = progcache.load(k)
    assert build is None and "malformed" in why and not entry(cdir, k).exists()


# ---------------------------------------------------------------- the symbol index


TEXT = "ffffffff81000000 T _stext\nffffffff81000100 t helper.isra.0\nffffffff81000200 T kfree_skb_reason\n"


def test_the_symbol_index_packs_and_unpacks_to_the_same_answers():
    syms = kallsyms.Kallsyms.parse(TEXT)
    packed = kallsyms.unpack_index(syms.pack_index())
    assert packed is not None
    again = kallsyms.Kallsyms(lambda: b"", packed)
    assert again.symbolize(0xFFFFFFFF81000204) == syms.symbolize(0xFFFFFFFF81000204) == "kfree_skb_reason+0x4"


def test_an_inconsistent_symbol_index_is_refused():
    good = kallsyms.Kallsyms.parse(TEXT).pack_index()
    head, _, rest = good.partition(b"\n")
    assert kallsyms.unpack_index(head + b"\n" + rest[:-1]) is None  # short
    addrs = array("Q", [2, 1, 3])  # unsorted
    assert kallsyms.unpack_index(head + b"\n" + addrs.tobytes() + rest[24:]) is None
    assert kallsyms.unpack_index(b"junk\n" + rest) is None


def test_the_symbol_index_is_cached_per_boot(tmp_path, monkeypatch):
    path = tmp_path / "kallsyms"
    path.write_text(TEXT)
    first = kallsyms.Kallsyms.load(path, cached=True)
    path.write_text("")  # a second load must come from the cache, not the file
    second = kallsyms.Kallsyms.load(path, cached=True)
    assert second.symbolize(0xFFFFFFFF81000104) == first.symbolize(0xFFFFFFFF81000104) == "helper.isra.0+0x4"
    monkeypatch.setattr(kallsyms, "cache_key", lambda: {"format": "1", "boot": "another boot"})
    assert not kallsyms.Kallsyms.load(path, cached=True).has_addresses  # another boot: read afresh
