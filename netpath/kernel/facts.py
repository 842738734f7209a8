"""Facts about the running kernel, read from a root directory.

Production reads from "/"; unit tests point `root` at a fixture tree laid out
like the real one (proc/, sys/, lib/modules/), so nothing here needs root.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from netpath.errors import MissingCapability
from netpath.kernel import caps
from netpath.kernel.kallsyms import Kallsyms
from netpath.kernel.tracefs import TracepointFormat, parse_format

TRACEFS_CANDIDATES = ("sys/kernel/tracing", "sys/kernel/debug/tracing")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


@dataclass
class KernelFacts:
    root: Path = Path("/")
    _formats: dict[str, TracepointFormat | None] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, root: Path | str = "/", mount_tracefs: bool = False) -> KernelFacts:
        """Facts from `root`; with mount_tracefs, tracefs is mounted if need be or MissingCapability says why not."""
        facts = cls(_trusted_root(root))
        if mount_tracefs:
            facts.mount_tracefs()
        return facts

    def mount_tracefs(self) -> None:
        """Mounts tracefs on the running kernel if it is not (a fixture root is left as it is)."""
        if self.tracefs is not None or self.root != Path("/"):
            return
        self.require_readable_tracefs()
        _mount_tracefs()
        self.__dict__.pop("tracefs", None)
        self.__dict__.pop("tracepoints", None)
        if self.tracefs is None:
            raise MissingCapability(f"tracefs is mounted at /{TRACEFS_MOUNT} but has no events/ directory: "
                                    "this kernel lacks tracepoints (CONFIG_TRACING)")

    def unreadable_tracefs(self) -> Path | None:
        """A tracefs that is there but that this user may not read (it is mode 0700, root's, by default)."""
        for rel in TRACEFS_CANDIDATES:
            try:
                os.stat(self.root / rel / "events")
            except PermissionError:
                return self.root / rel
            except OSError:
                continue
        return None

    def require_readable_tracefs(self) -> None:
        denied = self.unreadable_tracefs()
        if denied is not None:
            raise MissingCapability(f"{denied} is not readable by uid {os.geteuid()}: netpath reads the kernel's "
                                    "tracepoints there; run it as root (sudo netpath ...)")

    @cached_property
    def release(self) -> str:
        return (_read(self.root / "proc/sys/kernel/osrelease") or "unknown").strip()

    @cached_property
    def version(self) -> str:
        return (_read(self.root / "proc/version") or "").strip()

    @cached_property
    def release_tuple(self) -> tuple[int, int, int]:
        m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", self.release)
        if not m:
            return 0, 0, 0
        return int(m[1]), int(m[2]), int(m[3] or 0)

    @property
    def btf_path(self) -> Path:
        return self.root / "sys/kernel/btf/vmlinux"

    @property
    def has_btf(self) -> bool:
        return self.btf_path.exists()

    @cached_property
    def tracefs(self) -> Path | None:
        for rel in TRACEFS_CANDIDATES:
            path = self.root / rel
            try:
                if (path / "events").is_dir():
                    return path
            except OSError:  # is_dir() raises on EACCES in some Pythons
                continue
        return None

    @cached_property
    def tracepoints(self) -> frozenset[str]:
        """Every "subsystem:event" the kernel offers."""
        if self.tracefs is None:
            return frozenset()
        text = _read(self.tracefs / "available_events")
        if text is not None:
            return frozenset(line.strip() for line in text.splitlines() if ":" in line)
        events = self.tracefs / "events"
        try:
            return frozenset(
                f"{sub.name}:{ev.name}" for sub in events.iterdir() if sub.is_dir()
                for ev in sub.iterdir() if ev.is_dir()
            )
        except OSError:  # partly readable: report none rather than a traceback
            return frozenset()

    def has_tracepoint(self, name: str) -> bool:
        return name in self.tracepoints

    def tracepoint_format(self, name: str) -> TracepointFormat | None:
        if name not in self._formats:
            fmt = None
            if self.tracefs is not None:
                sub, event = name.split(":", 1)
                text = _read(self.tracefs / "events" / sub / event / "format")
                fmt = parse_format(text) if text else None
            self._formats[name] = fmt
        return self._formats[name]

    @cached_property
    def kallsyms(self) -> Kallsyms:
        return Kallsyms.load(self.root / "proc/kallsyms", cached=self.root == Path("/"))

    def text_ranges(self, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
        """[start, end) of each function of `names` that kallsyms has. For the running kernel this comes
        from a few bytes cached per boot and module set (the whole symbol index costs ~80 ms to load),
        taken from the index the first time."""
        if self.root != Path("/"):
            return self._ranges_from_index(names)
        from netpath.kernel import kallsyms, progcache

        key = kallsyms.cache_key() | {"text_ranges": ",".join(names)}
        payload, _why = progcache.load_payload("textrange", key)
        if payload is not None:
            try:
                cached = json.loads(payload)
                return {str(n): (int(lo), int(hi)) for n, (lo, hi) in cached.items()}
            except (ValueError, TypeError, AttributeError, RecursionError):
                pass
        found = self._ranges_from_index(names)
        if self.kallsyms.has_addresses:
            progcache.store_payload("textrange", key, json.dumps(found).encode())
        return found

    def _ranges_from_index(self, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
        if not self.kallsyms.has_addresses:
            return {}
        return {n: r for n in names if (r := self.kallsyms.text_range(n)) is not None}

    @cached_property
    def config(self) -> dict[str, str]:
        """Kernel config options, from /proc/config.gz or /boot/config-RELEASE when present."""
        text = None
        gz = self.root / "proc/config.gz"
        if gz.exists():
            try:
                text = gzip.decompress(gz.read_bytes()).decode(errors="replace")
            except (OSError, EOFError):
                text = None
        if text is None:
            text = _read(self.root / f"boot/config-{self.release}") or ""
        extra = _read(self.root / "proc/config_kprobes")  # fixture trees carry just the lines they need
        if extra:
            text += "\n" + extra
        out: dict[str, str] = {}
        for line in text.splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                key, value = line.split("=", 1)
                out[key] = value
            elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                out[line[2:].split()[0]] = "n"
        return out

    @cached_property
    def has_kprobes(self) -> bool:
        if (self.root / "sys/bus/event_source/devices/kprobe").exists():
            return True
        if self.tracefs is not None and (self.tracefs / "kprobe_events").exists():
            return True
        return self.config.get("CONFIG_KPROBES") == "y"

    @property
    def kprobe_reason(self) -> str:
        if self.has_kprobes:
            return "kprobes supported"
        if self.config.get("CONFIG_KPROBES") == "n":
            return "kernel built without CONFIG_KPROBES"
        return "no kprobe PMU or kprobe_events in tracefs (CONFIG_KPROBES off?)"

    @property
    def headers_dir(self) -> Path:
        return self.root / "lib/modules" / self.release / "build"

    @property
    def has_headers(self) -> bool:
        return (self.headers_dir / "include").is_dir()


TRACEFS_MOUNT = "sys/kernel/tracing"


def _mount_tracefs() -> None:
    """mount -t tracefs tracefs /sys/kernel/tracing, by the syscall: no mount(8) needed on PATH."""
    libc = ctypes.CDLL(None, use_errno=True)
    target = f"/{TRACEFS_MOUNT}".encode()
    if libc.mount(b"tracefs", target, b"tracefs", ctypes.c_ulong(0), None) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY:  # mounted meanwhile (another netpath): fine
        return
    hint = "run netpath as root" if err in (errno.EPERM, errno.EACCES) else "check that the kernel has CONFIG_TRACING"
    raise MissingCapability(f"tracefs is not mounted and mounting it at /{TRACEFS_MOUNT} failed "
                            f"({os.strerror(err)}): {hint}, or mount it yourself as root: "
                            f"mount -t tracefs tracefs /{TRACEFS_MOUNT}")


def _trusted_root(root: Path | str) -> Path:
    """NETPATH_ROOT redirects every kernel fact netpath reads; as root, one another user controls is ignored."""
    env = os.environ.get("NETPATH_ROOT")
    if env and Path(root) == Path(env) and Path(env) != Path("/"):
        return caps.env_path("NETPATH_ROOT") or Path("/")
    return Path(root)
