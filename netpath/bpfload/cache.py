"""netpath's one cache store, and the compiled BPF programs in it (keys, trust rules).

Every cache netpath keeps lives in one private directory (0700, ours) under the cache root: the facts
derived from the kernel's BTF (offsets, drop reasons, tp_btf ids), the symbol index, the BCC header shim
tree and the compiled programs. root believes what it reads there (it compiles the shim, and loads the
programs into the kernel), so every entry is held to the same rules: a regular file, 0600, owned by us,
one link, and it carries the full key it was made for and a SHA-256 of its payload. Anything else —
planted, tampered, truncated, stale, malformed — is refused, removed and rebuilt, never used.

A program build (what build.py reads back from BCC: map layouts and each function's bytecode with its
map references as map indexes) is further checked by `valid_build` before it is loaded.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import importlib.util
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from netpath.bpfload.load import LD_IMM64, MAP_TYPES, PSEUDO_MAP_FD
from netpath.kernel import cache

FORMAT = 1
SUBDIR = "store"
DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_ENTRY_BYTES = 8 << 20
MAX_INSNS = 1 << 20  # the kernel's own limit for a privileged program
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_LD_IMM64 = LD_IMM64
_PSEUDO_MAP_FD = PSEUDO_MAP_FD


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return b""


def bcc_version() -> str:
    """BCC's version without importing it (that costs ~0.15 s and maps LLVM)."""
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return "none"
    return _read(str(Path(spec.origin).with_name("version.py"))).decode(errors="replace").strip()


def key(text: str, cflags: list[str], headers: str, release: str, bpf_dir: Path) -> dict[str, Any]:
    """Everything a build depends on: the kernel (release, version string, build-id notes), BCC, the
    headers mode, the exact source text, every header it may include, and the cflags."""
    headers_text = b"".join(p.name.encode() + b"\0" + p.read_bytes() for p in sorted(bpf_dir.glob("*.h")))
    return {"format": FORMAT, "kernel": release, "kernel_version": os.uname().version,
            "kernel_build": _sha(_read("/sys/kernel/notes")), "bcc": bcc_version(), "headers": headers,
            "source_sha256": _sha(text.encode()), "include_sha256": _sha(headers_text), "cflags": list(cflags)}


def entry_name(kind: str, k: dict[str, Any]) -> str:
    return f"{kind}-" + _sha(json.dumps(k, sort_keys=True).encode())[:40]


# ---------------------------------------------------------------- bytecode


def _int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _valid_function(fn: Any, nmaps: int) -> bool:
    if not (isinstance(fn, dict) and set(fn) == {"name", "insns", "relocs"} and isinstance(fn["name"], str)
            and _NAME.match(fn["name"]) and isinstance(fn["insns"], str) and isinstance(fn["relocs"], list)):
        return False
    try:
        code = base64.b64decode(fn["insns"], validate=True)
    except ValueError:
        return False
    n = len(code) // 8
    if not code or len(code) % 8 or n > MAX_INSNS:
        return False
    relocs = {}
    for r in fn["relocs"]:
        if not (isinstance(r, list) and len(r) == 2 and _int(r[0], 0, n - 2) and _int(r[1], 0, nmaps - 1)):
            return False
        relocs[r[0]] = r[1]
    i = 0
    while i < n:  # every map reference is a recorded relocation with its immediate zeroed: no stray fds
        if code[i * 8] == _LD_IMM64:
            src = code[i * 8 + 1] >> 4
            if src != (_PSEUDO_MAP_FD if i in relocs else 0):
                return False
            if i in relocs and code[i * 8 + 4:i * 8 + 8] != bytes(4):
                return False
            relocs.pop(i, None)
            i += 2
        else:
            i += 1
    return not relocs  # a relocation that points at no ld_imm64


def valid_build(build: Any) -> bool:
    """The shape build.py writes, with bounds the kernel would accept."""
    if not (isinstance(build, dict) and set(build) == {"license", "kern_version", "maps", "functions"}):
        return False
    maps, functions = build["maps"], build["functions"]
    if not (isinstance(build["license"], str) and 0 < len(build["license"]) <= 128
            and _int(build["kern_version"], 0, 0xFFFFFFFF) and isinstance(maps, list) and len(maps) <= 64
            and isinstance(functions, list) and 0 < len(functions) <= 64):
        return False
    for m in maps:
        if not (isinstance(m, dict) and set(m) == {"name", "type", "key_size", "value_size", "max_entries", "flags"}
                and isinstance(m["name"], str) and _NAME.match(m["name"]) and m["type"] in MAP_TYPES
                and _int(m["key_size"], 1, 512) and _int(m["value_size"], 1, 1 << 16)
                and _int(m["max_entries"], 1, 1 << 24) and _int(m["flags"], 0, 0xFFFFFFFF)):
            return False
    names = [fn.get("name") if isinstance(fn, dict) else None for fn in functions]
    return len(set(names)) == len(names) and all(_valid_function(fn, len(maps)) for fn in functions)


# ---------------------------------------------------------------- the store


def open_dir(create: bool = True, root: Path | None = None) -> int | None:
    """An fd on the private store under the cache root once it is ours and 0700, else None (then: no cache)."""
    parent = cache.open_dir(root or cache.cache_dir(), create)
    if parent is None:
        return None
    try:
        if create:
            try:
                os.mkdir(SUBDIR, DIR_MODE, dir_fd=parent)
            except FileExistsError:
                pass
        fd = os.open(SUBDIR, cache.DIR_FLAGS, dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, "not our cache store")
        if stat.S_IMODE(st.st_mode) != DIR_MODE:  # ours but opened up: close it again; entries are checked
            os.fchmod(fd, DIR_MODE)
    except OSError:
        os.close(fd)
        return None
    return fd


def entry_refusal(st: os.stat_result) -> str | None:
    """Why an entry with this stat cannot be trusted, or None."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}"
    if st.st_mode & 0o077:
        return f"mode {stat.S_IMODE(st.st_mode):04o}, not {FILE_MODE:04o}"
    if st.st_nlink != 1:
        return "hard-linked elsewhere"
    if st.st_size > MAX_ENTRY_BYTES:
        return "too large"
    return None


def read_private(dir_fd: int, name: str) -> tuple[bytes | None, str]:
    """The bytes of file `name` in dir_fd when entry_refusal accepts it: (None, "") missing, (None, why)."""
    return _read_entry(dir_fd, name)


def _read_entry(dir_fd: int, name: str) -> tuple[bytes | None, str]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, "a symlink" if exc.errno == errno.ELOOP else f"unreadable ({exc.strerror})"
    try:
        why = entry_refusal(os.fstat(fd))
        if why:
            return None, why
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks), ""
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    finally:
        os.close(fd)


_MAGIC = b"netpath-cache 1\n"


def encode_entry(k: dict[str, Any], payload: bytes) -> bytes:
    """A magic line, a header line (the key and the payload's SHA-256), then the payload."""
    header = json.dumps({"key": k, "sha256": _sha(payload), "size": len(payload)}, sort_keys=True).encode()
    return _MAGIC + header + b"\n" + payload


def check_entry(raw: bytes, k: dict[str, Any]) -> tuple[bytes | None, str]:
    """The payload of an entry's bytes when it is for exactly key `k` and intact, else (None, why)."""
    if not raw.startswith(_MAGIC) or b"\n" not in raw[len(_MAGIC):]:
        return None, "not a netpath cache entry"
    line, _, payload = raw[len(_MAGIC):].partition(b"\n")
    try:
        header = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, "its header is not JSON"
    if not isinstance(header, dict) or set(header) != {"key", "sha256", "size"}:
        return None, "not a netpath cache entry"
    if header["key"] != k:
        return None, "built for another kernel, source, cflags or BCC"
    if header["size"] != len(payload) or header["sha256"] != _sha(payload):
        return None, "its checksum does not match its contents (tampered or truncated)"
    return payload, ""


# NETPATH_PROGRAM_CACHE=0 turns these off (a new configuration: the kernel's facts cached, not the build)
PROGRAM_KINDS = ("prog", "kallsyms")


def _off(kind: str) -> bool:
    return kind in PROGRAM_KINDS and os.environ.get("NETPATH_PROGRAM_CACHE") == "0"


def load_payload(kind: str, k: dict[str, Any]) -> tuple[bytes | None, str]:
    """(the cached payload for key k, "") on a hit; (None, "") on a miss; (None, why) when an entry was
    there and refused (it is removed: the caller rebuilds and stores afresh)."""
    if _off(kind):
        return None, ""
    dir_fd = open_dir(create=False)
    if dir_fd is None:
        return None, ""
    name = entry_name(kind, k)
    try:
        raw, why = _read_entry(dir_fd, name)
        if raw is not None:
            payload, why = check_entry(raw, k)
            if payload is not None:
                return payload, ""
        if why:
            _unlink(dir_fd, name)
            return None, f"cached {kind} refused: {why}"
        return None, ""
    finally:
        os.close(dir_fd)


def store_payload(kind: str, k: dict[str, Any], payload: bytes) -> bool:
    if _off(kind):
        return False
    dir_fd = open_dir(create=True)
    if dir_fd is None:
        return False
    name = entry_name(kind, k)
    tmp = cache.temp_name(name)
    try:
        try:
            fd = cache.create_private(dir_fd, tmp, FILE_MODE)
        except OSError:
            return False
        try:
            cache.write_all(fd, encode_entry(k, payload))
        finally:
            os.close(fd)
        try:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return True
        except OSError:
            _unlink(dir_fd, tmp)
            return False
    finally:
        os.close(dir_fd)


def discard(kind: str, k: dict[str, Any]) -> None:
    dir_fd = open_dir(create=False)
    if dir_fd is not None:
        try:
            _unlink(dir_fd, entry_name(kind, k))
        finally:
            os.close(dir_fd)


def load(k: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The cached program build for key k (see load_payload), validated as a build."""
    payload, why = load_payload("prog", k)
    if payload is None:
        return None, why
    try:
        build = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        build = None
    if not valid_build(build):
        discard("prog", k)
        return None, "cached build refused: malformed build"
    return build, ""


def store(k: dict[str, Any], build: dict[str, Any]) -> bool:
    return store_payload("prog", k, json.dumps(build, sort_keys=True).encode())


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:  # gone already, or a planted directory: never loaded either way
        pass
