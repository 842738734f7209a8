"""The file a saved doctor window lives in: `--save FILE` (written by root, so created 0600 and never through
a symbolic link or over an existing file) and `--load FILE` (read by anyone, bounded in size)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from netpath.errors import BadInput

MODE = 0o600
MAX_BYTES = 256 * 1024 * 1024  # a window with every namespace and thousands of rows is a few MB
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def check_target(spec: str) -> None:
    """Refuse a --save target before anything is loaded: it must not exist, its directory must."""
    path = Path(spec)
    if os.path.lexists(path):
        raise BadInput(f"--save {spec!r} exists: netpath never overwrites a file (remove it or pick another)")
    if not path.parent.is_dir():
        raise BadInput(f"--save {spec!r}: no directory {str(path.parent)!r}")


def write(spec: str, doc: dict[str, Any]) -> None:
    try:
        fd = os.open(spec, _FLAGS, MODE)
    except FileExistsError:
        raise BadInput(f"--save {spec!r} exists: netpath never overwrites a file") from None
    except OSError as exc:
        raise BadInput(f"--save {spec!r}: {exc.strerror or exc}") from None
    os.fchmod(fd, MODE)  # whatever the umask
    with os.fdopen(fd, "w") as out:
        json.dump(doc, out, separators=(",", ":"), sort_keys=True)
        out.write("\n")


def read(spec: str) -> Any:
    try:
        fd = os.open(spec, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise BadInput(f"--load {spec!r}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"--load {spec!r} is not a regular file")
        if st.st_size > MAX_BYTES:
            raise BadInput(f"--load {spec!r}: {st.st_size} bytes, more than a saved window can be ({MAX_BYTES})")
        data = f.read(MAX_BYTES + 1)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"--load {spec!r}: not JSON ({' '.join(str(exc).split())})") from None
