"""netpath doctor for people: one block per finding, worst first, in 80 columns."""

from __future__ import annotations

import textwrap

from netpath.model import Diagnosis, Evidence, Finding, FindingWhere

LABEL = 11  # "  evidence" and friends, then the text


def _wrap(label: str, text: str, width: int) -> list[str]:
    lead = f"  {label:<{LABEL - 2}}"
    return textwrap.wrap(text, width=width, initial_indent=lead, subsequent_indent=" " * LABEL,
                         break_on_hyphens=False) or [lead.rstrip()]


def _value(e: Evidence) -> str:
    if e.unit == "ns":
        return f"{e.value / 1e6:,.1f} ms" if e.value >= 100_000 else f"{e.value:,} ns"
    return f"{e.value:,}"


def where_text(w: FindingWhere) -> str:
    parts = []
    if w.comm:
        parts.append(f"{w.comm}[{w.pid}]" if w.pid else w.comm)
    if w.lport:
        parts.append(f"{w.proto or ''} {w.laddr}:{w.lport}".strip())
    if w.cgroup:
        parts.append(f"cgroup {w.cgroup}")
    if w.container:
        parts.append(f"container {w.container}")
    if w.pod:
        parts.append(f"pod {w.pod_namespace or '?'}/{w.pod}")
    if w.iface:
        parts.append(f"iface {w.iface}")
    if w.cpu is not None:
        parts.append(f"CPU {w.cpu}")
    if w.netns_label or w.netns:
        parts.append(f"netns {w.netns_label or '?'} ({w.netns})" if w.netns else f"netns {w.netns_label}")
    return ", ".join(parts) or "this host"


def printable(text: str) -> str:
    """Process names, cgroup paths and interface names come from other processes and the kernel: a control
    character in one must not reach the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)


def finding_lines(f: Finding, width: int = 80) -> list[str]:
    out = textwrap.wrap(f"{f.severity.upper():<5} {f.id}: {f.title}", width=width, subsequent_indent="      ")
    out += _wrap("where", where_text(f.where), width)
    for i, e in enumerate(f.evidence):
        text = f"{_value(e)} {e.name}" + (f" (= {e.counter})" if e.counter else "")
        out += _wrap("evidence" if i == 0 else "", text, width)
    out += _wrap("why", f.why, width)
    if f.explains:
        out += _wrap("explains", ", ".join(f.explains), width)
    for i, k in enumerate(f.knobs):
        value = k.value if k.value is not None else "unreadable"
        out += _wrap("knob" if i == 0 else "", f"{k.name} = {value}: {k.advice}", width)
    return out


def report_lines(diag: Diagnosis, counts: dict[str, int], width: int = 80) -> list[str]:
    seconds = diag.elapsed_ns / 1e9
    if not diag.findings:
        lines = [f"netpath doctor: no problems found in {seconds:.1f} s ({diag.drops_seen:,} drops seen)."]
    else:
        tally = ", ".join(f"{counts[s]} {s}" for s in ("crit", "warn", "info"))
        lines = [f"netpath doctor: {len(diag.findings)} finding{'s' if len(diag.findings) != 1 else ''} "
                 f"in {seconds:.1f} s ({tally}), worst first"]
    for f in diag.findings:
        lines += ["", *map(printable, finding_lines(f, width))]
    lines += ["", *textwrap.wrap("checked: " + ", ".join(diag.checked), width=width, subsequent_indent="  ")]
    for u in diag.unavailable:
        lines += textwrap.wrap(f"not checked: {u.stage or u.hook}: {u.reason}", width=width,
                               subsequent_indent="  ")
    return lines


def progress_line(elapsed_ns: int, duration_ns: int) -> str:
    return f"netpath doctor: watching the receive path, {elapsed_ns / 1e9:.0f}/{duration_ns / 1e9:.0f} s"
