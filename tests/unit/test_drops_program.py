import ipaddress
import struct
from pathlib import Path

import pytest
from test_kernel_facts import DATA, make_root

from netpath import bpf, contract, netns
from netpath.collect import drops
from netpath.errors import MissingCapability
from netpath.kernel.facts import KernelFacts
from netpath.kernel.reasons import from_tracepoint
from netpath.kernel.tracefs import parse_format
from netpath.query import Filters
from netpath.render import records

OFFSETS = {
    "OFF_SKB_DEV": 16, "OFF_SKB_LEN": 112, "OFF_SKB_HEAD": 192, "OFF_SKB_PROTOCOL": 176,
    "OFF_SKB_NETWORK_HEADER": 180, "OFF_DEV_IFINDEX": 224, "OFF_DEV_ND_NET": 264, "OFF_NET_NS_INUM": 176,
    # attribution (offsets of the 6.18 development kernel)
    "OFF_SKB_SK": 24, "OFF_SK_STATE": 18, "OFF_SK_SOCKET": 288, "OFF_SK_CGROUP": 672, "OFF_CGROUP_KN": 256,
    "OFF_KN_ID": 96, "OFF_SOCKET_INODE": 128, "OFF_INODE_INO": 64,
}


@pytest.fixture
def facts(tmp_path):
    return KernelFacts.load(make_root(tmp_path, "6.18.1", (DATA / "kfree_skb-6.18.format").read_text(), False))


def test_defaults_group_by_reason_location_iface_proto(facts):
    src = drops.program_source(drops.DropsQuery(), facts, OFFSETS)
    d = src.defines
    assert src.files == ["where.c", "drop_place.c", "drops.c"]
    assert d["TP_HAS_REASON"] == 1
    assert (d["BY_REASON"], d["BY_LOCATION"], d["BY_IFACE"], d["BY_PROTO"], d["BY_FLOW"]) == (1, 1, 1, 1, 0)
    assert not any(k.startswith("FILTER_") for k in d)
    assert d["OFF_SKB_DEV"] == 16


def test_the_typed_build_may_read_packet_bytes_with_plain_loads_the_raw_one_not(facts):
    """compile_program adds TP_BTF_PKT where the verifier allows it; never to the raw tracepoint build."""
    src = drops.program_source(drops.DropsQuery(), facts, OFFSETS)
    assert src.packet_loads and "TP_BTF_PKT" not in src.defines
    assert not src.without_tp_btf().packet_loads
    assert not drops.program_source(drops.DropsQuery(tp_btf=False), facts, OFFSETS).packet_loads


def test_every_filter_is_a_number(facts):
    ns = netns.Netns(Path("/run/netns/x"), 4026532000, "x")
    filters = Filters(ns, ("veth0",), ((4026532000, 7),), "udp", 53, ipaddress.ip_address("10.1.2.3"))
    q = drops.DropsQuery(filters, reason_code=12, samples=4, stack=True)
    src = drops.program_source(q, facts, OFFSETS)
    d = src.defines
    assert d["FILTER_NETNS"] == 4026532000
    assert d["FILTER_IFACE"] == 1
    assert d["FILTER_PROTO"] == 17
    assert d["FILTER_PORT"] == 53
    assert d["FILTER_REASON"] == 12
    assert d["FILTER_HOST_FAMILY"] == 4
    assert d["FILTER_HOST_W0"] == struct.unpack("<I", bytes([10, 1, 2, 3]))[0]
    assert d["BY_FLOW"] == 1  # a port or host filter shows the flow
    assert d["WITH_STACK"] == 1 and d["SAMPLE_BUDGET"] == 4
    assert src.files == ["where.c", "drop_place.c", "drops_owner.c", "drops.c"]  # samples name the socket
    flags = src.cflags()
    assert all(f.startswith("-I") or f.split("=", 1)[1].isdigit() for f in flags)


def test_ipv6_host_is_four_words(facts):
    q = drops.DropsQuery(Filters(host=ipaddress.ip_address("2001:db8::1")))
    d = drops.program_source(q, facts, OFFSETS).defines
    assert d["FILTER_HOST_FAMILY"] == 6
    words = [d[f"FILTER_HOST_W{i}"] for i in range(4)]
    assert b"".join(struct.pack("<I", w) for w in words) == ipaddress.ip_address("2001:db8::1").packed


def test_defines_reject_non_integers():
    with pytest.raises(TypeError):
        bpf.ProgramSource(["drops.c"], {"FILTER_PORT": "53; evil()"}).cflags()  # type: ignore[dict-item]


def test_missing_offsets_is_an_environment_error(facts):
    with pytest.raises(MissingCapability, match="OFF_SKB_HEAD"):
        drops.program_source(drops.DropsQuery(), facts, {k: v for k, v in OFFSETS.items() if k != "OFF_SKB_HEAD"})


def test_kernel_without_reason_field(tmp_path):
    facts = KernelFacts.load(make_root(tmp_path, "5.15.0", (DATA / "kfree_skb-5.15.format").read_text(), True))
    assert drops.program_source(drops.DropsQuery(), facts, OFFSETS).defines["TP_HAS_REASON"] == 0


def pack_key(location=0, reason=0, ifindex=0, ns=0, l3=0, l4=0, family=0, saddr=b"", daddr=b"", sport=0, dport=0,
             cookie=0, placed_by=1):
    return contract.DROP_FULL_KEY.fmt.pack(location, reason, ifindex, ns, l3, l4, family, cookie, placed_by, 0,
                                           saddr.ljust(16, b"\0"),
                                           daddr.ljust(16, b"\0"), sport, dport, 0)


class FakeNames:
    def name(self, ns, ifindex, cookie=0):
        return {(1, 1): "lo", (5, 3): "veth0"}.get((ns, ifindex))

    def netns_label(self, ns, cookie=0):
        return {1: "host", 5: "web"}.get(ns)


def decoder(facts, **query):
    reasons = from_tracepoint(parse_format((DATA / "kfree_skb-6.18.format").read_text()).symbols["reason"])
    return drops.RowDecoder(drops.DropsQuery(**query), reasons, facts, FakeNames(), True)


def test_key_layout_matches_the_c_struct():
    assert contract.DROP_FULL_KEY.size == 80 and drops.SHORT_KEY_SIZE == 40
    assert contract.DROP_SAMPLE.size == 80 + 16 + 8 + 4 * 4 + 16


def test_row_decoding(facts):
    raw = pack_key(0, 3, 1, 1, 0x0800, 17, 4, bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]), 4000, 53)
    row = decoder(facts).row(drops.DecodedKey.unpack(raw), 3000)
    assert (row.reason, row.reason_code, row.iface, row.ifindex, row.netns, row.proto, row.count) == (
        "NO_SOCKET", 3, "lo", 1, 1, "udp", 3000)
    assert row.placed_by == "device" and records.drop_row(row, False)["placed_by"] == "device"
    assert row.saddr is None  # not flow-keyed
    flow = decoder(facts, filters=Filters(port=53)).row(drops.DecodedKey.unpack(raw), 1)
    assert (flow.saddr, flow.daddr, flow.sport, flow.dport, flow.family) == ("127.0.0.1", "127.0.0.1", 4000, 53, 4)
    assert set(records.drop_row(flow, True)) >= {"reason", "reason_code", "location", "iface", "ifindex", "netns",
                                                 "proto", "count", "family", "saddr", "daddr", "sport", "dport"}


def test_ipv6_and_non_ip_rows(facts):
    v6 = ipaddress.ip_address("fd00::2").packed
    raw = pack_key(0, 2, 3, 5, 0x86DD, 58, 6, v6, v6)
    row = decoder(facts, by=("reason", "iface", "proto", "flow")).row(drops.DecodedKey.unpack(raw), 2)
    assert (row.reason, row.iface, row.proto, row.saddr, row.sport) == ("NOT_SPECIFIED", "veth0", "icmpv6",
                                                                       "fd00::2", None)
    arp = decoder(facts).row(drops.DecodedKey.unpack(pack_key(l3=0x0806)), 1)
    assert arp.proto == "arp"
    assert drops.proto_name(0, 0x88B5, 0) == "0x88b5"
    assert drops.proto_name(0, 0, 0) is None


def test_spans_let_neighbouring_fields_share_one_read():
    from netpath.kernel.offsets import spans

    sizes = {"SIZE_SKB_PROTOCOL": 2, "SIZE_SKB_NETWORK_HEADER": 2, "SIZE_SKB_HEAD": 8,
             "SIZE_DEV_IFINDEX": 4, "SIZE_DEV_ND_NET": 8}
    got = spans({**OFFSETS, **sizes})
    assert got == {"SKB_SPAN_OFF": 176, "SKB_SPAN_LEN": 24, "DEV_SPAN_OFF": 224, "DEV_SPAN_LEN": 48}
    far = spans({**OFFSETS, **sizes, "OFF_SKB_HEAD": 400})
    assert "SKB_SPAN_OFF" not in far and "DEV_SPAN_OFF" in far


def test_short_key_without_flow_decodes():
    raw = pack_key(0xFFFF_FFFF_8100_0000, 3, 1, 1, 0x0800, 17, 4)[: drops.SHORT_KEY_SIZE]
    key = drops.DecodedKey.unpack(raw)
    assert (key.location, key.reason, key.ifindex, key.l4proto, key.sport) == (0xFFFF_FFFF_8100_0000, 3, 1, 17, 0)


@pytest.mark.parametrize("code, name", [(0, None), (1, "device"), (2, "socket"), (3, "fragment_queue"),
                                        (4, "reader"), (99, None)])
def test_placed_by_names_what_found_the_namespace(facts, code, name):
    raw = pack_key(0, 3, 1, 1, 0x0800, 17, 4, placed_by=code)
    row = decoder(facts).row(drops.DecodedKey.unpack(raw), 1)
    assert row.placed_by == name
    assert records.drop_row(row, False).get("placed_by") == name


def test_place_defines_name_the_udp_reads_and_the_fragment_timers(tmp_path):
    import netpath.kernel.kallsyms as ks

    text = "\n".join(f"{a:016x} t {n}" for a, n in [
        (0x1000, "inet_frag_rbtree_purge"), (0x1100, "ip_expire"), (0x1200, "udp_recvmsg"),
        (0x1300, "__first_packet_length"), (0x1400, "ip6_frag_expire"), (0x1500, "zzz_end")])

    class Facts:
        kallsyms = ks.Kallsyms.parse(text)

        def text_ranges(self, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
            return {n: r for n in names if (r := self.kallsyms.text_range(n)) is not None}

    offsets = {**OFFSETS, "OFF_TASK_NSPROXY": 1, "OFF_NSPROXY_NET_NS": 2, "OFF_TIMER_FUNCTION": 3,
               "OFF_FRAGQ_TIMER": 4, "OFF_FRAGQ_FQDIR": 5, "OFF_FQDIR_NET": 6}
    got = drops.place_defines(Facts(), offsets)  # type: ignore[arg-type]
    assert (got["UDP_READ0_LO"], got["UDP_READ0_HI"], got["UDP_READ1_LO"]) == (0x1200, 0x1300, 0x1300)
    assert "UDP_READ2_LO" not in got  # udpv6_recvmsg and first_packet_length are not in this kernel
    assert (got["FRAG_TIMER0"], got["FRAG_TIMER1"]) == (0x1100, 0x1400) and "FRAG_TIMER2" not in got
    assert got["OFF_FQDIR_NET"] == 6 and got["OFF_TASK_NSPROXY"] == 1
    # without the fields, nothing: the C then places none of these (no_device says how many)
    bare = drops.place_defines(Facts(), OFFSETS)  # type: ignore[arg-type]
    assert "UDP_READ0_LO" not in bare and "FRAG_TIMER0" not in bare
