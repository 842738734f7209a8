"""Where netpath's cache lives, and the facts derived from BTF cached per kernel build (its hash).

The entries themselves are kept in the one private store (netpath/bpfload/cache.py: 0700, entries 0600
with their key and checksum); this module finds the cache root (root's /var/cache/netpath, a user's
XDG_CACHE_HOME), makes it with fixed modes whatever the umask, and refuses one another user owns.
What is read back is validated as well: a corrupt entry is rebuilt, never fatal.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netpath.errors import MissingCapability
from netpath.kernel import caps

CACHE_VERSION = 3
SYSTEM_CACHE = Path("/var/cache/netpath")  # root's; an unprivileged user's lives under XDG_CACHE_HOME
DIR_MODE = 0o755

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
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


def temp_name(name: str) -> str:
    return f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp"


def create_private(dir_fd: int, name: str, mode: int) -> int:
    """A new file `name` in dir_fd with exactly `mode`; never follows or reuses what is already there."""
    fd = os.open(name, _CREATE_FLAGS, mode, dir_fd=dir_fd)
    os.fchmod(fd, mode)
    return fd


def _decode(raw: bytes | None, valid: Callable[[Any], bool]) -> tuple[bool, Any]:
    """(True, value) when raw is JSON that `valid` accepts."""
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
    boot = _boot_key(btf_path, st.st_size) if st else None
    digest = _boot_digest(boot) if boot else None
    if digest is None:
        digest = hashlib.sha256(read_btf(btf_path)).hexdigest()[:24]
        if boot:
            from netpath.bpfload import cache as store  # the store imports this module for the cache root

            store.store_payload("btf-digest", boot, digest.encode())
    if ident is not None:
        _DIGESTS[ident] = digest
    return digest


RUNNING_BTF = "/sys/kernel/btf/vmlinux"
_DIGEST_LEN = 24


def _boot_key(btf_path: Path, size: int) -> dict[str, Any] | None:
    """The running kernel's own BTF is part of its image: it cannot change before a reboot, so its hash is
    cached per boot (boot_id) and build (the kernel's notes, its build id), and a start reads 5 MB and
    hashes them (8 ms here) once per boot, not once per run. Any other file (a captured tree) is hashed."""
    if str(btf_path) != RUNNING_BTF:
        return None
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = f.read().strip().decode("ascii", "replace")
        with open("/sys/kernel/notes", "rb") as f:
            build = hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None
    return {"format": 1, "boot": boot, "build": build, "size": size, "release": os.uname().release}


def _boot_digest(key: dict[str, Any]) -> str | None:
    from netpath.bpfload import cache as store

    raw = store.load_payload("btf-digest", key)[0]
    try:
        text = raw.decode("ascii") if raw is not None else ""
    except UnicodeDecodeError:
        return None
    return text if len(text) == _DIGEST_LEN and all(c in "0123456789abcdef" for c in text) else None


def cached_json(btf_path: Path, kind: str, compute: Callable[[bytes], Any], use_cache: bool = True, *,
                valid: Callable[[Any], bool]) -> Any:
    """compute(blob) once per kernel build; later runs read the JSON it returned if `valid` accepts it.

    `valid` is required: whatever is read back from disk is checked for the shape compute() returns,
    so a corrupt or truncated entry is rebuilt instead of breaking every later run.
    """
    if not use_cache:
        return compute(read_btf(btf_path))
    from netpath.bpfload import cache as store  # the store imports this module for the cache root

    key = {"format": CACHE_VERSION, "btf": btf_digest(btf_path)}
    ok, value = _decode(store.load_payload(kind, key)[0], valid)
    if ok:
        return value
    value = compute(read_btf(btf_path))
    store.store_payload(kind, key, json.dumps(value, sort_keys=True).encode())
    return value


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a short write is not an error)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
