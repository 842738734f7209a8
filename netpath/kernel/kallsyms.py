"""Kernel symbol lookups: address -> func+0xoff and name -> real (suffixed) symbol."""

from __future__ import annotations

import bisect
import re
from pathlib import Path

# GCC clones a function under a suffixed name; the probe must use the real one.
_CLONE_SUFFIX = re.compile(r"^(?P<base>[\w$]+?)(?:\.(?:isra|constprop|part|cold|llvm)\.\d+)+$")
_TEXT_TYPES = frozenset("tTwW")


class Kallsyms:
    def __init__(self, text_symbols: list[tuple[int, str]], all_names: set[str]) -> None:
        text = sorted(text_symbols)
        self._addrs = [a for a, _ in text]
        self._names = [n for _, n in text]
        self._all = all_names

    @classmethod
    def parse(cls, text: str) -> Kallsyms:
        text_symbols: list[tuple[int, str]] = []
        names: set[str] = set()
        for line in text.splitlines():
            parts = line.split(None, 3)
            if len(parts) < 3:
                continue
            names.add(parts[2])
            if parts[1] in _TEXT_TYPES:
                try:
                    addr = int(parts[0], 16)
                except ValueError:
                    continue
                if addr:
                    text_symbols.append((addr, parts[2]))
        return cls(text_symbols, names)

    @classmethod
    def load(cls, path: Path) -> Kallsyms:
        try:
            return cls.parse(path.read_text())
        except OSError:
            return cls([], set())

    @property
    def has_addresses(self) -> bool:
        return bool(self._addrs)

    def symbolize(self, addr: int) -> str:
        """`func+0xoff` for a kernel text address; hex when unknown."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or addr == 0:
            return f"0x{addr:x}"
        return f"{self._names[i]}+0x{addr - self._addrs[i]:x}"

    def resolve(self, name: str) -> str | None:
        """The symbol to probe for function `name`: itself, else a .isra/.constprop clone."""
        if name in self._all:
            return name
        clones = sorted(
            n for n in self._all if n.startswith(name + ".") and (m := _CLONE_SUFFIX.match(n)) and m["base"] == name
        )
        return clones[0] if clones else None
