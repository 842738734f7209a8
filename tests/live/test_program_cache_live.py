"""The compiled-program cache on this kernel: a cached build is loaded and counts exactly what the compiled
one does; a tampered or opened-up entry, and a build for a changed source, are refused and rebuilt."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from netpath_testlib import NetpathRun, free_udp_port, send_udp

from netpath import bpf
from netpath.bpfload import build
from netpath.bpfload import cache as progcache
from netpath.collect import drops as drops_mod
from netpath.kernel import cache
from netpath.kernel.facts import KernelFacts

N = 700


@pytest.fixture
def cdir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("NETPATH_CACHE", str(path))
    monkeypatch.delenv("NETPATH_PROGRAM_CACHE", raising=False)
    monkeypatch.setattr(cache, "SYSTEM_CACHE", tmp_path / "system-cache")
    return path


def closed_port_drops(cdir: Path, port: int) -> tuple[int, str]:
    """`netpath drops` over N datagrams to a closed loopback port: (NO_SOCKET count, where the build came from)."""
    run = NetpathRun(["drops", "--port", str(port), "--json", "--duration", "2"],
                     env={"NETPATH_CACHE": str(cdir), "NETPATH_DEBUG": "1"})
    run.wait_start()
    send_udp("127.0.0.1", port, N)
    rc, _records, err = run.finish()
    assert rc == 0, err
    counted = sum(r["count"] for r in run.summary()["rows"] if r["reason"] == "NO_SOCKET")
    origin = next(line for line in err.splitlines() if "debug: BPF program" in line)
    return counted, origin


def entries(cdir: Path) -> list[Path]:
    return sorted((cdir / progcache.SUBDIR).glob("prog-*"))


def test_a_cached_build_counts_exactly_and_a_tampered_one_is_refused(cdir):
    port = free_udp_port()
    counted, origin = closed_port_drops(cdir, port)
    assert counted == N and origin.startswith("netpath: debug: BPF program compiled"), origin
    counted, origin = closed_port_drops(cdir, port)
    assert counted == N and origin.endswith("BPF program cache"), origin
    [entry] = entries(cdir)
    raw = bytearray(entry.read_bytes())
    at = raw.index(b'"insns": "') + 20
    raw[at] = ord("A") if raw[at] != ord("A") else ord("B")  # one byte of bytecode changed
    entry.write_bytes(bytes(raw))
    counted, origin = closed_port_drops(cdir, port)
    assert counted == N and "compiled (cached prog refused: its checksum does not match" in origin, origin
    counted, origin = closed_port_drops(cdir, port)  # rebuilt and stored afresh
    assert counted == N and origin.endswith("BPF program cache"), origin
    entries(cdir)[0].chmod(0o644)
    counted, origin = closed_port_drops(cdir, port)
    assert counted == N and "refused: mode 0644" in origin, origin


def test_a_changed_source_is_compiled_not_loaded_from_the_cache(cdir, tmp_path, monkeypatch):
    facts = KernelFacts.load("/")
    query = drops_mod.DropsQuery()
    source = drops_mod.program_source(query, facts, bpf.struct_offsets(facts))
    first = bpf.compile_program(source, facts)
    first.close()
    again = bpf.compile_program(source, facts)
    again.close()
    assert (first.origin, again.origin) == ("compiled", "cache")
    changed = tmp_path / "bpf"
    shutil.copytree(build.BPF_DIR, changed)
    with (changed / source.files[-1]).open("a") as f:
        f.write("\n/* a changed source */\n")
    monkeypatch.setattr(build, "BPF_DIR", changed)
    rebuilt = bpf.compile_program(source, facts)
    rebuilt.close()
    assert rebuilt.origin == "compiled"
    assert len(entries(cdir)) == 2  # the old build stays keyed to the old source; it is never loaded for the new
    (changed / "netpath.h").write_text((changed / "netpath.h").read_text() + "\n/* an included header changed */\n")
    header_changed = bpf.compile_program(source, facts)
    header_changed.close()
    assert header_changed.origin == "compiled"
