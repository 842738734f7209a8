"""The few netlink dumps netpath reads at start, on a plain socket: links (name, stats, XDP), qdiscs
(drops) and a generic-netlink family's dump.

pyroute2 imports every netlink family it knows when any of it is imported (~80 ms here, more than
the rest of `netpath drops`' start), so the dumps a start needs are read here, by the layouts in
include/uapi/linux/{netlink,rtnetlink,if_link,pkt_sched,gen_stats,genetlink}.h. Everything is read
from the namespace the calling thread is in (netns.run_in).
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

NETLINK_ROUTE, NETLINK_GENERIC = 0, 16
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETLINK, RTM_GETQDISC = 18, 38
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_HDR = struct.Struct("=IHHII")  # struct nlmsghdr

IFLA_IFNAME, IFLA_STATS, IFLA_STATS64, IFLA_XDP, IFLA_CARRIER_CHANGES = 3, 7, 23, 43, 35
IFLA_XDP_ATTACHED = 2
TCA_KIND, TCA_STATS, TCA_STATS2 = 1, 3, 7
TCA_STATS_QUEUE = 3
GENL_ID_CTRL, CTRL_CMD_GETFAMILY = 0x10, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 1, 2

# struct rtnl_link_stats64 (and the 32-bit rtnl_link_stats of IFLA_STATS), in order; kernels append
# members, so a shorter attribute is read as far as it goes
LINK_STATS_FIELDS = (
    "rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped",
    "multicast", "collisions", "rx_length_errors", "rx_over_errors", "rx_crc_errors", "rx_frame_errors",
    "rx_fifo_errors", "rx_missed_errors", "tx_aborted_errors", "tx_carrier_errors", "tx_fifo_errors",
    "tx_heartbeat_errors", "tx_window_errors", "rx_compressed", "tx_compressed", "rx_nohandler",
)


@dataclass(frozen=True)
class Link:
    index: int
    name: str | bytes  # str, or the kernel's bytes when the name is not UTF-8 (as pyroute2 gave it)
    stats: dict[str, int] = field(default_factory=dict)
    xdp_attached: bool = False
    carrier_changes: int | None = None  # IFLA_CARRIER_CHANGES: link-errors counts flaps


@dataclass(frozen=True)
class Qdisc:
    index: int
    handle: int
    kind: str
    drops: int | None


def attrs(data: bytes, off: int = 0) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink attribute from `off` on."""
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4 or off + length > len(data):
            return
        yield kind & NLA_TYPE_MASK, data[off + 4:off + length]
        off += (length + 3) & ~3


def split(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, body after the header) of each netlink message in `raw`; an error message raises OSError."""
    off = 0
    while off + _HDR.size <= len(raw):
        length, kind, _flags, _seq, _pid = _HDR.unpack_from(raw, off)
        if length < _HDR.size or off + length > len(raw):
            return
        body = raw[off + _HDR.size:off + length]
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
            if code:
                raise OSError(-code, os.strerror(-code))
        elif kind != NLMSG_DONE:
            yield kind, body
        off += (length + 3) & ~3


def request(proto: int, kind: int, body: bytes, dump: bool = True) -> list[bytes]:
    """Send one request and return the raw replies (each a whole message) up to NLMSG_DONE."""
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto) as s:
        s.bind((0, 0))
        s.send(_HDR.pack(_HDR.size + len(body), kind, flags, 1, 0) + body)
        out: list[bytes] = []
        while True:
            chunk = s.recv(1 << 16)
            off, done = 0, not chunk
            while off + _HDR.size <= len(chunk):
                length, mtype = struct.unpack_from("=IH", chunk, off)
                if length < _HDR.size:
                    done = True
                    break
                out.append(chunk[off:off + length])
                if mtype in (NLMSG_DONE, NLMSG_ERROR) or not dump:
                    done = True
                off += (length + 3) & ~3
            if done:
                return out


def _name(raw: bytes) -> str | bytes:
    raw = raw.split(b"\0", 1)[0]
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def parse_link(body: bytes) -> Link | None:
    if len(body) < 16:  # struct ifinfomsg
        return None
    index = struct.unpack_from("=i", body, 4)[0]
    name: str | bytes = ""
    stats: dict[str, int] = {}
    stats32: dict[str, int] = {}
    xdp = False
    carrier: int | None = None
    for kind, value in attrs(body, 16):
        if kind == IFLA_IFNAME:
            name = _name(value)
        elif kind == IFLA_STATS64:
            n = min(len(value) // 8, len(LINK_STATS_FIELDS))
            stats = dict(zip(LINK_STATS_FIELDS[:n], struct.unpack_from(f"={n}Q", value), strict=True))
        elif kind == IFLA_STATS:
            n = min(len(value) // 4, len(LINK_STATS_FIELDS))
            stats32 = dict(zip(LINK_STATS_FIELDS[:n], struct.unpack_from(f"={n}I", value), strict=True))
        elif kind == IFLA_XDP:
            xdp = any(k == IFLA_XDP_ATTACHED and v[:1] not in (b"", b"\0") for k, v in attrs(value))
        elif kind == IFLA_CARRIER_CHANGES and len(value) >= 4:
            carrier = struct.unpack_from("=I", value)[0]
    return Link(index, name, stats or stats32, xdp, carrier)


def parse_qdisc(body: bytes) -> Qdisc | None:
    if len(body) < 20:  # struct tcmsg
        return None
    index, handle = struct.unpack_from("=iI", body, 4)
    kind, drops, drops_old = "", None, None
    for t, value in attrs(body, 20):
        if t == TCA_KIND:
            kind = value.split(b"\0", 1)[0].decode(errors="replace")
        elif t == TCA_STATS2:
            for t2, v2 in attrs(value):
                if t2 == TCA_STATS_QUEUE and len(v2) >= 12:  # struct gnet_stats_queue: qlen, backlog, drops
                    drops = struct.unpack_from("=I", v2, 8)[0]
        elif t == TCA_STATS and len(value) >= 16:  # struct tc_stats: bytes (u64), packets, drops
            drops_old = struct.unpack_from("=I", value, 12)[0]
    return Qdisc(index, handle, kind, drops if drops is not None else drops_old)


def links() -> list[Link]:
    """Every link of this namespace."""
    out = []
    for raw in request(NETLINK_ROUTE, RTM_GETLINK, bytes(16)):
        for kind, body in split(raw):
            if kind == RTM_GETLINK - 2 and (link := parse_link(body)) is not None:  # RTM_NEWLINK replies
                out.append(link)
    return out


def qdiscs() -> list[Qdisc]:
    """Every qdisc of this namespace, with its drops."""
    out = []
    for raw in request(NETLINK_ROUTE, RTM_GETQDISC, bytes(20)):
        for kind, body in split(raw):
            if kind == RTM_GETQDISC - 2 and (q := parse_qdisc(body)) is not None:  # RTM_NEWQDISC replies
                out.append(q)
    return out


def genl_family(name: str) -> int | None:
    """The id of generic-netlink family `name`, None when this kernel has none."""
    attr = name.encode() + b"\0"
    nla = struct.pack("=HH", 4 + len(attr), CTRL_ATTR_FAMILY_NAME) + attr + bytes(-len(attr) % 4)
    try:
        replies = request(NETLINK_GENERIC, GENL_ID_CTRL, struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0) + nla,
                          dump=False)
        for raw in replies:
            for _kind, body in split(raw):
                for t, value in attrs(body, 4):
                    if t == CTRL_ATTR_FAMILY_ID and len(value) >= 2:
                        return int(struct.unpack_from("=H", value)[0])
    except OSError:
        return None
    return None


def genl_dump(family: int, cmd: int, version: int, body_attrs: bytes) -> list[bytes]:
    """The raw replies of a generic-netlink dump (OSError when the kernel refuses it)."""
    return request(NETLINK_GENERIC, family, struct.pack("=BBH", cmd, version, 0) + body_attrs)
