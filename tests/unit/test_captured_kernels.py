"""Kernel facts from trees captured off real kernels: Debian 6.1 and 6.12 (lab guests) and 6.18 (this host)."""

from pathlib import Path

import pytest

from netpath.collect.drops import TRACEPOINT, has_reason_field
from netpath.kernel.facts import KernelFacts
from netpath.kernel.reasons import from_tracepoint

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.mark.parametrize(
    ("tree", "release", "kprobes"),
    [("6.1", (6, 1, 0), True), ("6.12", (6, 12, 95), True), ("6.18", (6, 18, 44), False)],
)
def test_captured_kernel_facts(tree, release, kprobes):
    facts = KernelFacts.load(FIXTURES / tree)
    assert facts.release_tuple == release
    assert facts.has_kprobes is kprobes
    assert facts.has_tracepoint(TRACEPOINT)
    assert has_reason_field(facts)
    fmt = facts.tracepoint_format(TRACEPOINT)
    reasons = from_tracepoint(fmt.symbols["reason"])
    assert reasons.name(reasons.code("NOT_SPECIFIED")) == "NOT_SPECIFIED"
    assert reasons.code("NO_SOCKET") is not None
    assert reasons.code("NETFILTER_DROP") is not None
    assert facts.kallsyms.resolve("ip_rcv") == "ip_rcv"


def test_drop_reason_codes_move_between_kernels():
    """Why netpath never carries a table: the same name has different codes across releases."""
    codes = {}
    for tree in ("6.1", "6.18"):
        fmt = KernelFacts.load(FIXTURES / tree).tracepoint_format(TRACEPOINT)
        codes[tree] = from_tracepoint(fmt.symbols["reason"])
    names_61 = set(codes["6.1"].names())
    names_618 = set(codes["6.18"].names())
    assert names_618 - names_61  # 6.18 knows reasons 6.1 never had
    assert codes["6.1"].code("NO_SOCKET") == 2 and codes["6.18"].code("NO_SOCKET") == 3
