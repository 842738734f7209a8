from btf_builder import BTFBuilder, kernel_like

from netpath.kernel import reasons
from netpath.kernel.btf import BTF
from netpath.kernel.tracefs import parse_format

KFREE_FORMAT_618 = (__import__("pathlib").Path(__file__).parent / "data" / "kfree_skb-6.18.format").read_text()


def test_core_names_come_from_the_btf_enum():
    r = reasons.from_btf(BTF(kernel_like().blob()))
    assert r.source == "btf"
    assert r.name(2) == "NOT_SPECIFIED"
    assert r.name(3) == "NO_SOCKET"
    assert r.name(12) == "NETFILTER_DROP"
    assert "MAX" not in r.names()


def test_subsystem_reason_without_module_btf_names_the_subsystem():
    r = reasons.from_btf(BTF(kernel_like().blob()))
    assert r.name((2 << 16) | 7) == "OPENVSWITCH:7"
    assert r.name(999) == "UNKNOWN_999"


def test_subsystem_reasons_from_module_btf():
    base = kernel_like()
    mod = BTFBuilder(base=base)
    mod.enum("mac80211_drop_reason", {"RX_DROP_U_MIC_FAIL": (1 << 16) | 1})
    base_btf = BTF(base.blob())
    r = reasons.from_btf(base_btf, {"mac80211": BTF(mod.blob(), base=base_btf)})
    assert r.name((1 << 16) | 1) == "RX_DROP_U_MIC_FAIL"
    assert r.code("rx_drop_u_mic_fail") == (1 << 16) | 1


def test_tracepoint_table_fallback():
    fmt = parse_format(KFREE_FORMAT_618)
    r = reasons.from_tracepoint(fmt.symbols["reason"])
    assert r.name(3) == "NO_SOCKET"
    assert r.name(6) == "SOCKET_RCVBUFF"
    assert r.code("netfilter_drop") == 12
    assert r.code("SKB_DROP_REASON_NO_SOCKET") == 3
    assert r.code("nope") is None


def test_load_prefers_btf_then_tracepoint(tmp_path):
    assert reasons.load(tmp_path / "missing", {3: "NO_SOCKET"}).source == "tracepoint"
    assert reasons.load(None, None).source == "none"
    path = tmp_path / "vmlinux"
    path.write_bytes(kernel_like().blob())
    assert reasons.load(path, None).source == "btf"
