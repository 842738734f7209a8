"""Drop reason names, decoded from the running kernel, never from a table of ours.

Sources, best first: BTF `enum skb_drop_reason` (core reasons) with
`enum skb_drop_reason_subsys` for reasons carrying a subsystem in the high 16
bits (6.4+), then the kfree_skb tracepoint's own __print_symbolic table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from netpath.errors import MissingCapability
from netpath.kernel.btf import BTF, KIND_ENUM, KIND_ENUM64, BTFError
from netpath.kernel.cache import cached_json

SUBSYS_SHIFT = 16
_CORE_PREFIX = "SKB_DROP_REASON_"
_SUBSYS_PREFIX = "SKB_DROP_REASON_SUBSYS_"


@dataclass
class DropReasons:
    core: dict[int, str] = field(default_factory=dict)
    subsystems: dict[int, str] = field(default_factory=dict)
    subsystem_reasons: dict[int, str] = field(default_factory=dict)
    source: str = "none"

    def name(self, code: int) -> str:
        if code in self.core:
            return self.core[code]
        if code in self.subsystem_reasons:
            return self.subsystem_reasons[code]
        subsys = code >> SUBSYS_SHIFT
        if subsys and subsys in self.subsystems:
            return f"{self.subsystems[subsys]}:{code & 0xFFFF}"
        return f"UNKNOWN_{code}"

    def code(self, name: str) -> int | None:
        """The code for a reason name as the user typed it (case-insensitive, prefix optional)."""
        wanted = name.strip().upper()
        if wanted.startswith(_CORE_PREFIX):
            wanted = wanted[len(_CORE_PREFIX) :]
        for table in (self.core, self.subsystem_reasons):
            for code, label in table.items():
                if label == wanted:
                    return code
        return None

    def names(self) -> list[str]:
        return [self.core[c] for c in sorted(self.core)] + sorted(self.subsystem_reasons.values())


def _strip(name: str) -> str:
    if name.startswith(_CORE_PREFIX):
        return name[len(_CORE_PREFIX) :]
    if name.startswith("SKB_"):
        return name[len("SKB_") :]
    return name


def from_btf(btf: BTF, module_btfs: dict[str, BTF] | None = None) -> DropReasons:
    enum = btf.enum("skb_drop_reason")
    core = {v: _strip(k) for k, v in enum.items() if not k.endswith(("_MAX", "_SUBSYS_MASK"))}
    subsystems: dict[int, str] = {}
    if btf.has("skb_drop_reason_subsys", (KIND_ENUM, KIND_ENUM64)):
        for k, v in btf.enum("skb_drop_reason_subsys").items():
            if k.startswith(_SUBSYS_PREFIX) and not k.endswith("_NUM") and v:
                subsystems[v] = k[len(_SUBSYS_PREFIX) :]
    subsystem_reasons: dict[int, str] = {}
    for mod_btf in (module_btfs or {}).values():
        for enum_name in mod_btf.enums_with_prefix(""):
            if not enum_name.endswith("drop_reason"):
                continue
            for k, v in mod_btf.enum(enum_name).items():
                if (v >> SUBSYS_SHIFT) in subsystems and not k.endswith(("_MAX", "_NUM")):
                    subsystem_reasons[v] = k
    return DropReasons(core, subsystems, subsystem_reasons, "btf")


def from_tracepoint(symbols: dict[int, str]) -> DropReasons:
    return DropReasons(dict(symbols), {}, {}, "tracepoint")


def load(btf_path: Path | None, tracepoint_symbols: dict[int, str] | None, use_cache: bool = True) -> DropReasons:
    if btf_path is not None and btf_path.exists():
        try:
            tables = cached_json(btf_path, "reasons", lambda blob: _tables(blob, btf_path.parent), use_cache,
                                 valid=valid_cached)
            core, subsystems, subsystem_reasons = ({int(k): v for k, v in t.items()} for t in tables)
            return DropReasons(core, subsystems, subsystem_reasons, "btf")
        except (BTFError, MissingCapability):  # unparsable or unreadable BTF: the tracepoint's own table will do
            pass
    if tracepoint_symbols:
        return from_tracepoint(tracepoint_symbols)
    return DropReasons()


def valid_cached(value: object) -> bool:
    """Three tables of code -> name, as _tables() returns them once through JSON (keys become strings)."""
    if not isinstance(value, list) or len(value) != 3:
        return False
    for table in value:
        if not isinstance(table, dict):
            return False
        for code, name in table.items():
            if not (isinstance(code, str) and code.isascii() and code.isdigit() and int(code) < 1 << 32):
                return False
            if not isinstance(name, str) or not name:
                return False
    return True


def _tables(blob: bytes, btf_dir: Path) -> list[dict[int, str]]:
    got = from_btf(BTF(blob), _module_btfs(btf_dir))
    return [got.core, got.subsystems, got.subsystem_reasons]


def _module_btfs(btf_dir: Path) -> dict[str, BTF]:
    """Split BTF of modules that define subsystem drop reasons (mac80211, openvswitch)."""
    out: dict[str, BTF] = {}
    base = btf_dir / "vmlinux"
    for mod in ("mac80211", "openvswitch"):
        path = btf_dir / mod
        if path.exists():
            try:
                out[mod] = BTF(path.read_bytes(), base=BTF.from_path(base))
            except (BTFError, OSError):
                continue
    return out
