"""The pcapng writer (no root): block layout by hand, then Wireshark's own tshark reading the file."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess

import pytest

from netpath import contract
from netpath.model import CapturedPacket, DropRow, Owner
from netpath.render import pcapng

ETH_UDP = bytes(12) + b"\x08\x00" + bytes.fromhex(
    "4500002100014000401100007f0000017f000001") + bytes.fromhex("a0000009000d0000") + b"hello"
RAW_UDP6 = bytes.fromhex("6000000000091140") + bytes(15) + b"\x01" + bytes(15) + b"\x01" + bytes.fromhex(
    "a000000900090000") + b"x"


def row(iface: str = "veth1", ifindex: int = 4, netns: int = 4026532000, label: str | None = "web",
        owner: Owner | None = None) -> DropRow:
    return DropRow("NO_SOCKET", 3, "__udp4_lib_rcv+0x4bc", iface, ifindex, netns, "udp", 1, netns_label=label,
                   owner=owner)


def packet(data: bytes, linktype: int = contract.LINKTYPE_ETHERNET, r: DropRow | None = None, ts: int = 0,
           orig: int | None = None, snaplen: int = 256) -> CapturedPacket:
    return CapturedPacket(ts or 1_796_000_000_123_456_789, 0, linktype, orig or len(data), data, snaplen, r or row())


def blocks(raw: bytes) -> list[tuple[int, bytes]]:
    """(type, body) per block, checking both length fields and 32-bit alignment."""
    out, off = [], 0
    while off < len(raw):
        kind, total = struct.unpack_from("<II", raw, off)
        assert total % 4 == 0 and total >= 12
        assert struct.unpack_from("<I", raw, off + total - 4)[0] == total
        out.append((kind, raw[off + 8:off + total - 4]))
        off += total
    assert off == len(raw)
    return out


def options(raw: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off < len(raw):
        code, length = struct.unpack_from("<HH", raw, off)
        if code == 0:
            assert length == 0 and off + 4 == len(raw)
            return out
        out.append((code, raw[off + 4:off + 4 + length]))
        off += 4 + length + (-length % 4)
    raise AssertionError("options without opt_endofopt")


def write(*pkts: CapturedPacket) -> bytes:
    buf = io.BytesIO()
    w = pcapng.PcapngWriter(buf)
    for p in pkts:
        w.packet(p)
    w.flush()
    assert w.written == len(pkts)
    return buf.getvalue()


def test_section_interfaces_and_packets_are_laid_out_as_pcapng_says():
    raw = write(packet(ETH_UDP), packet(RAW_UDP6, contract.LINKTYPE_RAW), packet(ETH_UDP, ts=1_796_000_001_000_000_000),
                packet(ETH_UDP, r=row("lo", 1, 4026531833, "host")))
    kinds = [k for k, _ in blocks(raw)]
    # an interface block the first time each (namespace, ifindex, link type) appears, before its packets
    assert kinds == [pcapng.SHB, pcapng.IDB, pcapng.EPB, pcapng.IDB, pcapng.EPB, pcapng.EPB, pcapng.IDB, pcapng.EPB]
    (_, shb), (_, idb0), (_, epb0), (_, idb1), (_, epb1), (_, epb2), (_, idb2), (_, epb3) = blocks(raw)
    magic, major, minor, section_len = struct.unpack_from("<IHHq", shb)
    assert (magic, major, minor, section_len) == (0x1A2B3C4D, 1, 0, -1)
    assert options(shb[16:]) == [(pcapng.SHB_USERAPPL, b"netpath drops")]

    linktype, reserved, snaplen = struct.unpack_from("<HHI", idb0)
    assert (linktype, reserved, snaplen) == (1, 0, 256)
    assert options(idb0[8:]) == [(pcapng.IF_NAME, b"veth1"),
                                 (pcapng.OPT_COMMENT, b"netns=4026532000 netns_label=web ifindex=4"),
                                 (pcapng.IF_TSRESOL, b"\x09")]
    assert struct.unpack_from("<HHI", idb1)[0] == 101  # raw IP on the same interface: its own block
    assert options(idb2[8:])[0] == (pcapng.IF_NAME, b"lo")

    def epb(body: bytes) -> tuple[int, int, bytes, int, list[tuple[int, bytes]]]:
        iface, hi, lo, cap, orig = struct.unpack_from("<IIIII", body)
        data = body[20:20 + cap]
        return iface, (hi << 32) | lo, data, orig, options(body[20 + cap + (-cap % 4):])

    iface, ts, data, orig, opts = epb(epb0)
    assert (iface, ts, data, orig) == (0, 1_796_000_000_123_456_789, ETH_UDP, len(ETH_UDP))
    assert opts == [(pcapng.OPT_COMMENT, b"reason=NO_SOCKET reason_code=3 location=__udp4_lib_rcv+0x4bc iface=veth1 "
                                         b"ifindex=4 netns=4026532000 netns_label=web proto=udp")]
    assert epb(epb1)[0] == 1 and epb(epb1)[2] == RAW_UDP6
    assert epb(epb2)[:2] == (0, 1_796_000_001_000_000_000)
    assert epb(epb3)[0] == 2


def test_a_packet_cut_at_the_snaplen_keeps_its_wire_length():
    raw = write(packet(ETH_UDP[:20], orig=1514, snaplen=20))
    body = blocks(raw)[2][1]
    assert struct.unpack_from("<II", body, 12) == (20, 1514)
    assert struct.unpack_from("<HHI", blocks(raw)[1][1])[2] == 20


def test_owner_fields_and_untrusted_names_are_quoted():
    owner = Owner(None, 4242, 'ev il"\n\x1b', "/system.slice/x y.service", None)
    text = pcapng.comment(row(iface=None, ifindex=None, netns=None, label=None, owner=owner))
    assert text == ('reason=NO_SOCKET reason_code=3 location=__udp4_lib_rcv+0x4bc proto=udp pid=4242 '
                    'comm="ev il\\"\\x0a\\x1b" cgroup="/system.slice/x y.service"')
    assert pcapng.quote("") == '""' and pcapng.quote("a=b") == '"a=b"' and pcapng.quote("é") == '"\\xc3\\xa9"'
    assert pcapng.interface_name(row(iface=None, ifindex=9)) == "ifindex9"


def test_nothing_but_the_section_header_before_the_first_packet():
    buf = io.BytesIO()
    pcapng.PcapngWriter(buf).flush()
    assert [k for k, _ in blocks(buf.getvalue())] == [pcapng.SHB]


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs Wireshark's tshark (Debian package tshark)")
def test_tshark_reads_what_the_writer_wrote(tmp_path):
    owner = Owner(None, 77, "nc", "/user.slice", None)
    pkts = [packet(ETH_UDP, ts=1_796_000_000_000_000_001),
            packet(RAW_UDP6, contract.LINKTYPE_RAW, ts=1_796_000_000_500_000_000),
            packet(ETH_UDP[:30], orig=len(ETH_UDP), snaplen=30, r=row(owner=owner), ts=1_796_000_001_000_000_000)]
    path = tmp_path / "drops.pcapng"
    path.write_bytes(write(*pkts))
    out = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|", "-e", "frame.time_epoch",
                          "-e", "frame.len", "-e", "frame.cap_len", "-e", "frame.interface_name", "-e",
                          "frame.protocols", "-e", "udp.dstport", "-e", "frame.comment"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    fields = [line.split("|") for line in out]
    assert [f[:4] for f in fields] == [["1796000000.000000001", "47", "47", "veth1"],
                                       ["1796000000.500000000", "49", "49", "veth1"],
                                       ["1796000001.000000000", "47", "30", "veth1"]]
    assert fields[0][4] == "eth:ethertype:ip:udp:data" and fields[0][5] == "9"
    assert fields[1][4] == "raw:ipv6:udp:data" and fields[1][5] == "9"
    assert fields[0][6] == pcapng.comment(pkts[0].row)
    assert fields[2][6].endswith("proto=udp pid=77 comm=nc cgroup=/user.slice")
