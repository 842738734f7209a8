"""The only module that imports or touches bcc: compile, attach, read maps, poll, detach.

Every value from the user arrives here as an integer in `defines` (a -D
constant) or as a map entry; C text is never assembled from user input.
`Program` hands maps and perf buffers to collectors as raw bytes, which they
decode with the layouts in netpath/contract.py; tests/unit/fake_bpf.py is
its stand-in for unit tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netpath import contract
from netpath.errors import MissingCapability
from netpath.kernel import bpfstats, caps, shim
from netpath.kernel import offsets as kernel_offsets
from netpath.kernel.facts import KernelFacts
from netpath.memory import trim_heap

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
if not BPF_DIR.is_dir():  # installed as a wheel: the C travels inside the package
    BPF_DIR = Path(__file__).resolve().parent / "bpf"


@dataclass
class ProgramSource:
    """A program to build: C files from bpf/ plus the numbers they are compiled with."""

    files: list[str]
    defines: dict[str, int] = field(default_factory=dict)

    def text(self) -> str:
        """The generated contract first, then the C files: bpf/netpath.h relies on the prelude."""
        return contract.c_prelude() + "\n".join((BPF_DIR / name).read_text() for name in self.files)

    def cflags(self) -> list[str]:
        flags = [f"-I{BPF_DIR}"]
        for name, value in sorted(self.defines.items()):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"define {name} must be an int, got {value!r}")
            flags.append(f"-D{name}={value}")
        return flags


def headers_mode(facts: KernelFacts) -> str:
    """'kernel' when real headers exist (or are forced), else 'shim'."""
    forced = os.environ.get("NETPATH_HEADERS", "")
    if forced in ("kernel", "shim"):
        return forced
    if forced:
        caps.warn_once("NETPATH_HEADERS", f"ignoring NETPATH_HEADERS={forced!r}: expected 'kernel' or 'shim'")
    return "kernel" if facts.has_headers else "shim"


def struct_offsets(facts: KernelFacts) -> dict[str, int]:
    if not facts.has_btf:
        raise MissingCapability(
            f"no BTF at {facts.btf_path}: netpath reads kernel struct layouts from BTF "
            "(a kernel built with CONFIG_DEBUG_INFO_BTF=y)"
        )
    return kernel_offsets.load(facts.btf_path)


def import_bcc() -> Any:
    try:
        import bcc  # only this module touches bcc, and only when asked
    except ImportError as exc:
        raise MissingCapability(
            f"BCC's Python bindings are missing ({exc}): apt-get install python3-bpfcc, or run 'make install'"
        ) from None
    return bcc


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what clang/libbcc print on fd 2 so it never reaches the user's terminal."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def compile_program(source: ProgramSource, facts: KernelFacts) -> Program:
    """Compile and load; BCC auto-attaches RAW_TRACEPOINT_PROBE/TRACEPOINT_PROBE functions."""
    bcc = import_bcc()
    mode = headers_mode(facts)
    env_before = os.environ.get("BCC_KERNEL_SOURCE")
    if mode == "shim":
        root = shim.ensure(kernel_offsets.cache_dir(), facts.release_tuple)
        os.environ["BCC_KERNEL_SOURCE"] = str(root)
    elif env_before is not None and caps.env_path("BCC_KERNEL_SOURCE") is None:
        os.environ.pop("BCC_KERNEL_SOURCE")  # headers another user controls would decide what root compiles
    try:
        with _captured_stderr() as errors:
            try:
                prog = bcc.BPF(text=source.text(), cflags=source.cflags())
                release_compiler_memory()
                return Program(prog)
            except Exception as exc:  # bcc raises bare Exception for compile and attach failures
                failure = exc
    finally:
        if env_before is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = env_before
    if os.environ.get("NETPATH_DEBUG"):
        sys.stderr.write("\n".join(errors) + "\n")
    # clang's first "error:" line, else the verifier's first complaint, else what bcc raised
    detail = next((line for line in errors if "error:" in line), None) or next(
        (line for line in errors if line.strip() and not line.startswith(("bpf: Failed", " "))), str(failure)
    )
    raise MissingCapability(f"could not load the BPF program ({mode} headers): {detail.strip()}")


_COMPILER_LIBS = ("libLLVM", "libclang", "libbcc.so")
_MADV_DONTNEED = 4


def release_compiler_memory() -> None:
    """Give back what the one-time compile left resident: ~90 MB of the process's RSS.

    The compiled program lives in the kernel now. Freed heap goes back via
    malloc_trim; LLVM/clang code pages are clean file-backed pages (r-xp), so
    dropping them is safe: anything that runs that code again faults it back in.
    Writable or relocated (RELRO) mappings are never touched.
    """
    trim_heap()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except (OSError, AttributeError):
        return
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "r-xp" or not any(lib in parts[5] for lib in _COMPILER_LIBS):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        libc.madvise(lo, hi - lo, _MADV_DONTNEED)


Loader = Callable[[ProgramSource, KernelFacts], "Program"]
EventHandler = Callable[[bytes], None]
LostHandler = Callable[[int], None]


def _per_cpu_bytes(values: Any, leaf_type: Any) -> list[bytes]:
    """BCC hands per-CPU scalars back as Python ints and structs as ctypes objects: both become raw bytes."""
    return [bytes(leaf_type(v)) if isinstance(v, int) else bytes(v) for v in values]


class Program:
    """A loaded BPF program. Keys and values cross this boundary as raw bytes."""

    def __init__(self, prog: Any) -> None:
        self._prog = prog
        self._perf = False

    def _table(self, name: str) -> Any:
        return self._prog[name]

    def percpu_items(self, name: str) -> dict[bytes, list[bytes]]:
        """A per-CPU hash: key -> one value per possible CPU."""
        table = self._table(name)
        return {bytes(k): _per_cpu_bytes(values, table.sLeaf) for k, values in table.items()}

    def percpu_value(self, name: str, index: int) -> list[bytes]:
        """One slot of a per-CPU array, a value per possible CPU."""
        table = self._table(name)
        return _per_cpu_bytes(table.getvalue(table.Key(index)), table.sLeaf)

    def percpu_zero(self, name: str, index: int) -> None:
        table = self._table(name)
        table[table.Key(index)] = table.Leaf(*([0] * len(table.getvalue(table.Key(index)))))

    def lookup(self, name: str, key: bytes) -> bytes | None:
        table = self._table(name)
        leaf = table.get(table.Key.from_buffer_copy(key))
        return None if leaf is None else bytes(leaf)

    def update(self, name: str, key: bytes, value: bytes) -> None:
        table = self._table(name)
        table[table.Key.from_buffer_copy(key)] = table.Leaf.from_buffer_copy(value)

    def delete(self, name: str, keys: list[bytes]) -> None:
        table = self._table(name)
        for key in keys:
            try:
                del table[table.Key.from_buffer_copy(key)]
            except KeyError:  # gone already (LRU, or another reader)
                pass

    def clear(self, name: str) -> None:
        self._table(name).clear()

    def stack(self, name: str, stack_id: int) -> list[int]:
        return [int(addr) for addr in self._table(name).walk(stack_id)]

    def attach_kprobe(self, symbol: str, fn_name: str, is_return: bool = False) -> None:
        """Raises MissingCapability with the kernel's refusal when the probe does not attach."""
        try:
            if is_return:
                self._prog.attach_kretprobe(event=symbol, fn_name=fn_name)
            else:
                self._prog.attach_kprobe(event=symbol, fn_name=fn_name)
        except Exception as exc:  # bcc raises bare Exception
            raise MissingCapability(str(exc)) from None

    def open_perf_buffer(self, name: str, on_event: EventHandler, on_lost: LostHandler) -> None:
        def handle(_cpu: int, data: Any, size: int) -> None:
            on_event(ctypes.string_at(data, size))

        self._table(name).open_perf_buffer(handle, page_cnt=64, lost_cb=on_lost)
        self._perf = True

    def poll(self, timeout_s: float) -> None:
        """Deliver pending perf events (and their losses), or just wait."""
        if self._perf:
            self._prog.perf_buffer_poll(timeout=max(int(timeout_s * 1000), 0))
        elif timeout_s > 0:
            time.sleep(timeout_s)

    def run_stats(self) -> dict[str, tuple[int, int]]:
        """(runs, ns in the program) per loaded program, when kernel.bpf_stats_enabled=1; else empty."""
        if not bpfstats.enabled():
            return {}
        out: dict[str, tuple[int, int]] = {}
        for name, fn in self._prog.funcs.items():
            try:
                stats = bpfstats.parse_fdinfo(Path(f"/proc/self/fdinfo/{fn.fd}").read_text())
            except OSError:
                continue
            if stats is not None:
                out[name.decode() if isinstance(name, bytes) else name] = stats  # BCC keys funcs by bytes
        return out

    def close(self) -> None:
        self._prog.cleanup()


def dump_source(source: ProgramSource, facts: KernelFacts) -> str:
    """What --ebpf prints: the final C and the exact cflags."""
    mode = headers_mode(facts)
    header = "\n".join(
        [f"// headers: {mode}", "// cflags: " + " ".join(source.cflags())] + [
            f"// --- {name}" for name in ["contract prelude", "netpath.h", *source.files]
        ]
    )
    return header + "\n" + source.text() + "\n// --- netpath.h\n" + (BPF_DIR / "netpath.h").read_text()
