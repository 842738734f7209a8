"""netpath/contract.py is the one owner of what C and Python share; these tests catch drift on either side."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from netpath import contract
from netpath.collect import trace as trace_mod
from netpath.stages import STAGE_IDS, STAGES

BPF = Path(__file__).resolve().parents[2] / "bpf"
# the trace program's units, as netpath places them (the C is one text)
TRACE_C = "\n".join((BPF / name).read_text() for name in trace_mod.TRACE_UNITS)
HANDLER = re.compile(r"^(?:RAW_TRACEPOINT_PROBE\((\w+)\)|int (k[pr]_\w+)\(void \*ctx\))\n\{\n(.*?)^\}", re.M | re.S)
HIT = re.compile(r"np_(?:enter|hit|hit_c)\((?:c, )?(H_\w+)\)")
# bpf/trace_kprobe.c's table: one kprobe program per NP_KP_CHECKPOINT(function, counter, ...) line
KP_TABLE = re.compile(r"^NP_KP_CHECKPOINT\((k[pr]_\w+),\s*(H_\w+),", re.M)


def handlers(text: str) -> list[tuple[str, str, str]]:
    """(tracepoint event or '', kprobe function or '', the H_* counter its body bumps first)."""
    out = []
    for m in HANDLER.finditer(text):
        hit = HIT.search(m.group(3))
        assert hit, f"handler {m.group(1) or m.group(2)} bumps no hit counter"
        out.append((m.group(1) or "", m.group(2) or "", hit.group(1)))
    out.extend(("", fn, c_id) for fn, c_id in KP_TABLE.findall(text))
    return out


def check_handlers(text: str, hooks: tuple[contract.Hook, ...]) -> None:
    by_id = {h.c_id: h for h in hooks}
    for event, fn, c_id in handlers(text):
        hook = by_id.get(c_id)
        assert hook is not None, f"{c_id} is not in contract.TRACE_HOOKS"
        if event:
            assert hook.name.split(":", 1)[-1] == event, f"RAW_TRACEPOINT_PROBE({event}) counts as {hook.name}"
        else:
            assert hook.kprobe_fn == fn, f"{fn} counts as {hook.name}, whose program is {hook.kprobe_fn!r}"


def test_every_c_handler_bumps_the_counter_of_the_hook_it_is_attached_to():
    found = handlers(TRACE_C)
    assert len(found) >= 25
    check_handlers(TRACE_C, contract.TRACE_HOOKS)


def test_swapping_two_hooks_in_the_table_fails_the_check():
    hooks = list(contract.TRACE_HOOKS)
    hooks[0], hooks[1] = replace(hooks[0], c_id=hooks[1].c_id), replace(hooks[1], c_id=hooks[0].c_id)
    with pytest.raises(AssertionError, match="irq_handler"):
        check_handlers(TRACE_C, tuple(hooks))


def test_the_kprobe_table_is_read_and_checked():
    found = {fn: c_id for _event, fn, c_id in handlers(TRACE_C) if fn.startswith("kp_ip")}
    assert found == {"kp_ip_rcv": "H_KP_IP_RCV", "kp_ipv6_rcv": "H_KP_IPV6_RCV",
                     "kp_ip_local_deliver": "H_KP_IP_LOCAL", "kp_ip6_input": "H_KP_IP6_INPUT"}
    swapped = TRACE_C.replace("NP_KP_CHECKPOINT(kp_udp_rcv,\t\tH_KP_UDP,", "NP_KP_CHECKPOINT(kp_udp_rcv,\t\tH_KP_UDP6,")
    assert swapped != TRACE_C
    with pytest.raises(AssertionError, match="kp_udp_rcv"):
        check_handlers(swapped, contract.TRACE_HOOKS)


def test_renaming_a_hook_fails_the_check():
    hooks = tuple(replace(h, name="net:netif_receive_skb_core") if h.c_id == "H_NRS" else h
                  for h in contract.TRACE_HOOKS)
    with pytest.raises(AssertionError, match="netif_receive_skb"):
        check_handlers(TRACE_C, hooks)


def test_every_kprobe_program_exists_in_the_c_and_every_c_program_is_in_the_table():
    in_c = {fn for _event, fn, _c_id in handlers(TRACE_C) if fn}
    in_table = {h.kprobe_fn for h in contract.TRACE_HOOKS if h.kprobe_fn}
    assert in_c == in_table
    assert contract.kprobe_programs("net_rx_action") == [("entry", "kp_net_rx_action"),
                                                         ("return", "kr_net_rx_action")]


def test_every_hook_a_stage_can_choose_has_a_counter():
    names = set(contract.HOOK_NAMES)
    for stage in STAGES:
        for hs in stage.choices:
            for hook in hs.hooks:
                assert hook in names, f"{stage.id}: {hook} has no hit counter in contract.TRACE_HOOKS"
    assert len(names) == len(contract.TRACE_HOOKS)
    assert len({h.c_id for h in (*contract.TRACE_HOOKS, *contract.TRACE_STATS)}) == contract.HITS


@pytest.mark.parametrize("layout", contract.SHARED_LAYOUTS, ids=lambda lay: lay.c_name)
def test_python_layouts_have_no_hidden_padding(layout: contract.Layout):
    """C's sizeof (natural alignment) equals Python's packed struct size; the C asserts the same number."""
    assert layout.c_size() == layout.size
    assert f"sizeof(struct {layout.c_name}) == {layout.size}" in contract.c_prelude()


def test_shared_struct_sizes_are_pinned():
    sizes = {lay.c_name: lay.size for lay in contract.SHARED_LAYOUTS}
    assert sizes == {
        "np_napi_val": 40, "np_cpu_counters": 8 * contract.HITS + 56 + 8 * len(STAGES), "np_hist_key": 16,
        "np_napi_key": 12,
        "np_stage_hist": 8 * 512, "np_slow_event": 128, "drop_where": 40, "drop_flow": 40, "drop_full_key": 80,
        "drop_sample": 136, "drop_owner": 16, "np_owner_key": 16, "pcap_meta": 64, "follow_hop": 216,
    }
    assert contract.HITS == 36


def test_a_layout_change_on_the_python_side_shows_in_both_sizes():
    grown = replace(contract.SLOW_EVENT, fields=(*contract.SLOW_EVENT.fields, contract.Field("extra", "u32")))
    assert grown.size == contract.SLOW_EVENT.size + 4
    assert grown.c_size() == contract.SLOW_EVENT.size + 8  # C pads to 8: the assert in the prelude fails
    assert "== 132" in grown.c_decl()


def test_no_c_file_defines_a_shared_struct_or_enum_itself():
    for path in BPF.glob("*.[ch]"):
        text = path.read_text()
        for layout in contract.SHARED_LAYOUTS:
            assert f"struct {layout.c_name} {{" not in text, f"{path.name} redefines {layout.c_name}"
        for enum in ("np_stage", "np_hook", "drop_stat"):
            assert f"enum {enum} {{" not in text, f"{path.name} redefines enum {enum}"


def test_prelude_enums_follow_the_python_tables():
    text = contract.c_prelude()
    for i, stage in enumerate(STAGES):
        assert f"\tSTAGE_{stage.c_name} = {i},\n" in text
        assert stage.index == i == STAGE_IDS.index(stage.id)
    for i, hook in enumerate((*contract.TRACE_HOOKS, *contract.TRACE_STATS)):
        assert f"\t{hook.c_id} = {i},\n" in text
    assert f"\tH_MAX = {contract.HITS},\n" in text
    assert "\tSTAT_SKIPPED_SAMPLES = 4,\n" in text


def test_every_stage_constant_the_c_uses_is_generated():
    used = set(re.findall(r"\bSTAGE_[A-Z_]+\b", TRACE_C))
    generated = {f"STAGE_{s.c_name}" for s in STAGES}
    assert used <= generated, used - generated
