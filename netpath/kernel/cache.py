"""Per-kernel-build cache of facts derived from BTF (keyed by the BTF blob's hash)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_VERSION = 2


def cache_dir() -> Path:
    if "NETPATH_CACHE" in os.environ:
        return Path(os.environ["NETPATH_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/netpath")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "netpath"


def cached_json(btf_path: Path, kind: str, compute: Callable[[bytes], Any], use_cache: bool = True) -> Any:
    """compute(blob) once per kernel build; later runs read the JSON it returned."""
    blob = btf_path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()[:24]
    path = cache_dir() / f"{kind}-v{CACHE_VERSION}-{digest}.json"
    if use_cache:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    value = compute(blob)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(value, sort_keys=True))
            tmp.replace(path)
        except OSError:
            pass
    return value
