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
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netpath import contract
from netpath.errors import MissingCapability
from netpath.kernel import bpfstats, bpfsys, caps, limits, progcache, shim
from netpath.kernel import offsets as kernel_offsets
from netpath.kernel.facts import KernelFacts

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
    """The program built for `source` on this kernel: from the trusted cache when this kernel, source,
    flags and BCC were seen before, else compiled in a short-lived child (which fills the cache)."""
    key = progcache.key(source.text(), source.cflags(), headers_mode(facts), facts.release, BPF_DIR)
    built, refused = progcache.load(key)
    if built is not None:
        try:
            return _debug_origin(Program(built, "cache"))
        except MissingCapability:  # the kernel refuses what it once took: forget it, build afresh
            progcache.discard("prog", key)
            refused = "the kernel refused the cached build"
    built = _build_in_child(source, facts)
    progcache.store(key, built)
    return _debug_origin(Program(built, f"compiled ({refused})" if refused else "compiled"))


def _debug_origin(prog: Program) -> Program:
    if os.environ.get("NETPATH_DEBUG"):
        child = f", build process peak RSS {build_child_peak_kb[-1] // 1024} MB" if prog.origin != "cache" else ""
        sys.stderr.write(f"netpath: debug: BPF program {prog.origin}{child}\n")
    return prog


def _build_in_child(source: ProgramSource, facts: KernelFacts) -> dict[str, Any]:
    """BCC compiles in a short-lived child process, which hands back the bytecode and map layouts and
    exits: clang's heap and LLVM's pages never become this long-lived process's resident memory.

    A fresh interpreter (-I: no PYTHON* variables, no user site), not a fork: the parent may run threads
    (a netlink prefetch, an HTTP server) holding locks a forked child would wait on forever."""
    mode = headers_mode(facts)
    env = dict(os.environ)
    if mode == "shim":
        env["BCC_KERNEL_SOURCE"] = str(shim.ensure(kernel_offsets.cache_dir(), facts.release_tuple))
    elif env.get("BCC_KERNEL_SOURCE") is not None and caps.env_path("BCC_KERNEL_SOURCE") is None:
        env.pop("BCC_KERNEL_SOURCE")  # headers another user controls would decide what root compiles
    package_root = str(Path(__file__).resolve().parent.parent)
    code = f"import sys; sys.path.insert(0, {package_root!r}); from netpath.bpf import build_child; build_child()"
    request = json.dumps({"text": source.text(), "cflags": source.cflags(), "mode": mode}).encode()
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", code], input=request, capture_output=True, env=env,
                              check=False, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MissingCapability(f"could not run the BPF build process: {exc}") from None
    build_child_peak_kb.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        answer = {"error": f"the BPF build process died before it answered: {last}"}
    if not isinstance(answer, dict) or "built" not in answer:
        raise MissingCapability(str(answer.get("error", "no answer from the BPF build")))
    return dict(answer["built"])


build_child_peak_kb: list[int] = []  # peak RSS of the build children so far (NETPATH_DEBUG reports it)


def build_child() -> None:
    """The build process: a request (C text, cflags, headers mode) on stdin, the build or the error on stdout."""
    request = json.loads(sys.stdin.buffer.read())
    try:
        answer: dict[str, Any] = {"built": _describe(request["text"], request["cflags"], request["mode"])}
    except MissingCapability as exc:
        answer = {"error": str(exc)}
    except Exception as exc:  # anything else BCC raises: the parent reports it, never a traceback
        answer = {"error": f"could not build the BPF program: {type(exc).__name__}: {exc}"}
    sys.stdout.buffer.write(json.dumps(answer).encode())
    sys.stdout.flush()


def _describe(text: str, cflags: list[str], mode: str) -> dict[str, Any]:
    """In the build process: compile with BCC, then read back every map's layout and every function's
    bytecode, with the map references (ld_imm64 of a map fd) turned into map indexes."""
    bcc = import_bcc()
    with _captured_stderr() as errors:
        try:
            prog = bcc.BPF(text=text, cflags=cflags)
            failure = None
        except Exception as exc:  # bcc raises bare Exception for compile and attach failures
            failure = exc
    if failure is not None:
        if os.environ.get("NETPATH_DEBUG"):
            sys.stderr.write("\n".join(errors) + "\n")
        # clang's first "error:" line, else the verifier's first complaint, else what bcc raised
        detail = next((line for line in errors if "error:" in line), None) or next(
            (line for line in errors if line.strip() and not line.startswith(("bpf: Failed", " "))), str(failure)
        )
        raise MissingCapability(f"could not load the BPF program ({mode} headers): {detail.strip()}")
    return _read_build(bcc.libbcc.lib, prog.module)


def _read_build(lib: Any, module: Any) -> dict[str, Any]:
    """Map layouts and function bytecode from a BCC module (libbcc's C API; some calls are not declared
    by BCC's Python bindings, so their types are set here)."""
    sz, cp, vp = ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p
    for fn, args, res in (("bpf_num_tables", [vp], sz), ("bpf_table_name", [vp, sz], cp),
                          ("bpf_table_fd_id", [vp, sz], ctypes.c_int), ("bpf_table_type_id", [vp, sz], ctypes.c_int),
                          ("bpf_table_key_size_id", [vp, sz], sz), ("bpf_table_leaf_size_id", [vp, sz], sz),
                          ("bpf_table_max_entries_id", [vp, sz], sz), ("bpf_table_flags_id", [vp, sz], ctypes.c_int),
                          ("bpf_num_functions", [vp], sz), ("bpf_function_name", [vp, sz], cp),
                          ("bpf_function_start", [vp, cp], vp), ("bpf_function_size", [vp, cp], sz),
                          ("bpf_module_license", [vp], cp), ("bpf_module_kern_version", [vp], ctypes.c_uint)):
        getattr(lib, fn).argtypes, getattr(lib, fn).restype = args, res
    maps, fd_index = [], {}
    for i in range(lib.bpf_num_tables(module)):
        fd_index[lib.bpf_table_fd_id(module, i)] = i
        maps.append({"name": lib.bpf_table_name(module, i).decode(), "type": lib.bpf_table_type_id(module, i),
                     "key_size": lib.bpf_table_key_size_id(module, i),
                     "value_size": lib.bpf_table_leaf_size_id(module, i),
                     "max_entries": lib.bpf_table_max_entries_id(module, i),
                     "flags": lib.bpf_table_flags_id(module, i)})
    functions = []
    for i in range(lib.bpf_num_functions(module)):
        name = lib.bpf_function_name(module, i)
        start, size = lib.bpf_function_start(module, name), lib.bpf_function_size(module, name)
        functions.append(progcache.unrelocate(name.decode(), ctypes.string_at(start, size), fd_index))
    return {"license": (lib.bpf_module_license(module) or b"GPL").decode(),
            "kern_version": lib.bpf_module_kern_version(module), "maps": maps, "functions": functions}


Loader = Callable[[ProgramSource, KernelFacts], "Program"]
EventHandler = Callable[[bytes], None]
LostHandler = Callable[[int], None]

_AUTO_PREFIX = "raw_tracepoint__"
# BCC names a program after its function without the attach prefix (bpftool and the bench read these)
_NAME_PREFIXES = ("raw_tracepoint__", "tracepoint__", "kprobe__", "kretprobe__")


def _prog_name(fn: str) -> str:
    return next((fn[len(p):] for p in _NAME_PREFIXES if fn.startswith(p)), fn)[:15]


class Program:
    """A loaded BPF program, by bpf(2) from a build (netpath/kernel/progcache.py's layout). Keys and
    values cross this boundary as raw bytes."""

    def __init__(self, built: dict[str, Any], origin: str = "compiled") -> None:
        self.origin = origin  # "cache", or "compiled" and why a cached build was refused
        self.tp_btf_refused = ""  # why tp_btf programs were built as raw tracepoints instead
        self._license = str(built["license"])
        self._kern_version = int(built["kern_version"])
        self._maps: dict[str, bpfsys.Map] = {}
        self._code: dict[str, bytes] = {}
        self._progs: dict[str, int] = {}  # function -> program fd
        self._links: dict[str, list[int]] = {}  # function -> attach fds (closing one detaches)
        self._tp_btf: list[str] = []
        self._perf: list[bpfsys.PerfBuffer] = []
        self._rings: list[bpfsys.RingBuf] = []
        try:
            fds = []
            for m in built["maps"]:
                made = bpfsys.Map(m["name"], m["type"], m["key_size"], m["value_size"], m["max_entries"], m["flags"])
                self._maps[m["name"]] = made
                fds.append(made.fd)
            for fn in built["functions"]:
                self._code[fn["name"]] = progcache.relocate(fn, fds)
            for name in self._code:
                if name.startswith(_AUTO_PREFIX):
                    self._attach_raw_tracepoint(name, name[len(_AUTO_PREFIX):])
        except OSError as exc:
            self.close()
            raise MissingCapability(f"could not load the BPF program: {exc.strerror or exc}") from None
        except MissingCapability:
            self.close()
            raise

    def _load(self, fn: str, prog_type: int, attach_type: int = 0, btf_id: int = 0) -> int:
        if fn in self._progs:
            return self._progs[fn]
        code = self._code.get(fn)
        if code is None:
            raise OSError(0, f"no BPF function {fn} in the compiled program")
        fd, log = bpfsys.prog_load(prog_type, code, _prog_name(fn), self._license, self._kern_version,
                                   attach_type, btf_id)
        if fd < 0:
            raise MissingCapability(f"could not load the BPF program: {fn}: {os.strerror(-fd)}"
                                    f"{': ' + log if log else ''}")
        self._progs[fn] = fd
        return fd

    def _attach_raw_tracepoint(self, fn: str, tracepoint: str) -> None:
        link = bpfsys.raw_tracepoint_open(self._load(fn, bpfsys.PROG_TYPE_RAW_TRACEPOINT), tracepoint)
        if link < 0:
            raise MissingCapability(f"could not attach raw tracepoint {tracepoint}: {os.strerror(-link)}")
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
        prog_fd, log = bpfsys.prog_load(bpfsys.PROG_TYPE_TRACING, self._code[fn], _prog_name(fn), self._license,
                                        0, bpfsys.TRACE_RAW_TP, btf_id)
        if prog_fd < 0:
            raise OSError(-prog_fd, f"tp_btf {tracepoint}: {os.strerror(-prog_fd)}{': ' + log if log else ''}")
        link_fd = bpfsys.raw_tracepoint_open(prog_fd, None)
        if link_fd < 0:
            os.close(prog_fd)
            raise OSError(-link_fd, f"tp_btf {tracepoint}: attach: {os.strerror(-link_fd)}")
        self._progs[fn] = prog_fd
        self._links.setdefault(fn, []).append(link_fd)
        self._tp_btf.append(fn)

    def _map(self, name: str) -> bpfsys.Map:
        return self._maps[name]

    def percpu_items(self, name: str) -> dict[bytes, list[bytes]]:
        """A per-CPU hash: key -> one value per possible CPU."""
        m = self._map(name)
        out = {}
        for key in m.keys():
            values = m.lookup_percpu(key)
            if values is not None:  # gone between the walk and the read
                out[key] = values
        return out

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

    def attach_kprobe(self, symbol: str, fn_name: str, is_return: bool = False) -> None:
        """Raises MissingCapability with the kernel's refusal when the probe does not attach."""
        try:
            fd = bpfsys.attach_kprobe(self._load(fn_name, bpfsys.PROG_TYPE_KPROBE), symbol, is_return)
        except OSError as exc:
            why = limits.advice() if limits.too_many_files(exc) else str(exc.strerror or exc)
            raise MissingCapability(why) from None
        self._links.setdefault(fn_name, []).append(fd)

    def open_perf_buffer(self, name: str, on_event: EventHandler, on_lost: LostHandler) -> None:
        try:
            self._perf.append(bpfsys.PerfBuffer(self._map(name), on_event, on_lost, pages=64))
        except OSError as exc:
            raise MissingCapability(f"could not open the perf buffer {name}: {exc.strerror or exc}") from None

    def open_ring_buffer(self, name: str, on_event: EventHandler) -> None:
        """A BPF ring buffer drained at every poll. Its records are submitted without a wakeup (the
        program's choice: a wakeup per record costs the traffic ~1.6 us), so poll() drains it on
        netpath's own clock rather than waiting for it."""
        try:
            self._rings.append(bpfsys.RingBuf(self._map(name), on_event))
        except OSError as exc:
            raise MissingCapability(f"could not map the ring buffer {name}: {exc.strerror or exc}") from None

    def poll(self, timeout_s: float) -> None:
        """Deliver pending perf events (and their losses) and ring records, or just wait."""
        if self._perf:
            bpfsys.poll(self._perf, timeout_s)
        elif timeout_s > 0:
            time.sleep(timeout_s)
        for ring in self._rings:
            ring.drain()

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
                out[name.removeprefix(_AUTO_PREFIX)] = stats
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


_INDEX = struct.Struct("<I")
_ADDR = struct.Struct("<Q")


# ---------------------------------------------------------------- tp_btf, by bpf(2) itself


def _prog_load_tracing(insns: int, size: int, name: str, btf_id: int) -> tuple[int, str]:
    """(fd or -errno, the verifier's last words on failure)."""
    return bpfsys.prog_load(bpfsys.PROG_TYPE_TRACING, ctypes.string_at(insns, size), name, "GPL", 0,
                            bpfsys.TRACE_RAW_TP, btf_id)


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
