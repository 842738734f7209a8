"""Where `netpath drops --pcap` writes: a file root creates safely, or standard output.

root writes this file wherever it is told, so it is created 0600 and never
through a symbolic link: a new file with O_CREAT|O_EXCL|O_NOFOLLOW; an
existing one (only with --force) by a fresh 0600 file in the same directory
renamed over it, since rename(2) replaces a link itself and never follows it.
"""

from __future__ import annotations

import os
import signal
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from netpath.errors import BadInput

MODE = 0o600
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _refuse_non_regular(spec: str, st: os.stat_result) -> None:
    """A symlink is never written through, and only a regular file is ever replaced."""
    if stat.S_ISLNK(st.st_mode):
        raise BadInput(f"--pcap {spec!r} is a symbolic link: netpath never writes through one")
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"--pcap {spec!r} exists and is not a regular file")


def _replace(path: Path) -> int:
    """A new 0600 file renamed over `path` (a regular file): the old one is never opened or followed."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise BadInput(f"--pcap {str(path)!r}: {_why(exc)}") from None
    _refuse_non_regular(str(path), st)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise BadInput(f"--pcap {str(path)!r}: cannot create a file beside it: {_why(exc)}") from None
    try:
        os.fchmod(fd, MODE)
        os.rename(tmp, path)
    except OSError as exc:
        os.close(fd)
        os.unlink(tmp)
        raise BadInput(f"--pcap {str(path)!r}: {_why(exc)}") from None
    return fd


def check_target(spec: str, force: bool) -> None:
    """Refuse a target that cannot be written, before anything is loaded (open_file checks again)."""
    path = Path(spec)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise BadInput(f"--pcap {spec!r}: no directory {str(path.parent)!r}") from None
        return
    except OSError as exc:
        raise BadInput(f"--pcap {spec!r}: {_why(exc)}") from None
    _refuse_non_regular(spec, st)
    if not force:
        raise BadInput(f"--pcap {spec!r} exists: add --force to replace it")


def open_file(spec: str, force: bool) -> BinaryIO:
    """The capture file, created 0600; an existing one is replaced only with force. Bad paths: BadInput."""
    path = Path(spec)
    try:
        fd = os.open(path, _FLAGS, MODE)
    except FileExistsError:
        if os.path.islink(path):
            raise BadInput(f"--pcap {spec!r} is a symbolic link: netpath never writes through one") from None
        if not force:
            raise BadInput(f"--pcap {spec!r} exists: add --force to replace it") from None
        fd = _replace(path)
    except OSError as exc:
        raise BadInput(f"--pcap {spec!r}: {_why(exc)}") from None
    os.fchmod(fd, MODE)  # whatever the umask
    # past RLIMIT_FSIZE a write fails with EFBIG instead of SIGXFSZ killing the run: the capture stops, the
    # counting goes on (cli/sinks.PcapSink)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # unbuffered: the writer buffers whole blocks itself and must see how many bytes each write took
    return os.fdopen(fd, "wb", buffering=0)


def cut(out: object, length: int) -> bool:
    """Truncates a regular file back to `length` bytes (its last whole block after a failed write): True when
    it could; a pipe or terminal is left as it is."""
    fileno = getattr(out, "fileno", None)
    try:
        fd = fileno() if callable(fileno) else -1
        if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        os.ftruncate(fd, length)
    except (OSError, ValueError):
        return False
    return True
