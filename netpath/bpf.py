"""The names sessions and tests have always imported from netpath.bpf, now served by netpath/bpfload/.

Kept so code written against `bpf.Program`, `bpf.ProgramSource` and `bpf.compile_program` keeps working;
new code imports from netpath.bpfload.
"""

from __future__ import annotations

from collections.abc import Callable

from netpath.bpfload.build import (
    BPF_DIR,
    ProgramSource,
    dump_source,
    headers_mode,
    import_bcc,
    struct_offsets,
)
from netpath.bpfload.load import TP_BTF_TRACEPOINTS, tp_btf_allowed, tp_btf_ids
from netpath.bpfload.program import EventHandler, LostHandler, Program, compile_program
from netpath.kernel.facts import KernelFacts

Loader = Callable[[ProgramSource, KernelFacts], Program]

__all__ = [
    "BPF_DIR",
    "TP_BTF_TRACEPOINTS",
    "EventHandler",
    "Loader",
    "LostHandler",
    "Program",
    "ProgramSource",
    "compile_program",
    "dump_source",
    "headers_mode",
    "import_bcc",
    "struct_offsets",
    "tp_btf_allowed",
    "tp_btf_ids",
]
