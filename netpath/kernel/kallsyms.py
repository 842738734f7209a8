"""Kernel symbol lookups: address -> func+0xoff and name -> real (suffixed) symbol.

/proc/kallsyms has 100k+ lines; as Python tuples and strings they held ~50 MB
for the whole run. Text symbols are kept packed instead (an address array,
one bytes blob of names, an offset array: a few MB), and the set of all
names that `resolve` needs is built only when asked (attach planning).

Reading /proc/kallsyms costs ~0.13 s of kernel time and packing it ~0.2 s
of Python, before the start line. The packed index is therefore cached for
this boot (KASLR moves every address at boot) and this set of modules, in
the private program cache (root's addresses stay root's), and checked like
every cache entry there.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import operator
import os
import re
from array import array
from collections.abc import Callable
from pathlib import Path

from netpath.memory import trim_heap

# GCC clones a function under a suffixed name; the probe must use the real one.
_CLONE_SUFFIX = re.compile(r"^(?P<base>[\w$]+?)(?:\.(?:isra|constprop|part|cold|llvm)\.\d+)+$")
_TEXT_LINE = re.compile(rb"^([0-9a-fA-F]+) [tTwW] (\S+)", re.M)
_ANY_LINE = re.compile(rb"^[0-9a-fA-F]+ \S (\S+)", re.M)


# No kernel function is this long: a frame further than this from the nearest symbol has none of its own.
_LONGEST_FUNCTION = 1 << 20
# x86-64 modules and BPF JIT images live above this (Documentation/arch/x86/x86_64/mm.rst, "module mapping
# space"); kernel text is below it.
_MODULE_AREA = 0xFFFFFFFFA0000000


class Kallsyms:
    def __init__(self, raw: Callable[[], bytes], packed: tuple[array, array, bytes] | None = None) -> None:
        self._raw = raw
        self._addrs = array("Q")
        self._offsets = array("I", [0])
        self._blob = b""
        self._all: set[str] | None = None
        if packed is None:
            self._pack(raw())
        else:
            self._addrs, self._offsets, self._blob = packed

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
    def load(cls, path: Path, cached: bool = False) -> Kallsyms:
        """From `path`; with `cached` (the running kernel's /proc/kallsyms), through the boot's cached index."""
        def read() -> bytes:
            try:
                return path.read_bytes()
            except OSError:
                return b""

        if not cached:
            return cls(read)
        from netpath.kernel import progcache

        key = cache_key()
        payload, _why = progcache.load_payload("kallsyms", key)
        packed = unpack_index(payload) if payload is not None else None
        if packed is not None:
            return cls(read, packed)
        made = cls(read)
        if made.has_addresses:  # an unprivileged reader sees zeros: nothing worth keeping
            progcache.store_payload("kallsyms", key, made.pack_index())
        return made

    def pack_index(self) -> bytes:
        """The packed index as bytes: a JSON line of counts, then addresses, offsets and names."""
        head = json.dumps({"n": len(self._addrs), "blob": len(self._blob)}).encode() + b"\n"
        return head + self._addrs.tobytes() + self._offsets.tobytes() + self._blob

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

    def frame(self, addr: int) -> str:
        """A stack frame: `func+0xoff`, or `BPF` for a JIT-compiled BPF program.

        The index is cached per boot, and BPF programs come and go after it was built, so a JIT address
        often has no symbol of its own: the nearest one below it is then a section end (`_einittext`) or
        a symbol megabytes away, and `_einittext+0x3ca3af62` would name a function that is not there."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or addr == 0:
            return f"0x{addr:x}"
        name = self._name(i)
        if name.startswith("bpf_prog_"):
            return f"BPF {name}"
        if addr - self._addrs[i] >= _LONGEST_FUNCTION or name.startswith(("_e", "__stop_", "__end_")):
            return f"BPF 0x{addr:x}" if addr >= _MODULE_AREA else f"0x{addr:x}"
        return f"{name}+0x{addr - self._addrs[i]:x}"

    def text_range(self, name: str) -> tuple[int, int] | None:
        """[start, end) of function `name`'s text: its address to the next symbol's; None when unknown.

        A lookup in the packed index (bytes.find over the names, checked against the offsets), not a
        scan of /proc/kallsyms: that read and regex cost ~0.1 s each call, at every drops start."""
        i = self._find(name.encode())
        if i is None:
            return None
        start = self._addrs[i]
        j = bisect.bisect_right(self._addrs, start)
        return (start, self._addrs[j]) if j < len(self._addrs) else None

    def _find(self, want: bytes) -> int | None:
        """The index of the first text symbol named exactly `want` (names are packed without separators,
        so a hit counts only where it starts and ends on a name's boundary)."""
        if not want:
            return None
        offsets, pos = self._offsets, self._blob.find(want)
        while pos >= 0:
            i = bisect.bisect_left(offsets, pos)
            if i < len(offsets) - 1 and offsets[i] == pos and offsets[i + 1] == pos + len(want):
                return i
            pos = self._blob.find(want, pos + 1)
        return None

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


def cache_key() -> dict[str, str]:
    """What the running kernel's symbol addresses depend on: this boot, its build, its modules."""
    def read(path: str) -> str:
        try:
            with open(path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return ""

    return {"format": "1", "boot": read("/proc/sys/kernel/random/boot_id"), "build": read("/sys/kernel/notes"),
            "release": os.uname().release, "modules": read("/proc/modules")}


def unpack_index(payload: bytes) -> tuple[array, array, bytes] | None:
    """pack_index's bytes back as arrays, when they are consistent (sorted, offsets inside the blob)."""
    head, _, rest = payload.partition(b"\n")
    try:
        counts = json.loads(head)
        n, blob_len = int(counts["n"]), int(counts["blob"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        return None
    addrs, offsets = array("Q"), array("I")
    a_len, o_len = n * addrs.itemsize, (n + 1) * offsets.itemsize
    if n <= 0 or blob_len < 0 or len(rest) != a_len + o_len + blob_len:
        return None
    addrs.frombytes(rest[:a_len])
    offsets.frombytes(rest[a_len:a_len + o_len])
    blob = rest[a_len + o_len:]
    if offsets[0] != 0 or offsets[-1] != blob_len:
        return None
    if not all(map(operator.le, offsets, offsets[1:])) or not all(map(operator.le, addrs, addrs[1:])):
        return None
    return addrs, offsets, blob
