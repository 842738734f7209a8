from pathlib import Path

import pytest
from btf_builder import BTFBuilder, kernel_like

from netpath.kernel import offsets
from netpath.kernel.btf import BTF, BTFError, FieldInfo


def test_member_inside_anonymous_union_has_the_union_offset():
    btf = BTF(kernel_like().blob())
    assert btf.field("sk_buff", "dev") == FieldInfo(16, 8)
    assert btf.field("sk_buff", "dev_scratch") == FieldInfo(16, 4)
    assert btf.field("sk_buff", "len") == FieldInfo(112, 4)
    assert btf.field("sk_buff", "protocol") == FieldInfo(176, 2)


def test_dotted_path_walks_through_typedefs():
    btf = BTF(kernel_like().blob())
    assert btf.field("net_device", "nd_net.net") == FieldInfo(264, 8)
    assert btf.field("net_device", "ifindex") == FieldInfo(224, 4)


def test_bitfield_is_reported_not_misread():
    info = BTF(kernel_like().blob()).field("sk_buff", "flags")
    assert info.bitfield_size == 1


def test_missing_member_and_struct_raise():
    btf = BTF(kernel_like().blob())
    with pytest.raises(BTFError, match="no member 'nope'"):
        btf.field("sk_buff", "nope")
    with pytest.raises(BTFError):
        btf.field("no_such_struct", "x")


def test_enum_and_enum64():
    b = kernel_like()
    b.enum64("big", {"A": 1 << 40, "B": 2})
    btf = BTF(b.blob())
    assert btf.enum("skb_drop_reason")["SKB_DROP_REASON_NO_SOCKET"] == 3
    assert btf.enum("big") == {"A": 1 << 40, "B": 2}


def test_bad_magic():
    with pytest.raises(BTFError, match="magic"):
        BTF(b"\0" * 32)


def test_split_module_btf_resolves_strings_and_ids_against_base():
    base = kernel_like()
    mod = BTFBuilder(base=base)
    mod.enum("mac80211_drop_reason", {"RX_DROP_U_MIC_FAIL": (1 << 16) | 1, "RX_DROP_U_REPLAY": (1 << 16) | 2})
    base_btf = BTF(base.blob())
    mod_btf = BTF(mod.blob(), base=base_btf)
    assert mod_btf.enum("mac80211_drop_reason")["RX_DROP_U_REPLAY"] == (1 << 16) | 2
    assert mod_btf.field("sk_buff", "len") == FieldInfo(112, 4)  # base types stay reachable


def test_offsets_compute_covers_fields_present_and_skips_absent():
    got = offsets.compute(BTF(kernel_like().blob()))
    assert got["OFF_SKB_DEV"] == 16 and got["SIZE_SKB_DEV"] == 8
    assert got["OFF_DEV_ND_NET"] == 264
    assert "OFF_SKB_HEAD" not in got  # not in this synthetic kernel


def test_offsets_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("NETPATH_CACHE", str(tmp_path))
    path = tmp_path / "vmlinux"
    path.write_bytes(kernel_like().blob())
    first = offsets.load(path)
    assert list((tmp_path / "store").glob("offsets-*"))
    assert offsets.load(path) == first


@pytest.mark.skipif(not Path("/sys/kernel/btf/vmlinux").exists(), reason="kernel has no BTF (CONFIG_DEBUG_INFO_BTF)")
def test_real_kernel_btf_has_every_field_netpath_reads():
    got = offsets.compute(BTF.from_path(Path("/sys/kernel/btf/vmlinux")))
    for name in offsets.FIELDS:
        assert name in got, name
