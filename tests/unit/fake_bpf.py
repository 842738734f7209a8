"""A stand-in for netpath.bpf.Program: maps as dicts of raw bytes, perf buffers fed by the test.

It speaks the same byte layouts as the kernel (netpath/contract.py), so a
session's decoding, deltas and loss accounting run exactly as against BCC.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from netpath.errors import MissingCapability

U64 = struct.Struct("<Q")


class FakeProgram:
    def __init__(self, ncpu: int = 2) -> None:
        self.ncpu = ncpu
        self.percpu: dict[str, dict[bytes, list[bytes]]] = {}
        self.arrays: dict[str, dict[int, list[bytes]]] = {}
        self.maps: dict[str, dict[bytes, bytes]] = {}
        self.stacks: dict[int, list[int]] = {}
        self.perf: dict[str, tuple[Callable[[bytes], None], Callable[[int], None]]] = {}
        self.pending: list[tuple[str, bytes | int]] = []  # delivered at the next poll
        self.kprobes: list[tuple[str, str, bool]] = []
        self.refuse: set[str] = set()  # symbols whose kprobe the "kernel" refuses
        self.cleared: list[str] = []
        self.closed = False
        self.polls = 0
        self.runs: dict[str, tuple[int, int]] = {}
        self.tp_btf: tuple[str, ...] = ()  # functions loaded as BTF-typed raw tracepoints
        self.tp_btf_refused = ""

    # the bpf.Program interface
    def percpu_items(self, name: str) -> dict[bytes, list[bytes]]:
        return {k: list(v) for k, v in self.percpu.get(name, {}).items()}

    def percpu_array(self, name: str) -> dict[int, list[bytes]]:
        return {i: list(v) for i, v in self.arrays.get(name, {}).items()}

    def percpu_value(self, name: str, index: int) -> list[bytes]:
        return list(self.arrays[name][index])

    def percpu_zero(self, name: str, index: int) -> None:
        values = self.arrays[name][index]
        self.arrays[name][index] = [bytes(len(v)) for v in values]

    def lookup(self, name: str, key: bytes) -> bytes | None:
        return self.maps.get(name, {}).get(key)

    def update(self, name: str, key: bytes, value: bytes) -> None:
        self.maps.setdefault(name, {})[key] = value

    def delete(self, name: str, keys: list[bytes]) -> None:
        for key in keys:
            self.percpu.get(name, {}).pop(key, None)
            self.maps.get(name, {}).pop(key, None)

    def clear(self, name: str) -> None:
        self.cleared.append(name)
        self.maps.pop(name, None)
        self.percpu.pop(name, None)

    def stack(self, name: str, stack_id: int) -> list[int]:
        return self.stacks[stack_id]

    def attach_kprobe(self, symbol: str, fn_name: str, is_return: bool = False) -> None:
        if symbol in self.refuse:
            raise MissingCapability(f"cannot attach kprobe, probe entry may not exist: {symbol}")
        self.kprobes.append((symbol, fn_name, is_return))

    def open_perf_buffer(self, name: str, on_event: Callable[[bytes], None], on_lost: Callable[[int], None]) -> None:
        self.perf[name] = (on_event, on_lost)

    def open_ring_buffer(self, name: str, on_event: Callable[[bytes], None]) -> None:
        self.perf[name] = (on_event, lambda _n: None)

    def poll(self, timeout_s: float) -> None:
        self.polls += 1
        pending, self.pending = self.pending, []
        for name, item in pending:
            on_event, on_lost = self.perf[name]
            if isinstance(item, int):
                on_lost(item)
            else:
                on_event(item)

    def run_stats(self) -> dict[str, tuple[int, int]]:
        return dict(self.runs)

    def close(self) -> None:
        self.closed = True

    # what a test does to play the kernel
    def set_percpu_u64(self, name: str, key: bytes, per_cpu: list[int]) -> None:
        self.percpu.setdefault(name, {})[key] = [U64.pack(v) for v in per_cpu]

    def set_array(self, name: str, index: int, per_cpu: list[bytes]) -> None:
        self.arrays.setdefault(name, {})[index] = list(per_cpu)

    def set_array_u64(self, name: str, index: int, per_cpu: list[int]) -> None:
        self.set_array(name, index, [U64.pack(v) for v in per_cpu])

    def send(self, name: str, raw: bytes) -> None:
        self.pending.append((name, raw))

    def lose(self, name: str, count: int) -> None:
        self.pending.append((name, count))


def loader(prog: FakeProgram) -> Callable[..., FakeProgram]:
    """A bpf.Loader that hands out `prog` instead of compiling."""
    return lambda _source, _facts: prog
