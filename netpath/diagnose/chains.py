"""Cause chains: one finding, not three, when one cause explains several signals.

Each chain names a cause rule, an effect rule and what ties them (the same socket, the same CPU). The
effect (the harm: packets lost) stays, with the cause's evidence added and the cause's id in `explains`;
the cause's own finding goes. The severity is the higher of the two.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from netpath.diagnose.severity import RANK
from netpath.model import Evidence, Finding


def _same_socket(cause: Finding, effect: Finding) -> bool:
    c, e = cause.where, effect.where
    if c.netns is not None and e.netns is not None and c.netns != e.netns:
        return False
    if c.pid is not None and c.pid == e.pid:
        return c.lport is None or e.lport is None or c.lport == e.lport
    return c.lport is not None and c.lport == e.lport and c.laddr == e.laddr


_CPU = re.compile(r"\bCPU (\d+)\b")


def _cpus(f: Finding) -> set[int]:
    """The CPUs a finding's evidence names with a nonzero value (softnet rows are per CPU)."""
    out = {int(m.group(1)) for e in f.evidence if e.value for m in [_CPU.search(e.name)] if m}
    if f.where.cpu is not None:
        out.add(f.where.cpu)
    return out


def _same_cpu(cause: Finding, effect: Finding) -> bool:
    return bool(_cpus(cause) & _cpus(effect))


def _same_host(cause: Finding, effect: Finding) -> bool:
    return True


@dataclass(frozen=True)
class Chain:
    cause: str
    effect: str
    tie: Callable[[Finding, Finding], bool]
    because: str  # appended to the effect's why


CHAINS: tuple[Chain, ...] = (
    # a slow reader whose socket then overflows (or is about to)
    Chain("slow-reader", "socket-rcvbuf-overflow", _same_socket, "the reader is slow (slow-reader's latency "
          "is in the evidence): a bigger buffer only delays the drops"),
    Chain("slow-reader", "tcp-rcvq-drop", _same_socket, "the reader is slow (slow-reader's latency is in the "
          "evidence)"),
    Chain("slow-reader", "socket-headroom", _same_socket, "the reader is slow (slow-reader's latency is in the "
          "evidence)"),
    # a queue that is full and already dropping needs no warning that it is about to
    Chain("socket-headroom", "listen-overflow", _same_socket, "the accept queue is still full at the end"),
    Chain("socket-headroom", "socket-rcvbuf-overflow", _same_socket, "the buffer is still full at the end"),
    Chain("socket-headroom", "tcp-rcvq-drop", _same_socket, "the buffer is still full at the end"),
    # a CPU that runs out of NET_RX budget is the one whose backlog overflows
    Chain("napi-budget-squeeze", "backlog-overflow", _same_cpu, "the same CPU ran out of NET_RX budget or time "
          "(time_squeeze in the evidence): it cannot drain its backlog"),
    Chain("rx-imbalance", "backlog-overflow", _same_cpu, "that CPU does nearly all the receive work "
          "(rx-imbalance's numbers in the evidence): spread it (RPS, IRQ affinity)"),
    # a squeezed NET_RX leaves the NIC ring undrained
    Chain("napi-budget-squeeze", "nic-ring-overrun", _same_host, "NET_RX ran out of budget or time in the same "
          "window (time_squeeze in the evidence): the ring was not drained in time"),
)


def _fold(effect: Finding, cause: Finding, because: str) -> Finding:
    have = {(e.counter, e.value) for e in effect.evidence if e.counter}
    evidence = effect.evidence + tuple(
        Evidence(f"{cause.id}: {e.name}", e.value, e.counter, e.unit) for e in cause.evidence
        if not e.counter or (e.counter, e.value) not in have)
    knobs = effect.knobs + tuple(k for k in cause.knobs if k.name not in {x.name for x in effect.knobs})
    severity = max(effect.severity, cause.severity, key=lambda s: RANK[s])
    return replace(effect, severity=severity, evidence=evidence, knobs=knobs, why=f"{effect.why}; {because}",
                   explains=(*effect.explains, cause.id, *cause.explains))


def fold(findings: list[Finding]) -> list[Finding]:
    out = list(findings)
    for chain in CHAINS:
        causes = [f for f in out if f.id == chain.cause]
        for cause in causes:
            effects = [i for i, f in enumerate(out) if f.id == chain.effect and chain.tie(cause, f)]
            if not effects:
                continue
            first = effects[0]
            out[first] = _fold(out[first], cause, chain.because)
            out.remove(cause)
    return out
