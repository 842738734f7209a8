"""netpath/bpfload without a kernel: per-CPU value layout, relocation of every map reference, the switch
from batched map reads to per-key reads (over a fake libbpf), callbacks across libbpf, and the exit-3
error when libbpf.so.1 is missing."""

from __future__ import annotations

import ctypes
import struct

import pytest

from netpath.bpfload import libbpf, load, read
from netpath.errors import MissingCapability

# ---------------------------------------------------------------- per-CPU values


@pytest.mark.parametrize(("value_size", "stride"), [(1, 8), (4, 8), (8, 8), (12, 16), (40, 40), (440, 440),
                                                     (4096, 4096), (4100, 4104)])
def test_a_per_cpu_value_is_rounded_up_to_8_bytes_per_cpu(value_size, stride):
    m = load.Map("m", libbpf.MAP_TYPE_PERCPU_ARRAY, 4, value_size, 1, 0, fd=99, ncpu=3)
    assert (m.stride, m.slot) == (stride, 3 * stride)
    raw = b"".join(bytes([cpu + 1]) * value_size + bytes(stride - value_size) for cpu in range(3))
    assert m.split(raw) == [bytes([cpu + 1]) * value_size for cpu in range(3)]


def test_a_plain_map_has_one_value_of_its_own_size():
    m = load.Map("m", libbpf.MAP_TYPE_HASH, 8, 12, 16, 0, fd=99)
    assert (m.ncpu, m.stride, m.slot) == (1, 12, 12) and m.split(b"x" * 12) == [b"x" * 12]


# ---------------------------------------------------------------- relocation


def ld_map(dst: int, fd: int) -> bytes:
    return struct.pack("<BBhi", 0x18, (load.PSEUDO_MAP_FD << 4) | dst, 0, fd) + bytes(8)


LD_CONST = struct.pack("<BBhi", 0x18, 2, 0, 0x1234) + struct.pack("<BBhi", 0, 0, 0, 0x18)  # a 64-bit constant
MOV = struct.pack("<BBhi", 0xB7, 0, 0, 0x18)  # r0 = 0x18: an immediate that looks like the opcode
EXIT = struct.pack("<BBhi", 0x95, 0, 0, 0)


def test_every_map_reference_is_recorded_and_pointed_at_its_map():
    code = ld_map(1, 7) + MOV + LD_CONST + ld_map(2, 9) + ld_map(3, 7) + EXIT
    fn = load.unrelocate("f", code, {7: 0, 9: 1})
    # instructions 0, 5 and 7 load maps (each ld_imm64 takes two slots); the constant at 3 is left alone
    assert fn["relocs"] == [[0, 0], [5, 1], [7, 0]]
    out = load.relocate(fn, [31, 42])
    assert [struct.unpack_from("<i", out, i * 8 + 4)[0] for i in (0, 5, 7)] == [31, 42, 31]
    assert out[8:8 * 5] == code[8:8 * 5] and out[-8:] == EXIT  # nothing else moved
    assert load.relocate(load.unrelocate("f", out, {31: 0, 42: 1}), [7, 9]) == code


def test_a_second_slot_is_never_read_as_an_instruction():
    # the second slot of a constant load whose bytes look like another ld_imm64 of a map
    tricky = struct.pack("<BBhi", 0x18, 0, 0, 0) + ld_map(1, 5)[:8]
    fn = load.unrelocate("f", tricky + EXIT, {})
    assert fn["relocs"] == []


def test_other_pseudo_loads_are_refused():
    with pytest.raises(ValueError, match="kind 2"):
        load.unrelocate("f", struct.pack("<BBhi", 0x18, 2 << 4, 0, 3) + bytes(8), {})


# ---------------------------------------------------------------- batched reads and the per-key fallback


class FakeKernel:
    """libbpf's map calls over a dict; `batch` says what a batch call gets: 'ok', or an errno."""

    def __init__(self, m: load.Map, entries: dict[bytes, bytes], batch: str | int = "ok",
                 bucket: int = 1) -> None:
        self.m, self.entries, self.batch, self.bucket = m, dict(entries), batch, bucket
        self.calls: list[str] = []

    def map_batch(self, fd, delete, in_batch, out_batch, keys, values, count) -> int:
        self.calls.append("batch")
        if isinstance(self.batch, int):
            return -self.batch
        ordered = sorted(self.entries)
        start = struct.unpack_from("<I", in_batch.raw)[0] if in_batch is not None else 0
        if count.value < self.bucket:  # a bucket larger than the caller's room
            return -libbpf.ENOSPC
        chunk = ordered[start:start + count.value]
        for i, k in enumerate(chunk):
            ctypes.memmove(ctypes.addressof(keys) + i * self.m.key_size, k, self.m.key_size)
            ctypes.memmove(ctypes.addressof(values) + i * self.m.slot, self.entries[k], self.m.slot)
            if delete:
                del self.entries[k]
        count.value = len(chunk)
        end = start + len(chunk)
        ctypes.memmove(out_batch, struct.pack("<I", 0 if delete else end), 4)
        return -libbpf.ENOENT if end >= len(ordered) else 0

    def map_next_key(self, fd, key, out) -> int:
        self.calls.append("next")
        later = sorted(k for k in self.entries if key is None or k > key)
        if not later:
            return -libbpf.ENOENT
        ctypes.memmove(out, later[0], self.m.key_size)
        return 0

    def map_lookup(self, fd, key, value) -> int:
        self.calls.append("lookup")
        if key not in self.entries:
            return -libbpf.ENOENT
        ctypes.memmove(value, self.entries[key], self.m.slot)
        return 0

    def map_delete(self, fd, key) -> int:
        self.calls.append("delete")
        return 0 if self.entries.pop(key, None) is not None else -libbpf.ENOENT


def fake(monkeypatch, n: int, **kw) -> tuple[load.Map, FakeKernel, dict[bytes, bytes]]:
    m = load.Map("drops", libbpf.MAP_TYPE_PERCPU_HASH, 4, 8, 4096, 0, fd=99, ncpu=2)
    entries = {struct.pack("<I", i): struct.pack("<QQ", i, 1000 + i) for i in range(n)}
    k = FakeKernel(m, entries, **kw)
    for name in ("map_batch", "map_next_key", "map_lookup", "map_delete"):
        monkeypatch.setattr(libbpf, name, getattr(k, name))
    return m, k, entries


def test_a_map_is_read_in_batches_of_chunk_elements(monkeypatch):
    m, k, entries = fake(monkeypatch, 600)
    assert read.items(m) == entries
    assert k.calls == ["batch"] * 3 and m.batch_ok  # 256 + 256 + 88
    assert read.percpu_items(m)[struct.pack("<I", 5)] == [struct.pack("<Q", 5), struct.pack("<Q", 1005)]


def test_an_idle_map_costs_one_call(monkeypatch):
    m, k, _ = fake(monkeypatch, 0)
    assert read.items(m) == {} and k.calls == ["batch"]


def test_a_bucket_larger_than_a_chunk_doubles_the_chunk(monkeypatch):
    m, k, entries = fake(monkeypatch, 300, bucket=300)
    assert read.items(m) == entries and k.calls == ["batch", "batch"]


@pytest.mark.parametrize("refusal", [libbpf.EINVAL, libbpf.ENOTSUPP, libbpf.EOPNOTSUPP])
def test_a_refused_batch_falls_back_to_per_key_reads_and_stays_there(monkeypatch, refusal):
    m, k, entries = fake(monkeypatch, 3, batch=refusal)
    assert read.items(m) == entries and not m.batch_ok
    assert k.calls == ["batch", "next", "next", "next", "next", "lookup", "lookup", "lookup"]
    k.calls.clear()
    assert read.items(m) == entries and "batch" not in k.calls  # never asked again


def test_another_batch_error_is_an_error_not_a_fallback(monkeypatch):
    m, _k, _ = fake(monkeypatch, 3, batch=1)  # EPERM
    with pytest.raises(OSError, match="batch read of drops"):
        read.items(m)
    assert m.batch_ok


@pytest.mark.parametrize("batch", ["ok", libbpf.EINVAL])
def test_read_and_delete_empties_the_map_either_way(monkeypatch, batch):
    m, k, entries = fake(monkeypatch, 40, batch=batch)
    assert read.items(m, delete=True) == entries and k.entries == {}


# ---------------------------------------------------------------- libbpf itself


def test_a_callback_exception_is_raised_after_libbpf_returns():
    cb = libbpf.Callbacks()

    def boom(_x: int) -> int:
        raise RuntimeError("decode failed")

    fn = cb.guard(boom, -1)
    assert fn(1) == -1 and fn(2) == -1  # libbpf is told to stop; later records are not handled
    with pytest.raises(RuntimeError, match="decode failed"):
        cb.reraise()
    cb.reraise()  # raised once


def test_a_missing_libbpf_is_exit_3_naming_the_package(monkeypatch):
    monkeypatch.setattr(libbpf, "_LIB", [])
    monkeypatch.setattr(libbpf, "SONAME", "libbpf.so.0-not-here")
    with pytest.raises(MissingCapability, match="apt-get install libbpf1"):
        libbpf.lib()


def test_every_function_netpath_calls_is_in_the_installed_libbpf():
    try:
        handle = libbpf.lib()
    except MissingCapability:
        pytest.skip("libbpf.so.1 is not installed here (Debian libbpf1)")
    for name in libbpf.SIGNATURES:
        assert getattr(handle, name).restype == libbpf.SIGNATURES[name][1]


def test_the_opts_structs_have_libbpf_1_1_sizes():
    # sizeof() of each struct in libbpf 1.1's bpf.h on LP64: libbpf rejects a larger sz with non-zero tail
    assert ctypes.sizeof(libbpf.MapCreateOpts) == 48
    assert ctypes.sizeof(libbpf.ProgLoadOpts) == 104
    assert ctypes.sizeof(libbpf.MapBatchOpts) == 24


def test_the_verifier_complaint_is_the_line_before_the_instruction_count():
    log = "0: (79) r1 = *(u64 *)(r1 +0)\nR1 invalid mem access 'scalar'\nprocessed 2 insns (limit 1000000)\n"
    assert load.verifier_complaint(log) == "R1 invalid mem access 'scalar'"
    assert load.verifier_complaint("only line\n") == "only line"
    assert load.verifier_complaint("") == ""
