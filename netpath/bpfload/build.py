"""Build: the program text (C files + integer defines + the contract prelude), compiled by BCC in a child.

The only module that imports BCC. BCC compiles in a short-lived child process, which hands back the map
layouts and each function's bytecode (map references as map indexes) and exits: clang's heap and LLVM's
pages never become the long-lived process's memory. Nothing is loaded or attached in the child; the
parent loads every build through load.py (so the verifier sees it once, through one path).

Every value from the user arrives here as an integer in `defines` (a -D constant) or later as a map
entry; C text is never assembled from user input.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netpath import contract
from netpath.bpfload import load
from netpath.errors import MissingCapability
from netpath.kernel import caps, shim
from netpath.kernel import offsets as kernel_offsets
from netpath.kernel.facts import KernelFacts

_PACKAGE = Path(__file__).resolve().parent.parent
BPF_DIR = _PACKAGE.parent / "bpf"
if not BPF_DIR.is_dir():  # installed as a wheel: the C travels inside the package
    BPF_DIR = _PACKAGE / "bpf"


@dataclass
class ProgramSource:
    """A program to build: C files from bpf/ plus the numbers they are compiled with."""

    files: list[str]
    defines: dict[str, int] = field(default_factory=dict)
    # C function -> tracepoint: load these as BTF-typed raw tracepoints (tp_btf) when the kernel allows it;
    # the C is compiled with TP_BTF=1 for them, and again with TP_BTF=0 as raw tracepoints if it does not
    tp_btf: dict[str, str] = field(default_factory=dict)
    # the C can read packet bytes with plain loads through a typed skb's head (TP_BTF_PKT), which
    # compile_program turns on where this kernel's verifier allows it (load.tp_btf_packet_loads)
    packet_loads: bool = False

    def without_tp_btf(self) -> ProgramSource:
        return ProgramSource(list(self.files), {**self.defines, "TP_BTF": 0}, {})

    def with_packet_loads(self) -> ProgramSource:
        return ProgramSource(list(self.files), {**self.defines, "TP_BTF_PKT": 1}, dict(self.tp_btf))

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


def shim_env(facts: KernelFacts, env: dict[str, str]) -> dict[str, str]:
    """The environment BCC compiles in for this kernel: the header shim for its release when it has no
    headers; never a BCC_KERNEL_SOURCE another user controls."""
    env = dict(env)
    if headers_mode(facts) == "shim":
        env["BCC_KERNEL_SOURCE"] = str(shim.ensure(kernel_offsets.cache_dir(), facts.release_tuple))
    elif env.get("BCC_KERNEL_SOURCE") is not None and caps.env_path("BCC_KERNEL_SOURCE") is None:
        env.pop("BCC_KERNEL_SOURCE")  # headers another user controls would decide what root compiles
    return env


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


build_child_peak_kb: list[int] = []  # peak RSS of the build children so far (NETPATH_DEBUG reports it)


def build_in_child(source: ProgramSource, facts: KernelFacts) -> dict[str, Any]:
    """BCC compiles in a fresh interpreter (-I: no PYTHON* variables, no user site), not a fork: the
    parent may run threads (a netlink prefetch, an HTTP server) holding locks a forked child would wait on."""
    env = shim_env(facts, dict(os.environ))
    code = (f"import sys; sys.path.insert(0, {str(_PACKAGE.parent)!r}); "
            "from netpath.bpfload.build import build_child; build_child()")
    request = json.dumps({"text": source.text(), "cflags": source.cflags(), "mode": headers_mode(facts)}).encode()
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


def build_child() -> None:
    """The build process: a request (C text, cflags, headers mode) on stdin, the build or the error on stdout."""
    request = json.loads(sys.stdin.buffer.read())
    try:
        answer: dict[str, Any] = {"built": describe(request["text"], request["cflags"], request["mode"])}
    except MissingCapability as exc:
        answer = {"error": str(exc)}
    except Exception as exc:  # anything else BCC raises: the parent reports it, never a traceback
        answer = {"error": f"could not build the BPF program: {type(exc).__name__}: {exc}"}
    sys.stdout.buffer.write(json.dumps(answer).encode())
    sys.stdout.flush()


def describe(text: str, cflags: list[str], mode: str) -> dict[str, Any]:
    """Compile with BCC (nothing loaded, nothing attached: BCC's constructor would load and attach its
    auto-attach functions, so that step is left out), then read back every map's layout and every
    function's bytecode, with the map references (ld_imm64 of a map fd) turned into map indexes."""
    bcc = import_bcc()
    unattached = type("Unattached", (bcc.BPF,), {"_trace_autoload": lambda self: None})
    with _captured_stderr() as errors:
        try:
            prog = unattached(text=text, cflags=cflags)
            failure = None
        except Exception as exc:  # bcc raises bare Exception for compile failures
            failure = exc
    if failure is not None:
        if os.environ.get("NETPATH_DEBUG"):
            sys.stderr.write("\n".join(errors) + "\n")
        detail = next((line for line in errors if "error:" in line), None) or str(failure)
        raise MissingCapability(f"could not build the BPF program ({mode} headers): {detail.strip()}")
    try:
        return _read_build(bcc.libbcc.lib, prog.module)
    finally:
        prog.cleanup()


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
        functions.append(load.unrelocate(name.decode(), ctypes.string_at(start, size), fd_index))
    return {"license": (lib.bpf_module_license(module) or b"GPL").decode(),
            "kern_version": lib.bpf_module_kern_version(module), "maps": maps, "functions": functions}


def dump_source(source: ProgramSource, facts: KernelFacts) -> str:
    """What --ebpf prints: the final C and the exact cflags."""
    mode = headers_mode(facts)
    header = "\n".join(
        [f"// headers: {mode}", "// cflags: " + " ".join(source.cflags())] + [
            f"// --- {name}" for name in ["contract prelude", "netpath.h", *source.files]
        ]
    )
    return header + "\n" + source.text() + "\n// --- netpath.h\n" + (BPF_DIR / "netpath.h").read_text()
