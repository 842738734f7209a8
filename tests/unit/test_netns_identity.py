"""Namespace identity by cookie, and drops with no device (issue 22, classes 2 and 3), without a kernel."""

from __future__ import annotations

from pathlib import Path

from netpath import links, netns
from netpath.collect import drops
from netpath.kernel.facts import KernelFacts
from netpath.model import DropHealth, DropSnapshot
from netpath.render import drops_view, records

A = netns.Netns(Path("/run/netns/a"), 4026532300, "a")
B = netns.Netns(Path("/run/netns/b"), 4026532300, "b")  # a's inode, reused


def test_names_and_labels_follow_the_cookie_not_the_reused_inode(monkeypatch):
    seen = [[(A, 11, [(2, b"veth-a")])]]
    monkeypatch.setattr(links, "all_links_with_cookies", lambda: iter(seen[-1]))
    names = links.IfaceNames()
    assert names.name(A.inode, 2, 11) == "veth-a" and names.netns_label(A.inode, 11) == "a"
    seen.append([(B, 12, [(2, b"veth-b")])])  # a deleted, b made with the same inode
    assert names.name(B.inode, 2, 12) == "veth-b"  # a key never seen refreshes at once, not a second later
    assert names.netns_label(B.inode, 12) == "b"
    assert names.name(A.inode, 2, 11) == "veth-a" and names.netns_label(A.inode, 11) == "a"  # never relabelled


def test_the_key_carries_the_cookie_and_the_row_the_inode():
    raw = drops.contract.DROP_WHERE.fmt.pack(0, 3, 2, 4026532300, 0x0800, 17, 4, 12, 1, 0)
    key = drops.DecodedKey.unpack(raw, flow=False)
    assert (key.netns, key.netns_cookie, key.ifindex) == (4026532300, 12, 2)


def test_fragment_and_socket_places_come_as_numbers(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/kallsyms").write_text(
        "ffffffff820c20c0 t inet_frag_rbtree_purge\nffffffff820c2150 T inet_frag_queue_flush\n"
        "ffffffff8204b7d0 t ip_expire\nffffffff8204b9f0 t ip_defrag\n")
    facts = KernelFacts(tmp_path)
    out = drops.place_defines(facts, {"OFF_SKB_SK": 24, "OFF_SK_NET": 48, "OFF_SKB_SKB_IIF": 144,
                                      "OFF_NET_COOKIE": 4096})
    assert out["FRAG_PURGE_LO"] == 0xFFFFFFFF820C20C0 and out["FRAG_PURGE_HI"] == 0xFFFFFFFF820C2150
    assert (out["FRAG_EXPIRE_LO"], out["FRAG_EXPIRE_HI"]) == (0xFFFFFFFF8204B7D0, 0xFFFFFFFF8204B9F0)
    assert "FRAG_EXPIRE6_LO" not in out and out["OFF_NET_COOKIE"] == 4096
    assert all(type(v) is int for v in out.values())


def test_no_device_is_said_under_a_filter_and_in_health_only_when_there():
    quiet = DropSnapshot([], [], DropHealth(), 0, 10**9)
    assert "no_device" not in records.interval(quiet, 1)["health"]
    assert drops_view.no_device_line(quiet) is None
    snap = DropSnapshot([], [], DropHealth(no_device=30), 0, 10**9, where_filtered=True)
    assert records.interval(snap, 1)["health"]["no_device"] == 30
    text = " ".join(drops_view.plain_lines(snap, "t"))
    assert "30 drops had no device or namespace" in text and "cannot match them" in text.replace("\n", " ")


def test_a_rows_names_are_pinned_at_their_first_reading(monkeypatch):
    """A series never changes its labels: a namespace found later keeps the names its row was first shown
    with."""
    from netpath.collect.drops import DecodedKey, DropsQuery, RowDecoder

    class Names:
        def __init__(self) -> None:
            self.known: dict[int, tuple[str, str]] = {}

        def name(self, _inode, _ifindex, cookie=0):
            return self.known.get(cookie, (None, None))[0]

        def netns_label(self, _inode, cookie=0):
            return self.known.get(cookie, (None, None))[1]

    names = Names()
    decoder = RowDecoder(DropsQuery(by=("reason", "iface")), None, None, names, False)  # type: ignore[arg-type]
    key = DecodedKey(0, 0, 2, 4026532300, 0, 0, 0, b"", b"", 0, 0, netns_cookie=12)
    first = decoder.row(key, 1)
    names.known[12] = ("veth-b", "b")
    again = decoder.row(key, 2)
    assert (first.iface, first.netns_label) == (again.iface, again.netns_label) == (None, None)
    other = decoder.row(DecodedKey(0, 0, 2, 4026532300, 0, 0, 0, b"", b"", 0, 0, netns_cookie=13), 1)
    names.known[13] = ("x", "y")
    assert other.iface is None
