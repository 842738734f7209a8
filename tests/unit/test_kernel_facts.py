"""Kernel facts read from fixture trees shaped like 6.18 (this host), 6.1-like and 5.15-like kernels."""

from pathlib import Path

import pytest

from netpath.collect.drops import has_reason_field
from netpath.kernel.facts import KernelFacts
from netpath.kernel.kallsyms import Kallsyms
from netpath.kernel.tracefs import parse_format

DATA = Path(__file__).parent / "data"

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81a00000 T ip_rcv
ffffffff81a00400 t ip_rcv_finish.isra.0
ffffffff81a00800 T __udp4_lib_rcv
ffffffff81a01000 t tcp_v4_rcv.constprop.0
ffffffff81a01400 t tcp_v4_rcv.constprop.1
ffffffff82000000 D some_data
"""


def make_root(tmp_path: Path, release: str, kfree_format: str, kprobes: bool) -> Path:
    root = tmp_path / release
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "proc/sys/kernel/osrelease").write_text(release + "\n")
    (root / "proc/version").write_text(f"Linux version {release} (fixture)\n")
    (root / "proc/kallsyms").write_text(KALLSYMS)
    events = root / "sys/kernel/tracing/events/skb/kfree_skb"
    events.mkdir(parents=True)
    (events / "format").write_text(kfree_format)
    (root / "sys/kernel/tracing/available_events").write_text("skb:kfree_skb\nnapi:napi_poll\n")
    (root / "proc/config_kprobes").write_text("CONFIG_KPROBES=y\n" if kprobes else "# CONFIG_KPROBES is not set\n")
    if kprobes:
        (root / "sys/bus/event_source/devices/kprobe").mkdir(parents=True)
    return root


@pytest.fixture
def root_618(tmp_path):
    return make_root(tmp_path, "6.18.44-fc", (DATA / "kfree_skb-6.18.format").read_text(), kprobes=False)


@pytest.fixture
def root_515(tmp_path):
    return make_root(tmp_path, "5.15.0-91-generic", (DATA / "kfree_skb-5.15.format").read_text(), kprobes=True)


def test_618_facts(root_618):
    facts = KernelFacts.load(root_618)
    assert facts.release == "6.18.44-fc"
    assert facts.release_tuple == (6, 18, 44)
    assert facts.has_tracepoint("skb:kfree_skb")
    assert not facts.has_tracepoint("skb:consume_skb")
    assert not facts.has_kprobes
    assert facts.kprobe_reason == "kernel built without CONFIG_KPROBES"
    assert not facts.has_headers
    assert not facts.has_btf
    assert has_reason_field(facts)


def test_515_has_kprobes_and_no_reason_field(root_515):
    facts = KernelFacts.load(root_515)
    assert facts.release_tuple == (5, 15, 0)
    assert facts.has_kprobes
    assert not has_reason_field(facts)
    fmt = facts.tracepoint_format("skb:kfree_skb")
    assert fmt is not None and list(fmt.fields) == ["skbaddr", "location", "protocol"]
    assert fmt.symbols == {}


def test_headers_detected(root_618):
    (root_618 / "lib/modules/6.18.44-fc/build/include").mkdir(parents=True)
    assert KernelFacts.load(root_618).has_headers


def test_no_tracefs(tmp_path):
    (tmp_path / "proc").mkdir()
    facts = KernelFacts.load(tmp_path)
    assert facts.tracefs is None
    assert facts.tracepoints == frozenset()
    assert facts.tracepoint_format("skb:kfree_skb") is None
    assert facts.release == "unknown"


def test_format_parsing_618():
    fmt = parse_format((DATA / "kfree_skb-6.18.format").read_text())
    assert fmt.name == "kfree_skb"
    assert fmt.fields["reason"].offset == 36 and fmt.fields["reason"].size == 4
    assert fmt.fields["skbaddr"].ctype == "void *"
    assert fmt.symbols["reason"][2] == "NOT_SPECIFIED"
    assert fmt.symbols["reason"][12] == "NETFILTER_DROP"
    assert "common_pid" not in fmt.fields


def test_kallsyms_symbolize_and_clone_suffixes():
    ks = Kallsyms.parse(KALLSYMS)
    assert ks.symbolize(0xFFFFFFFF81A00810) == "__udp4_lib_rcv+0x10"
    assert ks.symbolize(0xFFFFFFFF81A00000) == "ip_rcv+0x0"
    assert ks.symbolize(0x10) == "0x10"
    assert ks.resolve("ip_rcv") == "ip_rcv"
    assert ks.resolve("ip_rcv_finish") == "ip_rcv_finish.isra.0"
    assert ks.resolve("tcp_v4_rcv") == "tcp_v4_rcv.constprop.0"
    assert ks.resolve("udp_rcv") is None


def test_text_range_is_an_exact_name_in_the_packed_index():
    ks = Kallsyms.parse(KALLSYMS)
    assert ks.text_range("ip_rcv") == (0xFFFFFFFF81A00000, 0xFFFFFFFF81A00400)
    # names are packed without separators: a name inside another, or straddling two, is no match
    assert ks.text_range("rcv") is None
    assert ks.text_range("rcvip_rcv") is None
    assert ks.text_range("tcp_v4_rcv") is None
    assert ks.text_range("tcp_v4_rcv.constprop.0") == (0xFFFFFFFF81A01000, 0xFFFFFFFF81A01400)
    assert ks.text_range("tcp_v4_rcv.constprop.1") is None  # the last text symbol: no end known
    assert ks.text_range("") is None
    # the index survives the boot cache's round trip, and the lookup needs nothing else
    from netpath.kernel.kallsyms import unpack_index
    packed = unpack_index(ks.pack_index())
    assert packed is not None
    again = Kallsyms(lambda: b"", packed)
    assert again.text_range("__udp4_lib_rcv") == (0xFFFFFFFF81A00800, 0xFFFFFFFF81A01000)


def test_kallsyms_without_addresses_still_symbolizes_as_hex():
    ks = Kallsyms.parse("0000000000000000 T ip_rcv\n")
    assert not ks.has_addresses
    assert ks.symbolize(0xFFFF) == "0xffff"
    assert ks.resolve("ip_rcv") == "ip_rcv"
