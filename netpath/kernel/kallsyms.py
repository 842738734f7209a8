"""Kernel symbol lookups: address -> func+0xoff and name -> real (suffixed) symbol.

/proc/kallsyms has 100k+ lines; as Python tuples and strings they held ~50 MB
for the whole run. Text symbols are kept packed instead (an address array,
one bytes blob of names, an offset array: a few MB), and the set of all
names that `resolve` needs is built only when asked (attach planning).
"""

from __future__ import annotations

import bisect
import re
from array import array
from collections.abc import Callable
from pathlib import Path

from netpath.memory import trim_heap

# GCC clones a function under a suffixed name; the probe must use the real one.
_CLONE_SUFFIX = re.compile(r"^(?P<base>[\w$]+?)(?:\.(?:isra|constprop|part|cold|llvm)\.\d+)+$")
_TEXT_LINE = re.compile(rb"^([0-9a-fA-F]+) [tTwW] (\S+)", re.M)
_ANY_LINE = re.compile(rb"^[0-9a-fA-F]+ \S (\S+)", re.M)


class Kallsyms:
    def __init__(self, raw: Callable[[], bytes]) -> None:
        self._raw = raw
        self._addrs = array("Q")
        self._offsets = array("I", [0])
        self._blob = b""
        self._all: set[str] | None = None
        self._pack(raw())

    def _pack(self, data: bytes) -> None:
        addrs = array("Q")
        names: list[bytes] = []
        for m in _TEXT_LINE.finditer(data):
            addr = int(m.group(1), 16)
            if addr:  # zero when kptr_restrict hides addresses
                addrs.append(addr)
                names.append(m.group(2))
        if any(addrs[i] > addrs[i + 1] for i in range(len(addrs) - 1)):
            order = sorted(range(len(addrs)), key=addrs.__getitem__)
            addrs = array("Q", (addrs[i] for i in order))
            names = [names[i] for i in order]
        offsets = array("I", [0])
        pos = 0
        for n in names:
            pos += len(n)
            offsets.append(pos)
        self._addrs, self._offsets, self._blob = addrs, offsets, b"".join(names)
        del names
        trim_heap()

    @classmethod
    def parse(cls, text: str) -> Kallsyms:
        data = text.encode()
        return cls(lambda: data)

    @classmethod
    def load(cls, path: Path) -> Kallsyms:
        def read() -> bytes:
            try:
                return path.read_bytes()
            except OSError:
                return b""

        return cls(read)

    @property
    def has_addresses(self) -> bool:
        return bool(self._addrs)

    def _name(self, i: int) -> str:
        return self._blob[self._offsets[i]:self._offsets[i + 1]].decode(errors="replace")

    def symbolize(self, addr: int) -> str:
        """`func+0xoff` for a kernel text address; hex when unknown."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or addr == 0:
            return f"0x{addr:x}"
        return f"{self._name(i)}+0x{addr - self._addrs[i]:x}"

    def text_range(self, name: str) -> tuple[int, int] | None:
        """[start, end) of function `name`'s text: its address to the next symbol's; None when unknown."""
        m = re.search(rb"^([0-9a-fA-F]+) [tT] " + re.escape(name.encode()) + rb"$", self._raw(), re.M)
        if not m or not int(m.group(1), 16):
            return None
        start = int(m.group(1), 16)
        i = bisect.bisect_right(self._addrs, start)
        return (start, self._addrs[i]) if i < len(self._addrs) else None

    def resolve(self, name: str) -> str | None:
        """The symbol to probe for function `name`: itself, else a .isra/.constprop clone."""
        if self._all is None:
            self._all = {m.group(1).decode(errors="replace") for m in _ANY_LINE.finditer(self._raw())}
        if name in self._all:
            return name
        clones = sorted(
            n for n in self._all if n.startswith(name + ".") and (m := _CLONE_SUFFIX.match(n)) and m["base"] == name
        )
        return clones[0] if clones else None
