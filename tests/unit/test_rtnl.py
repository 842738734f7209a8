"""netpath/kernel/rtnl.py: the netlink layouts it reads, from hand-built messages."""

from __future__ import annotations

import struct

import pytest

from netpath.kernel import rtnl


def nla(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + bytes(-len(payload) % 4)


def msg(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body


def test_a_link_with_stats64_xdp_and_a_name_that_is_not_utf8():
    stats = struct.pack("=24Q", *range(1, 25))
    body = (struct.pack("=BBHiII", 0, 0, 1, 7, 0, 0) + nla(rtnl.IFLA_IFNAME, b"et\xff0\0")
            + nla(rtnl.IFLA_STATS64, stats) + nla(rtnl.IFLA_XDP | 0x8000, nla(rtnl.IFLA_XDP_ATTACHED, b"\x01")))
    [(kind, got)] = list(rtnl.split(msg(16, body)))
    link = rtnl.parse_link(got)
    assert kind == 16 and link is not None
    assert (link.index, link.name, link.xdp_attached) == (7, b"et\xff0", True)
    assert link.stats["rx_dropped"] == 7 and link.stats["rx_missed_errors"] == 16
    assert link.stats["rx_nohandler"] == 24


def test_an_old_kernels_32_bit_stats_are_read_as_far_as_they_go():
    body = struct.pack("=BBHiII", 0, 0, 1, 2, 0, 0) + nla(rtnl.IFLA_IFNAME, b"lo\0") + nla(
        rtnl.IFLA_STATS, struct.pack("=8I", *range(10, 18)))
    link = rtnl.parse_link(body)
    assert link is not None and link.name == "lo" and not link.xdp_attached
    assert link.stats == {"rx_packets": 10, "tx_packets": 11, "rx_bytes": 12, "tx_bytes": 13, "rx_errors": 14,
                          "tx_errors": 15, "rx_dropped": 16, "tx_dropped": 17}


def test_a_qdisc_takes_drops_from_stats2_before_the_old_tc_stats():
    queue = struct.pack("=5I", 1, 2, 33, 4, 5)
    old = struct.pack("=QIIIIIII", 9, 9, 44, 0, 0, 0, 0, 0)
    head = struct.pack("=BBHiIII", 0, 0, 0, 3, 0x10000, 0xFFFFFFFF, 1)
    q = rtnl.parse_qdisc(head + nla(rtnl.TCA_KIND, b"fq_codel\0") + nla(rtnl.TCA_STATS, old)
                         + nla(rtnl.TCA_STATS2, nla(rtnl.TCA_STATS_QUEUE, queue)))
    assert q == rtnl.Qdisc(3, 0x10000, "fq_codel", 33)
    only_old = rtnl.parse_qdisc(head + nla(rtnl.TCA_KIND, b"pfifo\0") + nla(rtnl.TCA_STATS, old))
    assert only_old is not None and only_old.drops == 44
    assert rtnl.parse_qdisc(head + nla(rtnl.TCA_KIND, b"noqueue\0")).drops is None  # type: ignore[union-attr]


def test_an_error_reply_raises_with_its_errno_and_done_ends_the_dump():
    with pytest.raises(OSError) as exc:
        list(rtnl.split(msg(rtnl.NLMSG_ERROR, struct.pack("=i", -95) + bytes(16))))
    assert exc.value.errno == 95
    assert list(rtnl.split(msg(rtnl.NLMSG_ERROR, struct.pack("=i", 0) + bytes(16)))) == []  # an ack
    assert list(rtnl.split(msg(rtnl.NLMSG_DONE, bytes(4)))) == []


def test_truncated_attributes_and_messages_stop_the_walk():
    assert list(rtnl.attrs(struct.pack("=HH", 40, 1) + b"abcd")) == []
    assert list(rtnl.split(struct.pack("=IHHII", 400, 16, 0, 0, 0))) == []
    assert rtnl.parse_link(b"short") is None and rtnl.parse_qdisc(b"short") is None


def test_carrier_changes_are_read_for_link_errors():
    body = (struct.pack("=BBHiII", 0, 0, 1, 4, 0, 0) + nla(rtnl.IFLA_IFNAME, b"veth0\0")
            + nla(rtnl.IFLA_CARRIER_CHANGES, struct.pack("=I", 3)))
    link = rtnl.parse_link(body)
    assert link is not None and link.name == "veth0" and link.carrier_changes == 3
    assert rtnl.parse_link(struct.pack("=BBHiII", 0, 0, 1, 4, 0, 0)).carrier_changes is None  # type: ignore[union-attr]
