"""Which BPF programs sit on each interface's receive path: XDP (driver, generic, offloaded)
and tc ingress filters of kind bpf, read from rtnetlink through pyroute2 in the namespace the
calling thread is in. A program there can drop or redirect packets before netpath's hooks see
them (XDP before an skb exists), so `netpath probes` names them.

tcx links (Linux 6.6+) are not in rtnetlink; they are not listed here.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from netpath import untrusted

# IFLA_XDP_ATTACHED: pyroute2 gives its own names for the kernel's XDP_ATTACHED_* values
XDP_MODES: dict[int | str, str] = {1: "driver", 2: "generic", 3: "offload", 4: "multi", "xdp": "driver",
                                   "xdpgeneric": "generic", "xdpoffload": "offload", "xdpmulti": "multi"}
# IFLA_XDP_* attribute -> mode, for devices with programs in several modes at once
XDP_MODE_ATTRS = (("IFLA_XDP_DRV_PROG_ID", "driver"), ("IFLA_XDP_SKB_PROG_ID", "generic"),
                  ("IFLA_XDP_HW_PROG_ID", "offload"))
TC_H_INGRESS_PARENTS = {0xFFFFFFF1: "ingress", 0xFFFFFFF2: "clsact ingress"}
TCA_BPF_FLAG_ACT_DIRECT = 1
TCA_BPF_ID = 11  # pyroute2's cls_bpf map stops before it, so it is read from the raw attribute


@dataclass(frozen=True)
class RxProgram:
    iface: str
    ifindex: int
    hook: str  # xdp, tc
    mode: str  # driver/generic/offload for XDP; "ingress"/"clsact ingress" for tc
    prog_id: int
    name: str | None
    direct_action: bool | None = None
    pref: int | None = None

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"iface": self.iface, "ifindex": self.ifindex, "hook": self.hook, "mode": self.mode,
                                  "prog_id": self.prog_id, "name": self.name}
        if self.hook == "tc":
            out["direct_action"] = self.direct_action
            out["pref"] = self.pref
        return out


NameOf = Callable[[int], str | None]


def xdp_programs(links: Iterable[object], name_of: NameOf) -> list[RxProgram]:
    """rtnetlink link messages -> their XDP programs (IFLA_XDP)."""
    out: list[RxProgram] = []
    for link in links:
        xdp = link.get_attr("IFLA_XDP")  # type: ignore[attr-defined]
        if xdp is None:
            continue
        attached = xdp.get_attr("IFLA_XDP_ATTACHED")
        if not attached:
            continue
        iface = untrusted.name(link.get_attr("IFLA_IFNAME") or "")  # type: ignore[attr-defined]
        ifindex = int(link["index"])  # type: ignore[index]
        found = [(mode, int(xdp.get_attr(attr))) for attr, mode in XDP_MODE_ATTRS if xdp.get_attr(attr)]
        if not found and xdp.get_attr("IFLA_XDP_PROG_ID"):
            found = [(XDP_MODES.get(attached, str(attached)), int(xdp.get_attr("IFLA_XDP_PROG_ID")))]
        for mode, prog_id in found:
            out.append(RxProgram(iface, ifindex, "xdp", mode, prog_id, name_of(prog_id)))
    return out


def _tc_name(given: str | bytes | None) -> str | None:
    """A tc filter's name, chosen by whoever attached it."""
    return untrusted.name(given) if given else None


def tc_programs(filters: Iterable[object], names: dict[int, str]) -> list[RxProgram]:
    """tc filter messages (any parent) -> the bpf ones on an ingress hook."""
    out: list[RxProgram] = []
    for f in filters:
        if f.get_attr("TCA_KIND") != "bpf":  # type: ignore[attr-defined]
            continue
        parent = int(f["parent"])  # type: ignore[index]
        where = TC_H_INGRESS_PARENTS.get(parent)
        if where is None:
            continue
        opts = f.get_attr("TCA_OPTIONS")  # type: ignore[attr-defined]
        if not opts:
            continue
        raw = _nested(opts)
        if TCA_BPF_ID not in raw or len(raw[TCA_BPF_ID]) != 4:
            continue
        prog_id = int.from_bytes(raw[TCA_BPF_ID], "little")
        flags = int(opts.get_attr("TCA_BPF_FLAGS") or 0)
        ifindex = int(f["index"])  # type: ignore[index]
        out.append(RxProgram(names.get(ifindex, str(ifindex)), ifindex, "tc", where, int(prog_id),
                             _tc_name(opts.get_attr("TCA_BPF_NAME")), bool(flags & TCA_BPF_FLAG_ACT_DIRECT),
                             int(f["info"]) >> 16))  # type: ignore[index]
    return out


def _nested(attr: object) -> dict[int, bytes]:
    """type -> payload of the attributes nested in a decoded pyroute2 nla, from its raw bytes."""
    data = bytes(attr.data)  # type: ignore[attr-defined]
    off, end = attr.offset + 4, attr.offset + attr.length  # type: ignore[attr-defined]
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4: off + length]
        off += (length + 3) & ~3
    return out


# --- program names by id: BPF_PROG_GET_FD_BY_ID + BPF_OBJ_GET_INFO_BY_FD ---

_SYS_BPF = 321  # x86_64
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
_INFO_NAME_OFF = 64  # struct bpf_prog_info.name, after the fixed fields that precede it
_INFO_LEN = 80


def prog_name(prog_id: int) -> str | None:
    """The name the program was loaded with, None without CAP_SYS_ADMIN or once it is gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 32)()
    attr[0] = prog_id
    fd = libc.syscall(_SYS_BPF, BPF_PROG_GET_FD_BY_ID, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        return None
    try:
        info = (ctypes.c_uint8 * _INFO_LEN)()
        req = (ctypes.c_uint64 * 8)()
        req[0] = fd | (_INFO_LEN << 32)  # bpf_fd, info_len
        req[1] = ctypes.addressof(info)
        if libc.syscall(_SYS_BPF, BPF_OBJ_GET_INFO_BY_FD, ctypes.byref(req), ctypes.sizeof(req)) < 0:
            return None
        raw = bytes(info[_INFO_NAME_OFF:_INFO_LEN])
        return untrusted.comm(raw) or None  # whoever loaded the program named it
    finally:
        os.close(fd)


def read_rx_programs(ifaces: set[str] | None = None) -> list[RxProgram]:
    """XDP and tc ingress BPF programs of this namespace's interfaces (or of `ifaces`)."""
    from pyroute2 import IPRoute  # late: start-up cost

    out: list[RxProgram] = []
    with IPRoute() as ipr:
        links = [ln for ln in ipr.get_links()
                 if not ifaces or untrusted.name(ln.get_attr("IFLA_IFNAME") or "") in ifaces]
        names = {int(ln["index"]): untrusted.name(ln.get_attr("IFLA_IFNAME") or "") for ln in links}
        out.extend(xdp_programs(links, prog_name))
        for ifindex in names:
            for parent in TC_H_INGRESS_PARENTS:
                try:
                    filters = ipr.get_filters(index=ifindex, parent=parent)
                except Exception:  # NetlinkError: no such qdisc (no ingress/clsact) on the device
                    continue
                out.extend(tc_programs(filters, names))
    return sorted(out, key=lambda p: (p.iface, p.hook != "xdp", p.pref or 0, p.prog_id))
