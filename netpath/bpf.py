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
from netpath.kernel import bpfstats, caps, limits, shim
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
    # C function -> tracepoint: load these as BTF-typed raw tracepoints (tp_btf) when the kernel allows it;
    # the C is compiled with TP_BTF=1 for them, and again with TP_BTF=0 as raw tracepoints if it does not
    tp_btf: dict[str, str] = field(default_factory=dict)

    def without_tp_btf(self) -> ProgramSource:
        return ProgramSource(list(self.files), {**self.defines, "TP_BTF": 0}, {})

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
    """Compile and load; BCC auto-attaches RAW_TRACEPOINT_PROBE/TRACEPOINT_PROBE functions.

    The source's tp_btf functions are loaded here as BTF-typed raw tracepoints; if this kernel refuses
    that, the source is built again as plain raw tracepoints (Program.tp_btf_refused says why)."""
    if not source.tp_btf:
        return _compile(source, facts)
    try:
        prog = _compile(source, facts)
    except MissingCapability as exc:  # the typed build did not load here: the raw one may
        fallback = _compile(source.without_tp_btf(), facts)
        fallback.tp_btf_refused = str(exc)
        return fallback
    try:
        ids = tp_btf_ids(facts.btf_path, tuple(source.tp_btf.values()))
        for fn, tp in source.tp_btf.items():
            prog.attach_tp_btf(fn, tp, ids[tp])
        return prog
    except OSError as exc:
        prog.close()
        fallback = _compile(source.without_tp_btf(), facts)
        fallback.tp_btf_refused = exc.strerror or str(exc)
        return fallback


def _compile(source: ProgramSource, facts: KernelFacts) -> Program:
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
    if limits.too_many_files(failure) or any("Too many open files" in line for line in errors):
        raise MissingCapability(f"could not load the BPF program: {limits.advice()}")
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
        self._tp_btf: dict[str, tuple[int, int]] = {}  # function -> (program fd, link fd)
        self.tp_btf_refused = ""  # why tp_btf programs were built as raw tracepoints instead

    @property
    def tp_btf(self) -> tuple[str, ...]:
        """The functions running as BTF-typed raw tracepoints."""
        return tuple(self._tp_btf)

    def attach_tp_btf(self, fn: str, tracepoint: str, btf_id: int) -> None:
        """Load BCC's bytecode for `fn` as BPF_PROG_TYPE_TRACING / BPF_TRACE_RAW_TP with the tracepoint's
        BTF id (BCC's own loader cannot: it picks the attach type from the name prefix), then attach it.
        Raises OSError with the kernel's answer."""
        from bcc import libbcc  # the module BCC's own BPF class calls into

        name = fn.encode()
        start = libbcc.lib.bpf_function_start(self._prog.module, name)
        size = libbcc.lib.bpf_function_size(self._prog.module, name)
        if not start or not size:
            raise OSError(0, f"no BPF function {fn} in the compiled program")
        if btf_id <= 0:
            raise OSError(0, f"no btf_trace_{tracepoint} in this kernel's BTF")
        prog_fd, log = _prog_load_tracing(start, size, fn, btf_id)
        if prog_fd < 0:
            raise OSError(-prog_fd, f"tp_btf {tracepoint}: {os.strerror(-prog_fd)}{': ' + log if log else ''}")
        link_fd = _raw_tp_open(prog_fd)
        if link_fd < 0:
            os.close(prog_fd)
            raise OSError(-link_fd, f"tp_btf {tracepoint}: attach: {os.strerror(-link_fd)}")
        self._tp_btf[fn] = (prog_fd, link_fd)

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
            raise MissingCapability(limits.advice() if limits.too_many_files(exc) else str(exc)) from None

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
        fds = [(name, fn.fd) for name, fn in self._prog.funcs.items()]
        fds += [(name, prog_fd) for name, (prog_fd, _link) in self._tp_btf.items()]
        for name, fd in fds:
            try:
                stats = bpfstats.parse_fdinfo(Path(f"/proc/self/fdinfo/{fd}").read_text())
            except OSError:
                continue
            if stats is not None:
                label = name.decode() if isinstance(name, bytes) else str(name)
                out[label.removeprefix("raw_tracepoint__")] = stats
        return out

    def close(self) -> None:
        for prog_fd, link_fd in self._tp_btf.values():
            os.close(link_fd)  # detaches
            os.close(prog_fd)
        self._tp_btf.clear()
        self._prog.cleanup()


# ---------------------------------------------------------------- tp_btf, by bpf(2) itself

_BPF_PROG_LOAD = 5
_BPF_RAW_TRACEPOINT_OPEN = 17
_BPF_PROG_TYPE_TRACING = 26
_BPF_TRACE_RAW_TP = 23
_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, -1)


class _ProgLoadAttr(ctypes.Structure):
    """union bpf_attr for BPF_PROG_LOAD, up to attach_prog_fd (uapi/linux/bpf.h); zero beyond."""

    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32), ("prog_btf_fd", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
                ("func_info_cnt", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
                ("line_info", ctypes.c_uint64), ("line_info_cnt", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32),
                ("attach_prog_fd", ctypes.c_uint32), ("_rest", ctypes.c_uint8 * 64)]


class _RawTpOpenAttr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("cookie", ctypes.c_uint64)]


def _sys_bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(2): the fd, or -errno."""
    if _SYS_BPF < 0:
        return -38  # ENOSYS: an architecture this table does not know
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_long(cmd), ctypes.byref(attr),
                       ctypes.c_long(ctypes.sizeof(attr)))
    return int(ret) if ret >= 0 else -ctypes.get_errno()


def _prog_load_tracing(insns: int, size: int, name: str, btf_id: int) -> tuple[int, str]:
    """(fd or -errno, the verifier's last words on failure)."""
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    attr = _ProgLoadAttr(prog_type=_BPF_PROG_TYPE_TRACING, insn_cnt=size // 8, insns=insns,
                         license=ctypes.addressof(license_), prog_name=name.encode()[:15],
                         expected_attach_type=_BPF_TRACE_RAW_TP, attach_btf_id=btf_id)
    fd = _sys_bpf(_BPF_PROG_LOAD, attr)
    if fd >= 0:
        return fd, ""
    # again with the log, only to say why
    attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
    retry = _sys_bpf(_BPF_PROG_LOAD, attr)
    if retry >= 0:
        os.close(retry)
    lines = [line for line in log.value.decode(errors="replace").splitlines() if line.strip()]
    return fd, lines[-2 if len(lines) > 1 and lines[-1].startswith("processed") else -1] if lines else ""


def _raw_tp_open(prog_fd: int) -> int:
    """BPF_RAW_TRACEPOINT_OPEN with no name: a tp_btf program attaches where its BTF id says."""
    return _sys_bpf(_BPF_RAW_TRACEPOINT_OPEN, _RawTpOpenAttr(name=0, prog_fd=prog_fd))


def tp_btf_ids(btf_path: Path, tracepoints: tuple[str, ...]) -> dict[str, int]:
    """btf_trace_<tp> typedef ids from vmlinux BTF (0: none), cached per kernel build."""
    from netpath.kernel.btf import BTF
    from netpath.kernel.cache import cached_json

    def compute(blob: bytes) -> dict[str, int]:
        btf = BTF(blob)
        return {tp: btf.typedef_id(f"btf_trace_{tp}") or 0 for tp in TP_BTF_TRACEPOINTS}

    def valid(v: object) -> bool:
        return isinstance(v, dict) and all(isinstance(v.get(tp), int) for tp in TP_BTF_TRACEPOINTS)

    ids = cached_json(btf_path, "tp-btf-ids", compute, valid=valid)
    return {tp: int(ids.get(tp, 0)) for tp in tracepoints}


# the tracepoints netpath may attach as tp_btf (the cache holds these)
TP_BTF_TRACEPOINTS = ("kfree_skb", "netif_receive_skb", "sk_data_ready")


def tp_btf_allowed(btf_path: Path) -> tuple[bool, str]:
    """Does this kernel load a BTF-typed raw tracepoint program (tp_btf) for netpath? A two-instruction
    program (r0 = 0; exit) on skb:kfree_skb is loaded and closed, never attached. Needs CAP_BPF."""
    try:
        btf_id = tp_btf_ids(btf_path, ("kfree_skb",))["kfree_skb"]
    except (OSError, ValueError) as exc:
        return False, f"BTF unreadable: {exc}"
    if not btf_id:
        return False, "no btf_trace_kfree_skb in this kernel's BTF"
    insns = (ctypes.c_uint64 * 2)(0x00000000000000B7, 0x0000000000000095)  # mov r0, 0; exit
    fd, log = _prog_load_tracing(ctypes.addressof(insns), ctypes.sizeof(insns), "np_tp_btf_probe", btf_id)
    if fd < 0:
        return False, f"the kernel refuses tp_btf programs: {os.strerror(-fd)}{': ' + log if log else ''}"
    os.close(fd)
    return True, "BTF-typed raw tracepoints load: direct reads of kernel structs, no probe-read helper"


def dump_source(source: ProgramSource, facts: KernelFacts) -> str:
    """What --ebpf prints: the final C and the exact cflags."""
    mode = headers_mode(facts)
    header = "\n".join(
        [f"// headers: {mode}", "// cflags: " + " ".join(source.cflags())] + [
            f"// --- {name}" for name in ["contract prelude", "netpath.h", *source.files]
        ]
    )
    return header + "\n" + source.text() + "\n// --- netpath.h\n" + (BPF_DIR / "netpath.h").read_text()


# ---------------------------------------------------------------- build checks (tests/live/test_build_matrix.py)

# BCC's own loader loads (and attaches) every function with one of these prefixes, as this type
_AUTOLOAD = (("raw_tracepoint__", "RAW_TRACEPOINT"), ("tracepoint__", "TRACEPOINT"), ("kprobe__", "KPROBE"),
             ("kretprobe__", "KPROBE"))


def check_build(source: ProgramSource, facts: KernelFacts, kprobes: tuple[str, ...] = (),
                load: bool = True) -> list[str]:
    """Compile `source` for `facts`' kernel shape and, with `load`, put through this kernel's verifier every
    function a run would load: BCC's autoloaded ones (raw_tracepoint__..., as their type), the source's tp_btf
    functions (through bpf(2) with their tracepoint's BTF id) and the C functions in `kprobes` (as kprobes:
    loading one needs no CONFIG_KPROBES, only attaching does). Nothing is attached. Returns the functions
    loaded; raises MissingCapability naming the first failure (clang's error or the verifier's complaint).

    Compiling alone checks nothing the verifier checks: BCC runs it only when a function is loaded, which its
    constructor does for the autoloaded functions and then attaches them, impossible for another kernel's
    build, so that step is skipped here and the loads are done one by one."""
    bcc = import_bcc()

    # BCC's BPF with its load-and-attach step (_trace_autoload, run by its constructor) left out
    unattached = type("Unattached", (bcc.BPF,), {"_trace_autoload": lambda self: None})
    root = shim.ensure(kernel_offsets.cache_dir(), facts.release_tuple) if headers_mode(facts) == "shim" else None
    env_before = os.environ.get("BCC_KERNEL_SOURCE")
    if root is not None:
        os.environ["BCC_KERNEL_SOURCE"] = str(root)
    loaded: list[str] = []
    prog = None
    failure: Exception | None = None
    with _captured_stderr() as errors:
        try:
            prog = unattached(text=source.text(), cflags=source.cflags())
            if load:
                loaded = _load_run_functions(bcc, prog, source, kprobes)
        except Exception as exc:  # bcc raises bare Exception for compile and load failures
            failure = exc
        finally:
            if prog is not None:
                prog.cleanup()
            if env_before is None:
                os.environ.pop("BCC_KERNEL_SOURCE", None)
            else:
                os.environ["BCC_KERNEL_SOURCE"] = env_before
    if failure is None:
        return loaded
    detail = next((line for line in errors if "error:" in line), None) or _verifier_complaint(errors)
    raise MissingCapability(f"{failure}: {detail.strip()}" if detail and detail not in str(failure) else str(failure))


def _verifier_complaint(lines: list[str]) -> str | None:
    """The verifier's last words: the line before 'processed N insns', else the last non-empty line."""
    body = [line for line in lines if line.strip()]
    for i, line in enumerate(body):
        if line.startswith("processed ") and i:
            return body[i - 1]
    return body[-1] if body else None


def _load_run_functions(bcc: Any, prog: Any, source: ProgramSource, kprobes: tuple[str, ...]) -> list[str]:
    from bcc import libbcc

    loaded: list[str] = []
    for i in range(libbcc.lib.bpf_num_functions(prog.module)):
        name = libbcc.lib.bpf_function_name(prog.module, i).decode()
        kind = next((t for prefix, t in _AUTOLOAD if name.startswith(prefix)), None)
        if name in source.tp_btf:
            _load_tp_btf(prog, name, source.tp_btf[name])
        elif kind is not None:
            prog.load_func(name.encode(), getattr(bcc.BPF, kind))
        elif name in kprobes:
            prog.load_func(name.encode(), bcc.BPF.KPROBE)
        else:
            continue  # compiled, never loaded by a run of this build
        loaded.append(name)
    missing = sorted(set(kprobes) - set(loaded)) + sorted(set(source.tp_btf) - set(loaded))
    if missing:  # a run would fail to attach these
        raise Exception(f"no BPF function {', '.join(missing)} in the compiled program")
    return loaded


def _load_tp_btf(prog: Any, fn: str, tracepoint: str) -> None:
    from bcc import libbcc

    btf_id = tp_btf_ids(Path("/sys/kernel/btf/vmlinux"), (tracepoint,))[tracepoint]
    start = libbcc.lib.bpf_function_start(prog.module, fn.encode())
    size = libbcc.lib.bpf_function_size(prog.module, fn.encode())
    fd, log = _prog_load_tracing(start, size, fn, btf_id)
    if fd < 0:
        raise Exception(f"Failed to load BPF program {fn} as tp_btf {tracepoint}: {os.strerror(-fd)}: {log}")
    os.close(fd)
