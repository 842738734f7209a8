"""JSON Lines on stdout: the machine contract (schema netpath/1)."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

SCHEMA = "netpath/1"


def record(kind: str, **fields: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, "type": kind, **fields}


def emit(obj: dict[str, Any], out: IO[str] | None = None) -> None:
    stream = out or sys.stdout
    stream.write(json.dumps(obj, separators=(",", ":")) + "\n")
    stream.flush()
