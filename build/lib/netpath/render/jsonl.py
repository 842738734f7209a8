"""JSON Lines on stdout: one compact object per line (netpath.render.records builds them)."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from netpath.render.records import SCHEMA, record

__all__ = ["SCHEMA", "emit", "record"]


def emit(obj: dict[str, Any], out: IO[str] | None = None) -> None:
    stream = out or sys.stdout
    stream.write(json.dumps(obj, separators=(",", ":")) + "\n")
    stream.flush()
