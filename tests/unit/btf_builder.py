"""Builds small BTF blobs for unit tests (the same binary format the kernel exports)."""

from __future__ import annotations

import struct


class BTFBuilder:
    def __init__(self, base: BTFBuilder | None = None) -> None:
        self.base = base
        self.strings = bytearray(b"\0") if base is None else bytearray()
        self.types: list[bytes] = []
        self._str_base = len(base.strings) if base else 0
        self._first_id = (base.next_id if base else 1)

    @property
    def next_id(self) -> int:
        return self._first_id + len(self.types)

    def s(self, text: str) -> int:
        if not text:
            return 0
        if self.base is not None:
            raw = self.base.strings
            idx = raw.find(text.encode() + b"\0")
            if idx >= 0 and (idx == 0 or raw[idx - 1] == 0):
                return idx
        off = self.strings.find(text.encode() + b"\0")
        if off > 0 and self.strings[off - 1] == 0:
            return off + self._str_base
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off + self._str_base

    def _add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"", kflag: int = 0) -> int:
        info = (kflag << 31) | (kind << 24) | vlen
        self.types.append(struct.pack("<III", self.s(name), info, size_or_type) + extra)
        return self.next_id - 1

    def int_(self, name: str, size: int) -> int:
        return self._add(name, 1, 0, size, struct.pack("<I", size * 8))

    def ptr(self, target: int) -> int:
        return self._add("", 2, 0, target)

    def typedef(self, name: str, target: int) -> int:
        return self._add(name, 8, 0, target)

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], union: bool = False,
               bitfields: dict[str, int] | None = None) -> int:
        """members: (name, type id, bit offset)."""
        kflag = 1 if bitfields else 0
        extra = b""
        for mname, mtype, bits in members:
            off = bits
            if kflag:
                off = ((bitfields or {}).get(mname, 0) << 24) | bits
            extra += struct.pack("<III", self.s(mname), mtype, off)
        return self._add(name, 5 if union else 4, len(members), size, extra, kflag)

    def enum(self, name: str, values: dict[str, int], size: int = 4) -> int:
        extra = b"".join(struct.pack("<Ii", self.s(k), v) for k, v in values.items())
        return self._add(name, 6, len(values), size, extra)

    def enum64(self, name: str, values: dict[str, int]) -> int:
        extra = b"".join(struct.pack("<III", self.s(k), v & 0xFFFFFFFF, v >> 32) for k, v in values.items())
        return self._add(name, 19, len(values), 8, extra)

    def blob(self) -> bytes:
        types = b"".join(self.types)
        hdr_len = 24
        header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, hdr_len, 0, len(types), len(types), len(self.strings))
        return header + types + bytes(self.strings)


def kernel_like() -> BTFBuilder:
    """sk_buff with `dev` inside an anonymous union, as real kernels lay it out."""
    b = BTFBuilder()
    u16 = b.int_("unsigned short", 2)
    u32 = b.int_("unsigned int", 4)
    u8 = b.int_("unsigned char", 1)
    net = b.struct("net", 8, [])
    netp = b.ptr(net)
    possible_net = b.struct("", 8, [("net", netp, 0)])
    possible_net_t = b.typedef("possible_net_t", possible_net)
    dev = b.struct("net_device", 280, [("ifindex", u32, 224 * 8), ("nd_net", possible_net_t, 264 * 8)])
    devp = b.ptr(dev)
    anon = b.struct("", 8, [("dev", devp, 0), ("dev_scratch", u32, 0)], union=True)
    b.struct("sk_buff", 232, [("next", devp, 0), ("", anon, 16 * 8), ("len", u32, 112 * 8),
                              ("protocol", u16, 176 * 8), ("flags", u8, 184 * 8 + 3)],
             bitfields={"flags": 1})
    b.enum("skb_drop_reason", {
        "SKB_NOT_DROPPED_YET": 0, "SKB_CONSUMED": 1, "SKB_DROP_REASON_NOT_SPECIFIED": 2,
        "SKB_DROP_REASON_NO_SOCKET": 3, "SKB_DROP_REASON_NETFILTER_DROP": 12, "SKB_DROP_REASON_MAX": 13,
    })
    b.enum("skb_drop_reason_subsys", {
        "SKB_DROP_REASON_SUBSYS_CORE": 0, "SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE": 1,
        "SKB_DROP_REASON_SUBSYS_OPENVSWITCH": 2, "SKB_DROP_REASON_SUBSYS_NUM": 3,
    })
    return b
