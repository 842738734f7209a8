"""compile_program: a typed (tp_btf) build that the kernel refuses, at load or at attach, is rebuilt as raw
tracepoints, and says why."""

from __future__ import annotations

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
