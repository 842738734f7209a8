"""drops --pcap without root: the program it builds, the ring records it decodes, the options and the file."""

from __future__ import annotations

import os
import stat

import pytest
from fake_bpf import U64, FakeProgram, loader
from test_drops_program import OFFSETS
from test_sessions import drop_facts, quiet_machine, reasons  # noqa: F401  (fixtures)

from netpath import bpf, contract
from netpath.cli import main as main_mod
from netpath.cli import pcap_out
from netpath.collect import drops as drops_mod
from netpath.errors import EXIT_USAGE, BadInput, MissingCapability
from netpath.model import CapturedPacket
from netpath.render import records

PCAP_OFFSETS = {**OFFSETS, "OFF_SKB_DATA": 200, "OFF_SKB_TAIL": 184, "OFF_SKB_MAC_HEADER": 182,
                "SIZE_SKB_HEAD": 8, "SIZE_SKB_DATA": 8, "SIZE_SKB_LEN": 4, "SIZE_SKB_TAIL": 4,
                "SIZE_SKB_MAC_HEADER": 2, "SIZE_SKB_NETWORK_HEADER": 2}


def test_capture_c_is_compiled_in_only_with_pcap_and_every_value_is_a_number(drop_facts):  # noqa: F811
    plain = drops_mod.program_source(drops_mod.DropsQuery(), drop_facts, PCAP_OFFSETS)
    assert "capture.c" not in plain.files and "PCAP_SNAPLEN" not in plain.defines
    q = drops_mod.DropsQuery(pcap=drops_mod.PcapQuery(snaplen=128, max_packets=77))
    src = drops_mod.program_source(q, drop_facts, PCAP_OFFSETS)
    assert src.files == ["where.c", "drop_place.c", "capture.c", "drops.c"]  # drops.c calls pcap_capture()
    d = src.defines
    assert (d["PCAP_SNAPLEN"], d["PCAP_MAX"], d["OFF_SKB_MAC_HEADER"], d["OFF_SKB_TAIL"]) == (128, 77, 182, 184)
    pages = d["PCAP_RING_PAGES"]
    assert pages & (pages - 1) == 0  # BPF ring buffers are a power of two pages
    assert pages * d["NP_PAGE_SIZE"] >= contract.PCAP_RING_RECORDS * contract.pcap_record_size(128)
    assert all(type(v) is int for v in d.values())
    src.cflags()  # refuses anything that is not an int


def test_a_kernel_without_the_fields_or_with_another_layout_cannot_capture(drop_facts):  # noqa: F811
    q = drops_mod.DropsQuery(pcap=drops_mod.PcapQuery())
    with pytest.raises(MissingCapability, match="OFF_SKB_MAC_HEADER"):
        drops_mod.program_source(q, drop_facts, {k: v for k, v in PCAP_OFFSETS.items() if k != "OFF_SKB_MAC_HEADER"})
    with pytest.raises(MissingCapability, match="SIZE_SKB_TAIL=8"):
        drops_mod.program_source(q, drop_facts, {**PCAP_OFFSETS, "SIZE_SKB_TAIL": 8})


def test_the_prelude_carries_the_record_layout_and_rate_constants():
    text = contract.c_prelude()
    assert "struct pcap_meta {" in text and "sizeof(struct pcap_meta) == 64" in text
    assert f"#define PCAP_RATE_PER_CPU\t{contract.PCAP_RATE_PER_CPU}" in text
    assert "STAT_PCAP_SENT" in text and "STAT_PCAP_OVER_RATE" in text and "STAT_PCAP_LOST" in text
    capture = (bpf.BPF_DIR / "capture.c").read_text()
    drops_c = (bpf.BPF_DIR / "drops.c").read_text()
    assert "pcap_capture(" in drops_c and "BPF_RINGBUF_OUTPUT(pcap_ring, PCAP_RING_PAGES)" in capture


def stats(matched: int, sent: int = 0, over_cap: int = 0, over_rate: int = 0, lost: int = 0) -> bytes:
    values = dict(hits=matched, matched=matched, pcap_sent=sent, pcap_over_cap=over_cap, pcap_over_rate=over_rate,
                  pcap_lost=lost)
    return b"".join(U64.pack(values.get(name, 0)) for name in (*contract.DROP_STATS, *contract.PCAP_STATS))


def record(data: bytes, ts: int = 1000, linktype: int = contract.LINKTYPE_ETHERNET, snaplen: int = 64,
           length: int | None = None) -> bytes:
    meta = contract.PCAP_META.fmt.pack(ts, 0, 0, 0, 3, 4, 77, length or len(data), len(data), 1, 0x0800, linktype,
                                       17, 4, 0)
    return meta + data.ljust(snaplen, b"\xee")


def test_ring_records_become_packets_and_health_adds_up(drop_facts, monkeypatch):  # noqa: F811
    monkeypatch.setattr(drops_mod.time, "time_ns", lambda: 5_000_000_000_000)
    monkeypatch.setattr(drops_mod.time, "monotonic_ns", lambda: 1_000)
    prog = FakeProgram()
    q = drops_mod.DropsQuery(pcap=drops_mod.PcapQuery(snaplen=64, max_packets=2))
    session = drops_mod.DropsSession(q, drop_facts, drops_mod.bpf.ProgramSource(["where.c"], {}), reasons(),
                                     loader=loader(prog))
    prog.set_array("stats", 0, [stats(0), stats(0)])
    prog.set_array("drop_cache", 0, [bytes((contract.DROP_WHERE.size + 8) * contract.DROP_CACHE_SLOTS)] * 2)
    session.start()
    assert "pcap_ring" in prog.perf
    prog.send("pcap_ring", record(b"\x01" * 42, ts=2_000, length=1514))
    prog.send("pcap_ring", record(b"\x02" * 10))
    prog.send("pcap_ring", record(b"\x03" * 10))  # past --pcap-max: the kernel's cap should not let it through
    session.wait(0)
    events = session.events()
    assert [type(e) for e in events] == [CapturedPacket, CapturedPacket]
    first = events[0]
    assert (first.ts_ns, first.orig_len, first.data, first.linktype, first.snaplen, first.cpu) == (
        5_000_000_000_000 - 1_000 + 2_000, 1514, b"\x01" * 42, 1, 64, 1)
    assert (first.row.reason, first.row.ifindex, first.row.netns, first.row.iface, first.row.proto) == (
        "NO_SOCKET", 4, 77, "veth1", "udp")
    assert first.row.owner is None and first.row.saddr is None
    # the kernel: 10 matched, 3 sent, 4 over the cap, 2 over the rate, 1 lost
    prog.set_array("stats", 0, [stats(6, 2, 4, 0, 1), stats(4, 1, 0, 2, 0)])
    snap = session.interval(10**9)
    assert (snap.health.pcap.written, snap.health.pcap.skipped, snap.health.pcap.lost) == (2, 7, 1)
    assert snap.health.pcap.written + snap.health.pcap.skipped + snap.health.pcap.lost == snap.health.matched
    body = records.interval(snap, 1)["health"]
    assert (body["pcap_written"], body["pcap_skipped"], body["pcap_lost"]) == (2, 7, 1)
    second = session.interval(2 * 10**9)
    assert (second.health.pcap.written, second.health.pcap.skipped, second.health.pcap.lost) == (0, 0, 0)
    total = session.summary(2 * 10**9).health.pcap
    assert (total.written, total.skipped, total.lost) == (2, 7, 1)


def test_without_pcap_the_health_json_is_unchanged(drop_facts):  # noqa: F811
    prog = FakeProgram()
    session = drops_mod.DropsSession(drops_mod.DropsQuery(), drop_facts, drops_mod.bpf.ProgramSource(["where.c"], {}),
                                     reasons(), loader=loader(prog))
    prog.set_array("stats", 0, [stats(0), stats(0)])
    prog.set_array("drop_cache", 0, [bytes((contract.DROP_WHERE.size + 8) * contract.DROP_CACHE_SLOTS)] * 2)
    session.start()
    assert "pcap_ring" not in prog.perf
    health = records.summary(session.summary(10**9), "duration", None)["health"]
    assert not any(key.startswith("pcap") for key in health)


# ---------------------------------------------------------------- options and the file


@pytest.fixture
def no_capability(monkeypatch):
    monkeypatch.setattr("netpath.cli.preflight.missing_capability", lambda **_kw: "test: no BPF here, run it with sudo")


def run(capsys, argv: list[str]) -> tuple[int, str]:
    rc = main_mod.main(argv)
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    return rc, err


@pytest.mark.parametrize(("argv", "needle"), [
    (["--pcap", "-", "--json"], "--json and --pcap - both want stdout"),
    (["--snaplen", "64"], "--snaplen only apply with --pcap"),
    (["--pcap-max", "5", "--force"], "--pcap-max, --force only apply with --pcap"),
    (["--pcap", "x.pcapng", "--snaplen", "8"], "8"),
    (["--pcap", "x.pcapng", "--snaplen", "9217"], "9217"),
    (["--pcap", "x.pcapng", "--pcap-max", "0"], "0"),
    (["--pcap", "x.pcapng", "--pcap-max", "1e3"], "1e3"),
    (["--pcap", ""], "--pcap ''"),
    (["--pcap", "/nonexistent-dir/x.pcapng"], "no directory '/nonexistent-dir'"),
])
def test_pcap_bad_usage_is_exit_2_naming_it(capsys, no_capability, argv, needle):
    rc, err = run(capsys, ["drops", *argv])
    assert rc == EXIT_USAGE and err.count("\n") == 1 and needle in err, err


def test_an_existing_file_needs_force_and_a_symlink_is_always_refused(capsys, no_capability, tmp_path):
    existing = tmp_path / "old.pcapng"
    existing.write_bytes(b"keep")
    rc, err = run(capsys, ["drops", "--pcap", str(existing)])
    assert rc == EXIT_USAGE and "exists: add --force" in err
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    link = tmp_path / "link.pcapng"
    link.symlink_to(target)
    for extra in ([], ["--force"]):
        rc, err = run(capsys, ["drops", "--pcap", str(link), *extra])
        assert rc == EXIT_USAGE and "symbolic link" in err
    dangling = tmp_path / "dangling.pcapng"
    dangling.symlink_to(tmp_path / "nowhere")
    rc, err = run(capsys, ["drops", "--pcap", str(dangling), "--force"])
    assert rc == EXIT_USAGE and "symbolic link" in err
    assert target.read_bytes() == b"precious" and not (tmp_path / "nowhere").exists()
    rc, err = run(capsys, ["drops", "--pcap", str(existing), "--force"])
    assert rc == 3 and "sudo" in err  # past every check, stopped at the (patched) capability check


def test_files_are_created_0600_whatever_the_umask_and_replaced_by_rename(tmp_path):
    old = os.umask(0)
    try:
        new = tmp_path / "new.pcapng"
        with pcap_out.open_file(str(new), force=False) as f:
            f.write(b"x")
        assert stat.S_IMODE(os.stat(new).st_mode) == 0o600
        replaced = tmp_path / "old.pcapng"
        replaced.write_bytes(b"old")
        os.chmod(replaced, 0o644)
        before = os.stat(replaced).st_ino
        with pytest.raises(BadInput, match="exists"):
            pcap_out.open_file(str(replaced), force=False)
        with pcap_out.open_file(str(replaced), force=True) as f:
            f.write(b"new")
        after = os.stat(replaced)
        assert replaced.read_bytes() == b"new" and stat.S_IMODE(after.st_mode) == 0o600 and after.st_ino != before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["new.pcapng", "old.pcapng"]  # no temp file left
        link = tmp_path / "link"
        link.symlink_to(replaced)
        for force in (False, True):
            with pytest.raises(BadInput, match="symbolic link"):
                pcap_out.open_file(str(link), force=force)
        assert replaced.read_bytes() == b"new"
    finally:
        os.umask(old)
