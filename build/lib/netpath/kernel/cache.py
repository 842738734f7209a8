"""Per-kernel-build cache of facts derived from BTF (keyed by the BTF blob's hash).

The cache is a trust boundary: root compiles the header shim from it and
believes the offsets and drop reasons in it. So the directory and every entry
must be owned by root (the effective uid) and not writable by group or others,
whatever the umask was when they were made; anything else is refused and
rebuilt. Entries are written to a fresh temp file (O_EXCL|O_NOFOLLOW) inside
the verified directory and renamed into place, and what is read back is
validated: a corrupt entry is rebuilt, never fatal.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netpath.errors import MissingCapability
from netpath.kernel import caps

CACHE_VERSION = 2
SYSTEM_CACHE = Path("/var/cache/netpath")  # root's; an unprivileged user's lives under XDG_CACHE_HOME
DIR_MODE = 0o755
FILE_MODE = 0o644
MAX_ENTRY_BYTES = 16 << 20  # far above any real entry (offsets ~1 KB, reasons ~10 KB)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a planted FIFO can't hang us
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def cache_dir() -> Path:
    configured = caps.env_path("NETPATH_CACHE")
    if configured is not None:
        return configured
    if os.geteuid() == 0:
        return SYSTEM_CACHE
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no HOME and no passwd entry (a bare uid in a container)
            return Path(tempfile.gettempdir()) / f"netpath-{os.geteuid()}"
    return Path(base) / "netpath"


def _make_dirs(path: Path) -> None:
    """mkdir -p with DIR_MODE for every directory made, whatever the umask."""
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue  # another netpath made it; open_dir checks whose it is
        fd = os.open(directory, DIR_FLAGS)
        try:
            os.fchmod(fd, DIR_MODE)
        finally:
            os.close(fd)


def open_dir(path: Path, create: bool = True) -> int | None:
    """An fd on the cache directory once it is verified ours and private to write, else None.

    A directory we own but that is group/other-writable is tightened to DIR_MODE; its entries are
    then checked one by one as they are read.
    """
    if caps.untrusted_reason(path.parent, container=True) is not None:
        return None
    try:
        if create:
            _make_dirs(path)
        fd = os.open(path, DIR_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, "not our cache directory")
        if st.st_mode & 0o022:
            os.fchmod(fd, DIR_MODE)
    except OSError:
        os.close(fd)
        return None
    return fd


def entry_is_trusted(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and caps.trusted_owner(st.st_uid) and not st.st_mode & 0o022


def read_entry(dir_fd: int, name: str) -> bytes | None:
    """The bytes of a cache entry we can trust, else None (missing, a symlink, foreign, too open)."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not entry_is_trusted(st) or st.st_size > MAX_ENTRY_BYTES:
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def temp_name(name: str) -> str:
    return f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"


def create_private(dir_fd: int, name: str, mode: int = FILE_MODE) -> int:
    """A new file `name` in dir_fd with exactly `mode`; never follows or reuses what is already there."""
    fd = os.open(name, _CREATE_FLAGS, mode, dir_fd=dir_fd)
    os.fchmod(fd, mode)
    return fd


def write_entry(dir_fd: int, name: str, data: bytes) -> bool:
    """Atomically replace entry `name` with `data` (rename replaces a planted symlink, never follows it)."""
    tmp = temp_name(name)
    try:
        fd = create_private(dir_fd, tmp)
    except OSError:
        return False
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return True
    except OSError:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        return False


def _decode(raw: bytes | None, valid: Callable[[Any], bool]) -> tuple[bool, Any]:
    if raw is None:
        return False, None
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False, None
    try:
        return bool(valid(value)), value
    except Exception:  # a validator meeting a shape it did not expect: the entry is junk
        return False, None


def read_btf(btf_path: Path) -> bytes:
    try:
        return btf_path.read_bytes()
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):  # the cause is the open-file limit, not root
            from netpath.kernel import limits

            raise MissingCapability(f"cannot read the kernel's BTF at {btf_path}: {limits.advice()}") from None
        raise MissingCapability(f"cannot read the kernel's BTF at {btf_path} ({exc.strerror}): netpath reads "
                                "struct layouts and drop reasons from it; run it as root") from None


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def btf_digest(btf_path: Path) -> str:
    """The BTF blob's hash, read and hashed once per process while the file stays the same (several
    cached facts are keyed by it: each lookup reading ~5 MB again cost start-up time and peak memory)."""
    try:
        st = os.stat(btf_path)
    except OSError:
        st = None
    ident = (str(btf_path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) if st else None
    if ident is not None and ident in _DIGESTS:
        return _DIGESTS[ident]
    digest = hashlib.sha256(read_btf(btf_path)).hexdigest()[:24]
    if ident is not None:
        _DIGESTS[ident] = digest
    return digest


def cached_json(btf_path: Path, kind: str, compute: Callable[[bytes], Any], use_cache: bool = True, *,
                valid: Callable[[Any], bool]) -> Any:
    """compute(blob) once per kernel build; later runs read the JSON it returned if `valid` accepts it.

    `valid` is required: whatever is read back from disk is checked for the shape compute() returns,
    so a corrupt or truncated entry is rebuilt instead of breaking every later run.
    """
    if not use_cache:
        return compute(read_btf(btf_path))
    digest = btf_digest(btf_path)
    name = f"{kind}-v{CACHE_VERSION}-{digest}.json"
    dir_fd = open_dir(cache_dir())
    if dir_fd is None:  # no trustworthy cache here: compute every time rather than fail
        return compute(read_btf(btf_path))
    try:
        ok, value = _decode(read_entry(dir_fd, name), valid)
        if ok:
            return value
        value = compute(read_btf(btf_path))
        write_entry(dir_fd, name, json.dumps(value, sort_keys=True).encode())
        return value
    finally:
        os.close(dir_fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a short write is not an error)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
