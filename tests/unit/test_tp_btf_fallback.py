"""compile_program: a typed (tp_btf) build that the kernel refuses, at load or at attach, is rebuilt as raw
tracepoints, and says why."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from netpath import bpf
from netpath.bpfload import load, program
from netpath.errors import MissingCapability

SOURCE = bpf.ProgramSource(["trace_common.c"], {"TP_BTF": 1}, {"np_btf_sk_data_ready": "sk_data_ready"})
FACTS = SimpleNamespace(btf_path=Path("/nonexistent"))


class Built:
    def __init__(self, defines: dict[str, int], refuse_attach: bool) -> None:
        self.defines = defines
        self.refuse_attach = refuse_attach
        self.tp_btf_refused = ""
        self.attached: list[str] = []
        self.closed = False

    def attach_tp_btf(self, fn: str, _tp: str, _btf_id: int) -> None:
        if self.refuse_attach:
            raise OSError(22, "tp_btf sk_data_ready: Invalid argument")
        self.attached.append(fn)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def built(monkeypatch):
    made: list[Built] = []

    def install(typed_fails: str) -> list[Built]:
        def compile_(source: bpf.ProgramSource, _facts: object) -> Built:
            if source.defines["TP_BTF"] and typed_fails == "load":
                raise MissingCapability("could not load the BPF program (shim headers): Invalid argument")
            made.append(Built(source.defines, source.defines["TP_BTF"] == 1 and typed_fails == "attach"))
            return made[-1]

        monkeypatch.setattr(program, "_compile", compile_)
        monkeypatch.setattr(load, "tp_btf_ids", lambda _path, tps: {tp: 7 for tp in tps})
        return made

    return install


def test_a_typed_build_that_loads_attaches_its_functions(built):
    made = built("never")
    prog = bpf.compile_program(SOURCE, FACTS)
    assert prog is made[0] and prog.attached == ["np_btf_sk_data_ready"] and not prog.tp_btf_refused


@pytest.mark.parametrize("stage", ["load", "attach"])
def test_a_refused_typed_build_falls_back_to_raw_tracepoints(built, stage):
    made = built(stage)
    prog = bpf.compile_program(SOURCE, FACTS)
    assert prog.defines["TP_BTF"] == 0 and not prog.attached
    assert "Invalid argument" in prog.tp_btf_refused
    if stage == "attach":
        assert made[0].closed and prog is made[1]


PKT_SOURCE = bpf.ProgramSource(["drops.c"], {"TP_BTF": 1, "OFF_SKB_HEAD": 192}, {"kfree_skb": "kfree_skb"},
                               packet_loads=True)


@pytest.fixture
def pkt_built(monkeypatch):
    """compile_program's builds when this kernel takes (or not) the test load through skb->head, and
    whether the packet-loads build itself loads."""
    made: list[Built] = []

    def install(verdict: bool, pkt_build_loads: bool = True) -> list[Built]:
        def compile_(source: bpf.ProgramSource, _facts: object) -> Built:
            if source.defines.get("TP_BTF_PKT") and not pkt_build_loads:
                raise MissingCapability("could not load the BPF program (shim headers): Permission denied")
            made.append(Built(source.defines, False))
            return made[-1]

        monkeypatch.setattr(program, "_compile", compile_)
        monkeypatch.setattr(load, "tp_btf_ids", lambda _path, tps: {tp: 7 for tp in tps})
        monkeypatch.setattr(load, "tp_btf_packet_loads", lambda _path, head_off: verdict and head_off == 192)
        return made

    return install


def test_packet_loads_are_built_in_where_the_verifier_takes_them(pkt_built):
    made = pkt_built(True)
    prog = bpf.compile_program(PKT_SOURCE, FACTS)
    assert prog is made[0] and prog.defines["TP_BTF_PKT"] == 1 and prog.attached == ["kfree_skb"]


def test_no_packet_loads_where_the_verifier_refuses_them_or_the_source_cannot(pkt_built):
    made = pkt_built(False)
    prog = bpf.compile_program(PKT_SOURCE, FACTS)
    assert "TP_BTF_PKT" not in prog.defines and prog.defines["TP_BTF"] == 1 and len(made) == 1
    pkt_built(True)
    prog = bpf.compile_program(bpf.ProgramSource(["drops.c"], {"TP_BTF": 1, "OFF_SKB_HEAD": 192},
                                                 {"kfree_skb": "kfree_skb"}), FACTS)
    assert "TP_BTF_PKT" not in prog.defines


def test_a_refused_packet_loads_build_falls_back_to_probe_reads_still_typed(pkt_built):
    made = pkt_built(True, pkt_build_loads=False)
    prog = bpf.compile_program(PKT_SOURCE, FACTS)
    assert prog is made[0] and "TP_BTF_PKT" not in prog.defines and prog.defines["TP_BTF"] == 1
    assert prog.attached == ["kfree_skb"] and not prog.tp_btf_refused
    assert "TP_BTF_PKT" not in PKT_SOURCE.without_tp_btf().defines


@pytest.mark.parametrize(("errno_", "verdict", "kept"), [(None, True, True), (13, False, True), (1, False, False)])
def test_the_packet_load_test_keeps_only_the_verifiers_verdict(monkeypatch, errno_, verdict, kept):
    """Loaded: yes; refused by the verifier (EACCES): no; could not test (EPERM: no CAP_BPF): no, not kept."""
    from netpath.kernel import cache as kcache

    stored: list[object] = []

    def cached_json(_path, _kind, compute, use_cache=True, *, valid):
        value = compute(b"")
        stored.append(value)
        return value

    def load_program(*_args, **_kwargs) -> int:
        if errno_ is not None:
            raise OSError(errno_, "refused")
        return os.open("/dev/null", os.O_RDONLY)

    monkeypatch.setattr(kcache, "cached_json", cached_json)
    monkeypatch.setattr(load, "tp_btf_ids", lambda _path, tps: {tp: 7 for tp in tps})
    monkeypatch.setattr(load, "load_program", load_program)
    assert load.tp_btf_packet_loads(Path("/nonexistent"), 192) is verdict
    assert stored == ([verdict] if kept else [])
    assert load.tp_btf_packet_loads(Path("/nonexistent"), -1) is False
