"""A small reader for the kernel's BTF: struct member offsets and enums.

Only what netpath needs: walk the type section once, index named structs,
unions and enums, and resolve dotted member paths through anonymous members.
The kernel ships no headers here, so every struct field the BPF programs read
comes from these offsets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

BTF_MAGIC = 0xEB9F

KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

_QUALIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}

# Bytes that follow the 12-byte common header, as (fixed, per vlen entry).
_TRAILER = {
    KIND_INT: (4, 0),
    KIND_ARRAY: (12, 0),
    KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12),
    KIND_ENUM: (0, 8),
    KIND_FUNC_PROTO: (0, 8),
    KIND_VAR: (4, 0),
    KIND_DATASEC: (0, 12),
    KIND_DECL_TAG: (4, 0),
    KIND_ENUM64: (0, 12),
}


class BTFError(Exception):
    """The BTF blob is malformed or lacks what was asked for."""


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


@dataclass(frozen=True)
class FieldInfo:
    """Where a (possibly nested) member lives inside its outermost struct."""

    offset: int
    size: int
    bitfield_size: int = 0


class BTF:
    _str_start: int
    _str_end: int
    def __init__(self, blob: bytes, base: BTF | None = None) -> None:
        if len(blob) < 24:
            raise BTFError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != BTF_MAGIC:
            raise BTFError(f"bad BTF magic 0x{magic:x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        self._blob = blob
        # Module BTF is split: its ids and string offsets continue the base's.
        self._base = base
        self._first_id = len(base._offsets) if base else 1
        self._str_base = base._str_end - base._str_start if base else 0
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        # local index -> byte offset of its header; id 0 is void.
        self._offsets: list[int] = [0] if base is None else []
        self._by_name: dict[str, list[int]] = {}
        self._index()

    @classmethod
    def from_path(cls, path: Path) -> BTF:
        return cls(path.read_bytes())

    def _index(self) -> None:
        blob = self._blob
        pos = self._types_start
        end = self._types_end
        unpack = struct.unpack_from
        indexed_kinds = (KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64)
        offsets = self._offsets
        by_name = self._by_name
        while pos < end:
            name_off, info, _size = unpack("<III", blob, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            offsets.append(pos)
            if kind in indexed_kinds and name_off:
                type_id = len(offsets) - 1 + (self._first_id if self._base else 0)
                by_name.setdefault(self.string(name_off), []).append(type_id)
            fixed, per = _TRAILER.get(kind, (0, 0))
            pos += 12 + fixed + per * vlen

    def string(self, off: int) -> str:
        if self._base is not None:
            if off < self._str_base:
                return self._base.string(off)
            off -= self._str_base
        start = self._str_start + off
        stop = self._blob.index(b"\0", start, self._str_end)
        return self._blob[start:stop].decode()

    def _header(self, type_id: int) -> tuple[int, int, int, int, int]:
        if self._base is not None:
            if type_id < self._first_id:
                return self._base._header(type_id)
            type_id -= self._first_id
        pos = self._offsets[type_id]
        name_off, info, size = struct.unpack_from("<III", self._blob, pos)
        return pos, name_off, (info >> 24) & 0x1F, info & 0xFFFF, size | (info >> 31) << 32

    def kind(self, type_id: int) -> int:
        return self._header(type_id)[2]

    def find(self, name: str, kinds: tuple[int, ...]) -> int:
        for type_id in self._by_name.get(name, []):
            if self.kind(type_id) in kinds:
                return type_id
        if self._base is not None:
            return self._base.find(name, kinds)
        raise BTFError(f"no {name!r} in BTF")

    def typedef_id(self, name: str) -> int | None:
        """The type id of typedef `name` (vmlinux only: btf_trace_<tracepoint>, what tp_btf attaches by)."""
        if self._base is not None:
            return self._base.typedef_id(name)
        at = self._blob.find(b"\0" + name.encode() + b"\0", self._str_start, self._str_end)
        if at < 0:
            return None
        name_off = at + 1 - self._str_start
        for type_id in range(1, len(self._offsets)):
            pos = self._offsets[type_id]
            if struct.unpack_from("<I", self._blob, pos)[0] == name_off and self.kind(type_id) == KIND_TYPEDEF:
                return type_id
        return None

    def has(self, name: str, kinds: tuple[int, ...]) -> bool:
        if any(self.kind(t) in kinds for t in self._by_name.get(name, [])):
            return True
        return self._base is not None and self._base.has(name, kinds)

    def _in_base(self, type_id: int) -> bool:
        return self._base is not None and type_id < self._first_id

    def members(self, type_id: int) -> list[Member]:
        if self._in_base(type_id):
            assert self._base is not None
            return self._base.members(type_id)
        pos, _name, kind, vlen, info_size = self._header(type_id)
        if kind not in (KIND_STRUCT, KIND_UNION):
            raise BTFError(f"type {type_id} is not a struct or union")
        kind_flag = info_size >> 32
        out = []
        base = pos + 12
        for i in range(vlen):
            name_off, mtype, moff = struct.unpack_from("<III", self._blob, base + 12 * i)
            bitfield = 0
            if kind_flag:
                bitfield = moff >> 24
                moff &= 0xFFFFFF
            out.append(Member(self.string(name_off) if name_off else "", mtype, moff, bitfield))
        return out

    def resolve(self, type_id: int) -> int:
        """Strip typedefs and qualifiers."""
        for _ in range(64):
            _pos, _name, kind, _vlen, size = self._header(type_id)
            if kind not in _QUALIFIERS:
                return type_id
            type_id = size & 0xFFFFFFFF
        raise BTFError("type chain too deep")

    def size_of(self, type_id: int) -> int:
        type_id = self.resolve(type_id)
        if self._in_base(type_id):
            assert self._base is not None
            return self._base.size_of(type_id)
        pos, _name, kind, _vlen, size = self._header(type_id)
        if kind in (KIND_STRUCT, KIND_UNION, KIND_INT, KIND_ENUM, KIND_ENUM64, KIND_FLOAT):
            return size & 0xFFFFFFFF
        if kind == KIND_PTR:
            return 8
        if kind == KIND_ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", self._blob, pos + 12)
            return self.size_of(elem) * nelems
        raise BTFError(f"type {type_id} has no size")

    def _find_member(self, type_id: int, name: str) -> tuple[int, Member] | None:
        """Find `name` in a struct, looking through anonymous members; returns (bit offset, member)."""
        for member in self.members(type_id):
            if member.name == name:
                return member.bit_offset, member
            if not member.name:
                inner = self.resolve(member.type_id)
                if self.kind(inner) in (KIND_STRUCT, KIND_UNION):
                    found = self._find_member(inner, name)
                    if found:
                        return member.bit_offset + found[0], found[1]
        return None

    def field(self, struct_name: str, path: str) -> FieldInfo:
        """Offset and size of `path` (dotted, e.g. "nd_net.net") in `struct struct_name`."""
        type_id = self.find(struct_name, (KIND_STRUCT, KIND_UNION))
        bits = 0
        member: Member | None = None
        for part in path.split("."):
            if member is not None:
                type_id = self.resolve(member.type_id)
                if self.kind(type_id) not in (KIND_STRUCT, KIND_UNION):
                    raise BTFError(f"{struct_name}.{path}: {part!r} is not inside a struct")
            found = self._find_member(type_id, part)
            if found is None:
                raise BTFError(f"struct {struct_name} has no member {path!r}")
            bits += found[0]
            member = found[1]
        assert member is not None
        if member.bitfield_size:
            return FieldInfo(bits // 8, 0, member.bitfield_size)
        if bits % 8:
            raise BTFError(f"{struct_name}.{path} is not byte aligned")
        return FieldInfo(bits // 8, self.size_of(member.type_id))

    def enum(self, name: str) -> dict[str, int]:
        """Enumerator name -> value for `enum name`."""
        return self._enum_by_id(self.find(name, (KIND_ENUM, KIND_ENUM64)))

    def _enum_by_id(self, type_id: int) -> dict[str, int]:
        if self._in_base(type_id):
            assert self._base is not None
            return self._base._enum_by_id(type_id)
        pos, _name, kind, vlen, size = self._header(type_id)
        signed = bool(size >> 32)
        out: dict[str, int] = {}
        base = pos + 12
        if kind == KIND_ENUM:
            fmt, step = ("<Ii" if signed else "<II"), 8
            for i in range(vlen):
                name_off, value = struct.unpack_from(fmt, self._blob, base + step * i)
                out[self.string(name_off)] = value
        else:
            for i in range(vlen):
                name_off, lo, hi = struct.unpack_from("<III", self._blob, base + 12 * i)
                out[self.string(name_off)] = (hi << 32) | lo
        return out

    def enums_with_prefix(self, prefix: str) -> list[str]:
        return sorted(
            n
            for n, ids in self._by_name.items()
            if n.startswith(prefix) and any(self.kind(t) in (KIND_ENUM, KIND_ENUM64) for t in ids)
        )
