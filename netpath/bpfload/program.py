"""Program: one loaded build, the object sessions hold (maps as raw bytes, attach, poll, close).

compile_program() is the one load path: production, the build matrix and every test get a build (from
the cache or BCC's child) and load it here, through load.py and libbpf. tests/unit/fake_bpf.py is this
class's stand-in in unit tests.
"""

from __future__ import annotations

import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netpath.bpfload import build, cache, libbpf, load, read
from netpath.errors import MissingCapability
from netpath.kernel import bpfstats, limits
from netpath.kernel.facts import KernelFacts

EventHandler = Callable[[bytes], None]
LostHandler = Callable[[int], None]

AUTO_PREFIX = "raw_tracepoint__"
# BCC names a program after its function without the attach prefix (bpftool and the bench read these)
_NAME_PREFIXES = ("raw_tracepoint__", "tracepoint__", "kprobe__", "kretprobe__")
_INDEX = struct.Struct("<I")
_ADDR = struct.Struct("<Q")
PERF_PAGES = 64


def prog_name(fn: str) -> str:
    return next((fn[len(p):] for p in _NAME_PREFIXES if fn.startswith(p)), fn)[:15]


class Program:
    """A loaded BPF program, from a build (cache.valid_build's shape). Keys and values cross this boundary
    as raw bytes. With `attach` (a run), every raw_tracepoint__ function is loaded and attached at once; the
    build matrix passes attach=False and loads each function with load_function()."""

    def __init__(self, built: dict[str, Any], origin: str = "compiled", attach: bool = True) -> None:
        self.origin = origin  # "cache", or "compiled" and why a cached build was refused
        self.tp_btf_refused = ""  # why tp_btf programs were built as raw tracepoints instead
        self._license = str(built["license"])
        self._kern_version = int(built["kern_version"])
        self._maps: dict[str, load.Map] = {}
        self._code: dict[str, bytes] = {}
        self._progs: dict[str, int] = {}  # function -> program fd
        self._links: dict[str, list[int]] = {}  # function -> link (and perf event) fds: closing detaches
        self._tp_btf: list[str] = []
        self._perf: list[libbpf.PerfBuffer] = []
        self._rings: list[libbpf.RingBuffer] = []
        try:
            fds = []
            for m in built["maps"]:
                made = load.Map(m["name"], m["type"], m["key_size"], m["value_size"], m["max_entries"], m["flags"])
                self._maps[m["name"]] = made
                fds.append(made.fd)
            for fn in built["functions"]:
                self._code[fn["name"]] = load.relocate(fn, fds)
            for name in self._code if attach else ():
                if name.startswith(AUTO_PREFIX):
                    self._attach_raw_tracepoint(name, name[len(AUTO_PREFIX):])
        except OSError as exc:
            self.close()
            raise MissingCapability(f"could not load the BPF program: {exc.strerror or exc}") from None
        except MissingCapability:
            self.close()
            raise

    @property
    def functions(self) -> tuple[str, ...]:
        return tuple(self._code)

    def load_function(self, fn: str, prog_type: int, attach_type: int = 0, btf_id: int = 0) -> int:
        """Load `fn` (once) as `prog_type`; MissingCapability with the verifier's complaint when refused."""
        if fn in self._progs:
            return self._progs[fn]
        code = self._code.get(fn)
        if code is None:
            raise MissingCapability(f"no BPF function {fn} in the compiled program")
        try:
            fd = load.load_program(prog_type, prog_name(fn), self._license, code,
                                   0 if attach_type else self._kern_version, attach_type, btf_id)
        except OSError as exc:
            raise MissingCapability(f"could not load the BPF program: {fn}: {exc.strerror or exc}") from None
        self._progs[fn] = fd
        return fd

    def _attach_raw_tracepoint(self, fn: str, tracepoint: str) -> None:
        prog_fd = self.load_function(fn, libbpf.PROG_TYPE_RAW_TRACEPOINT)
        try:
            link = load.attach_raw_tracepoint(prog_fd, tracepoint)
        except OSError as exc:
            raise MissingCapability(f"could not attach raw tracepoint {tracepoint}: {os.strerror(exc.errno or 0)}"
                                    ) from None
        self._links.setdefault(fn, []).append(link)

    @property
    def tp_btf(self) -> tuple[str, ...]:
        """The functions running as BTF-typed raw tracepoints."""
        return tuple(self._tp_btf)

    def attach_tp_btf(self, fn: str, tracepoint: str, btf_id: int) -> None:
        """Load `fn` as BPF_PROG_TYPE_TRACING / BPF_TRACE_RAW_TP with the tracepoint's BTF id, then attach
        it. Raises OSError with the kernel's answer."""
        if fn not in self._code:
            raise OSError(0, f"no BPF function {fn} in the compiled program")
        if btf_id <= 0:
            raise OSError(0, f"no btf_trace_{tracepoint} in this kernel's BTF")
        try:
            prog_fd = load.load_program(libbpf.PROG_TYPE_TRACING, prog_name(fn), self._license, self._code[fn], 0,
                                        libbpf.TRACE_RAW_TP, btf_id)
        except OSError as exc:
            raise OSError(exc.errno, f"tp_btf {tracepoint}: {exc.strerror}") from None
        try:
            link_fd = load.attach_tp_btf(prog_fd, tracepoint)
        except OSError:
            os.close(prog_fd)
            raise
        self._progs[fn] = prog_fd
        self._links.setdefault(fn, []).append(link_fd)
        self._tp_btf.append(fn)

    def attach_kprobe(self, symbol: str, fn_name: str, is_return: bool = False) -> None:
        """Raises MissingCapability with the kernel's refusal when the probe does not attach."""
        prog_fd = self.load_function(fn_name, libbpf.PROG_TYPE_KPROBE)
        try:
            link, event = load.attach_kprobe(prog_fd, symbol, is_return)
        except OSError as exc:
            why = limits.advice() if limits.too_many_files(exc) else str(exc.strerror or exc)
            raise MissingCapability(why) from None
        self._links.setdefault(fn_name, []).extend((link, event))

    # ------------------------------------------------------------ maps

    def _map(self, name: str) -> load.Map:
        return self._maps[name]

    def percpu_items(self, name: str) -> dict[bytes, list[bytes]]:
        """A per-CPU hash: key -> one value per possible CPU (read in batches)."""
        return read.percpu_items(self._map(name))

    def percpu_pop(self, name: str) -> dict[bytes, list[bytes]]:
        """Like percpu_items, each element removed as it is read (lookup_and_delete_batch)."""
        return read.percpu_items(self._map(name), delete=True)

    def percpu_array(self, name: str) -> dict[int, list[bytes]]:
        """Every slot of a per-CPU array, a value per possible CPU each, in one batched read."""
        return {_INDEX.unpack(k)[0]: v for k, v in read.percpu_items(self._map(name)).items()}

    def percpu_value(self, name: str, index: int) -> list[bytes]:
        """One slot of a per-CPU array, a value per possible CPU."""
        values = self._map(name).lookup_percpu(_INDEX.pack(index))
        if values is None:
            raise KeyError(index)
        return values

    def percpu_zero(self, name: str, index: int) -> None:
        self._map(name).zero(_INDEX.pack(index))

    def lookup(self, name: str, key: bytes) -> bytes | None:
        return self._map(name).lookup(key)

    def update(self, name: str, key: bytes, value: bytes) -> None:
        self._map(name).update(key, value)

    def delete(self, name: str, keys: list[bytes]) -> None:
        m = self._map(name)
        for key in keys:
            m.delete(key)  # gone already (LRU, or another reader): fine

    def clear(self, name: str) -> None:
        self._map(name).clear()

    def stack(self, name: str, stack_id: int) -> list[int]:
        raw = self._map(name).lookup(_INDEX.pack(stack_id & 0xFFFFFFFF))
        if raw is None:
            return []
        out = []
        for (addr,) in _ADDR.iter_unpack(raw[:len(raw) // 8 * 8]):
            if not addr:
                break
            out.append(addr)
        return out

    # ------------------------------------------------------------ rings

    def open_perf_buffer(self, name: str, on_event: EventHandler, on_lost: LostHandler) -> None:
        try:
            self._perf.append(libbpf.PerfBuffer(self._map(name).fd, PERF_PAGES, on_event, on_lost))
        except OSError as exc:
            raise MissingCapability(f"could not open the perf buffer {name}: {exc.strerror or exc}") from None

    def open_ring_buffer(self, name: str, on_event: EventHandler) -> None:
        """A BPF ring buffer drained at every poll. Its records are submitted without a wakeup (the
        program's choice: a wakeup per record costs the traffic ~1.6 us), so poll() drains it on
        netpath's own clock rather than waiting for it."""
        try:
            self._rings.append(libbpf.RingBuffer(self._map(name).fd, on_event))
        except OSError as exc:
            raise MissingCapability(f"could not map the ring buffer {name}: {exc.strerror or exc}") from None

    def poll(self, timeout_s: float) -> None:
        """Deliver pending perf events (and their losses) and ring records, or just wait."""
        timeout_ms = max(int(timeout_s * 1000), 0)
        if self._perf:
            self._perf[0].poll(timeout_ms)  # wakes on the first ring with data, or at the timeout
            for buf in self._perf:
                buf.consume()
        elif timeout_s > 0:
            time.sleep(timeout_s)
        for ring in self._rings:
            ring.consume()

    def run_stats(self) -> dict[str, tuple[int, int]]:
        """(runs, ns in the program) per loaded program, when kernel.bpf_stats_enabled=1; else empty."""
        if not bpfstats.enabled():
            return {}
        out: dict[str, tuple[int, int]] = {}
        for name, fd in self._progs.items():
            try:
                stats = bpfstats.parse_fdinfo(Path(f"/proc/self/fdinfo/{fd}").read_text())
            except OSError:
                continue
            if stats is not None:
                out[name.removeprefix(AUTO_PREFIX)] = stats
        return out

    def close(self) -> None:
        for buf in self._perf:
            buf.close()
        self._perf.clear()
        for ring in self._rings:
            ring.close()
        self._rings.clear()
        for links in self._links.values():
            for fd in links:
                os.close(fd)  # detaches
        self._links.clear()
        for fd in self._progs.values():
            os.close(fd)
        self._progs.clear()
        self._tp_btf.clear()
        for m in self._maps.values():
            m.close()
        self._maps.clear()


# ---------------------------------------------------------------- the load path


def compile_program(source: build.ProgramSource, facts: KernelFacts) -> Program:
    """Build (or take from the cache) and load; every raw_tracepoint__ function is attached.

    The source's tp_btf functions are loaded here as BTF-typed raw tracepoints, reading packet bytes with
    plain loads where the source can and this kernel's verifier allows it (TP_BTF_PKT); if this kernel
    refuses a typed build, the source is built again as plain raw tracepoints (Program.tp_btf_refused
    says why)."""
    if not source.tp_btf:
        return _compile(source, facts)
    if source.packet_loads and load.tp_btf_packet_loads(facts.btf_path, source.defines.get("OFF_SKB_HEAD", -1)):
        try:
            return _typed(source.with_packet_loads(), facts)
        except (MissingCapability, OSError):
            pass  # the verifier took the test load but not this program: the probe-read build next
    try:
        return _typed(source, facts)
    except (MissingCapability, OSError) as exc:  # the typed build did not load or attach here: the raw one may
        fallback = _compile(source.without_tp_btf(), facts)
        fallback.tp_btf_refused = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        return fallback


def _typed(source: build.ProgramSource, facts: KernelFacts) -> Program:
    """The typed build loaded and its tp_btf functions attached; MissingCapability (load) or OSError (attach)."""
    prog = _compile(source, facts)
    try:
        ids = load.tp_btf_ids(facts.btf_path, tuple(source.tp_btf.values()))
        for fn, tp in source.tp_btf.items():
            prog.attach_tp_btf(fn, tp, ids[tp])
    except OSError:
        prog.close()
        raise
    return prog


def _compile(source: build.ProgramSource, facts: KernelFacts) -> Program:
    """The program built for `source` on this kernel: from the trusted cache when this kernel, source,
    flags and BCC were seen before, else compiled in a short-lived child. A build enters the cache only
    once this kernel has loaded it."""
    key = cache.key(source.text(), source.cflags(), build.headers_mode(facts), facts.release, build.BPF_DIR)
    built, refused = cache.load(key)
    if built is not None:
        try:
            return _debug_origin(Program(built, "cache"))
        except MissingCapability:  # the kernel refuses what it once took: forget it, build afresh
            cache.discard("prog", key)
            refused = "the kernel refused the cached build"
    built = build.build_in_child(source, facts)
    prog = _debug_origin(Program(built, f"compiled ({refused})" if refused else "compiled"))
    cache.store(key, built)
    return prog


def _debug_origin(prog: Program) -> Program:
    if os.environ.get("NETPATH_DEBUG"):
        peak = build.build_child_peak_kb
        child = f", build process peak RSS {peak[-1] // 1024} MB" if prog.origin != "cache" and peak else ""
        sys.stderr.write(f"netpath: debug: BPF program {prog.origin}{child}\n")
    return prog
