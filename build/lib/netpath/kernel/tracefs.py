"""Tracepoint format files: fields and the kernel's own symbolic tables."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_FIELD_RE = re.compile(
    r"field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);"
)
_SYMBOLIC_RE = re.compile(r"__print_symbolic\(\s*REC->(?P<field>\w+)\s*,(?P<body>.*?)\)\s*(?:,|$)", re.S)
_PAIR_RE = re.compile(r"\{\s*(-?\w+)\s*,\s*\"([^\"]*)\"\s*\}")


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str
    offset: int
    size: int
    signed: bool


@dataclass
class TracepointFormat:
    name: str
    id: int
    fields: dict[str, Field]
    print_fmt: str
    symbols: dict[str, dict[int, str]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.fields


def _field_name(decl: str) -> tuple[str, str]:
    decl = decl.strip()
    decl = re.sub(r"\[[^\]]*\]$", "", decl)
    m = re.match(r"(?P<type>.*?)(?P<name>\w+)$", decl)
    if not m:
        return decl, decl
    return m.group("name"), m.group("type").strip()


def parse_format(text: str) -> TracepointFormat:
    name = ""
    tp_id = -1
    fields: dict[str, Field] = {}
    print_fmt = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("name:"):
            name = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("ID:"):
            tp_id = int(stripped.split(":", 1)[1])
        elif stripped.startswith("print fmt:"):
            print_fmt = stripped.split(":", 1)[1].strip()
        else:
            m = _FIELD_RE.search(stripped)
            if m:
                fname, ctype = _field_name(m.group("decl"))
                if fname.startswith("common_"):
                    continue
                fields[fname] = Field(
                    fname, ctype, int(m.group("offset")), int(m.group("size")), m.group("signed") == "1"
                )
    symbols: dict[str, dict[int, str]] = {}
    for m in _SYMBOLIC_RE.finditer(print_fmt):
        table: dict[int, str] = {}
        for code, label in _PAIR_RE.findall(m.group("body")):
            try:
                table[int(code, 0)] = label
            except ValueError:
                continue
        if table:
            symbols[m.group("field")] = table
    return TracepointFormat(name, tp_id, fields, print_fmt, symbols)
