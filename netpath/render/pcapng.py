"""pcapng (the IETF draft-ietf-opsawg-pcapng format Wireshark reads) for captured drops: pure bytes.

One Section Header Block, then an Interface Description Block the first
time each (namespace, ifindex, link type) appears, then an Enhanced Packet
Block per packet with a nanosecond timestamp (if_tsresol 9) and an
opt_comment saying why and where the packet died. Blocks are written whole,
in order, so the stream is a valid file after every block: `tshark -r -`
reads it as it comes, and a file cut short by a signal stays readable.

Blocks wait in memory until flush() (every interval, or past PENDING_MAX
bytes) and go out in one write loop, which knows how many bytes reached the
file: when a write fails (a full disk, RLIMIT_FSIZE) the writer knows the
last whole block in the file (kept_bytes), and the caller can cut the file
back to it (cli/pcap_out.cut).
"""

from __future__ import annotations

import struct
from typing import Protocol

from netpath.model import CapturedPacket, DropRow, Owner

SHB = 0x0A0D0D0A
IDB = 0x00000001
EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_TSRESOL = 9

TSRESOL_NS = 9  # 10^-9 s per timestamp unit


PENDING_MAX = 1 << 20  # bytes of blocks held before a flush is forced


class Stream(Protocol):
    """A binary file or pipe; write() returns how many bytes it took (a raw file may take fewer)."""

    def write(self, data: bytes | memoryview, /) -> int | None: ...

    def flush(self) -> None: ...


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad4(value)


def _options(opts: list[bytes]) -> bytes:
    return b"".join(opts) + struct.pack("<HH", OPT_ENDOFOPT, 0) if opts else b""


def block(kind: int, body: bytes) -> bytes:
    """A block: type, total length, the body (padded to 32 bits), total length again."""
    body = _pad4(body)
    total = len(body) + 12
    return struct.pack("<II", kind, total) + body + struct.pack("<I", total)


def _text(value: str) -> bytes:
    return value.encode("utf-8", "backslashreplace")


def section_header(app: str) -> bytes:
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)  # version 1.0, section length unknown
    return block(SHB, body + _options([option(SHB_USERAPPL, _text(app))]))


def interface_description(linktype: int, snaplen: int, name: str, comment: str) -> bytes:
    body = struct.pack("<HHI", linktype, 0, snaplen)
    opts = [option(IF_NAME, _text(name)), option(OPT_COMMENT, _text(comment)),
            option(IF_TSRESOL, bytes([TSRESOL_NS]))]
    return block(IDB, body + _options(opts))


def enhanced_packet(interface_id: int, ts_ns: int, data: bytes, orig_len: int, comment: str) -> bytes:
    body = struct.pack("<IIIII", interface_id, (ts_ns >> 32) & 0xFFFFFFFF, ts_ns & 0xFFFFFFFF, len(data),
                       max(orig_len, len(data)))
    return block(EPB, body + _pad4(data) + _options([option(OPT_COMMENT, _text(comment))]))


# ---------------------------------------------------------------- the comment

_PLAIN = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', "\\", "="}


def quote(value: str) -> str:
    """A value as it appears after `key=`: bare when printable ASCII without quotes, backslashes or '=',
    else in double quotes with \\", \\\\ and \\xNN escapes (names from the kernel or other processes are
    untrusted text: a comm can hold anything)."""
    if value and all(ch in _PLAIN for ch in value):
        return value
    out = []
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogateescape"))
    return '"' + "".join(out) + '"'


def _pairs(pairs: list[tuple[str, object]]) -> str:
    return " ".join(f"{key}={quote(str(value))}" for key, value in pairs if value is not None)


def owner_pairs(o: Owner) -> list[tuple[str, object]]:
    sock = f"{o.sock.proto}:{o.sock.laddr}:{o.sock.lport}" if o.sock else None
    return [("sock", sock), ("pid", o.pid), ("comm", o.comm), ("cgroup", o.cgroup), ("container", o.container),
            ("pod", o.pod), ("pod_namespace", o.pod_namespace)]


def comment(row: DropRow) -> str:
    """reason=NO_SOCKET reason_code=2 location=__udp4_lib_rcv+0x8a4 iface=veth1 ifindex=3 netns=4026532456
    netns_label=web proto=udp [sock=... pid=... comm=... cgroup=... container=... pod=... pod_namespace=...]:
    fields left out when unknown; the owner's only when rows group by socket or cgroup."""
    pairs: list[tuple[str, object]] = [
        ("reason", row.reason), ("reason_code", row.reason_code), ("location", row.location),
        ("iface", row.iface), ("ifindex", row.ifindex), ("netns", row.netns), ("netns_label", row.netns_label),
        ("proto", row.proto),
    ]
    if row.owner is not None:
        pairs += owner_pairs(row.owner)
    return _pairs(pairs)


def interface_comment(row: DropRow) -> str:
    return _pairs([("netns", row.netns), ("netns_label", row.netns_label), ("ifindex", row.ifindex)])


def interface_name(row: DropRow) -> str:
    return row.iface or (f"ifindex{row.ifindex}" if row.ifindex else "no-device")


class PcapngWriter:
    """Streams captured drops into a binary file or pipe; the caller owns (and closes) the stream.

    written counts the packets in the stream (whole blocks that reached it), kept_bytes its length."""

    def __init__(self, out: Stream, app: str = "netpath drops") -> None:
        self.out = out
        self.app = app
        self.written = 0
        self.kept_bytes = 0
        self._interfaces: dict[tuple[int, int, int], int] = {}  # (netns, ifindex, linktype) -> interface id
        self._started = False
        self._comments: dict[int, tuple[DropRow, str]] = {}
        self._pending: list[tuple[bytes, int]] = []  # blocks not yet written, each with 1 for a packet block
        self._pending_bytes = 0

    def _block(self, data: bytes, packets: int = 0) -> None:
        self._pending.append((data, packets))
        self._pending_bytes += len(data)

    def start(self) -> None:
        if not self._started:
            self._block(section_header(self.app))
            self._started = True

    def interface_id(self, pkt: CapturedPacket) -> int:
        """The packet's interface block, written the first time its (namespace, ifindex, link type) appears."""
        row = pkt.row
        key = (row.netns or 0, row.ifindex or 0, pkt.linktype)
        found = self._interfaces.get(key)
        if found is not None:
            return found
        self._block(interface_description(pkt.linktype, pkt.snaplen, interface_name(row), interface_comment(row)))
        self._interfaces[key] = len(self._interfaces)
        return self._interfaces[key]

    def packet(self, pkt: CapturedPacket) -> None:
        """Queues the packet's blocks; past PENDING_MAX bytes they are written (an OSError then is flush's)."""
        self.start()
        iface = self.interface_id(pkt)
        self._block(enhanced_packet(iface, pkt.ts_ns, pkt.data, pkt.orig_len, self._comment(pkt.row)), 1)
        if self._pending_bytes >= PENDING_MAX:
            self.flush()

    def _comment(self, row: DropRow) -> str:
        """The session hands out one row object per place packets die: its comment is built once."""
        cached = self._comments.get(id(row))
        if cached is not None and cached[0] is row:
            return cached[1]
        if len(self._comments) >= 4096:
            self._comments.clear()
        text = comment(row)
        self._comments[id(row)] = (row, text)
        return text

    def flush(self) -> None:
        """Writes every queued block. On OSError the blocks that reached the stream whole are counted in
        written/kept_bytes (the rest, and a torn one, are dropped) and the error is raised."""
        self.start()
        data = memoryview(b"".join(block for block, _ in self._pending))
        done = 0
        try:
            while done < len(data):
                n = self.out.write(data[done:])
                if n is None:  # a buffered stream took it all (or raised)
                    n = len(data) - done
                if n <= 0:
                    raise OSError("the capture stream took no bytes")
                done += n
            self.out.flush()
        finally:
            self._account(done)

    def _account(self, done: int) -> None:
        """The first `done` pending bytes reached the stream: count its whole blocks, forget all pending."""
        end = 0
        for block, packets in self._pending:
            if end + len(block) > done:
                break
            end += len(block)
            self.written += packets
        self.kept_bytes += end
        self._pending.clear()
        self._pending_bytes = 0

