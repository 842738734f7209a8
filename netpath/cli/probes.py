"""`netpath probes`: what this kernel offers, and how each hook would attach."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import click

from netpath import bpf
from netpath import plan as plan_mod
from netpath.cli import rx_path
from netpath.cli.console import Terminal
from netpath.cli.preflight import kernel_root, load_facts
from netpath.collect import drops as drops_mod
from netpath.kernel import caps
from netpath.kernel.facts import KernelFacts
from netpath.model import ProbeRow
from netpath.render import records
from netpath.stages import TP_BTF_HOOKS

HELP = """Show what this kernel offers netpath and how each hook attaches.

\b
Kernel release, BTF, kernel headers (or netpath's own header shim), kprobe
support, and for every stage and hook netpath knows: the attach method chosen
(tp_btf, raw_tracepoint, kprobe: the names trace and drops report) or why it
cannot attach here. Attaches nothing. The hooks come from tracefs, which is
root's on most systems: as another user it shows the rest (release, BTF,
kprobes, programs, --reasons) and says to run it with sudo for the hooks.

\b
Examples:
  sudo netpath probes
  sudo netpath probes --json | jq '.hooks[] | select(.available == false)'
  sudo netpath probes --reasons   drop reason names decoded from this kernel
"""


def tp_btf_check(facts: KernelFacts) -> tuple[bool | None, str]:
    """Whether this kernel loads netpath's tp_btf programs: tried (a 2-instruction program, loaded and closed,
    never attached) only on the running kernel with CAP_BPF; None when it could not be tried."""
    if facts.root != Path("/") or not facts.has_btf:
        return None, "not checked (not the running kernel, or no BTF)"
    if caps.missing_capability() is not None:
        return None, "not checked: loading a test program needs root (CAP_BPF); drops falls back by itself"
    return bpf.tp_btf_allowed(facts.btf_path)


def hook_rows(facts: KernelFacts, tp_btf: tuple[bool | None, str] = (None, "")) -> list[ProbeRow]:
    has_tp = facts.has_tracepoint(drops_mod.TRACEPOINT)
    reason = ("kfree_skb " + ("with" if drops_mod.has_reason_field(facts) else "without") + " a reason field")
    if tp_btf[0] is not None:
        reason += "; tp_btf: " + ("yes" if tp_btf[0] else "no, raw_tracepoint instead") + f" ({tp_btf[1]})"
    rows = [ProbeRow("drops", drops_mod.TRACEPOINT, ("tp_btf" if tp_btf[0] else "raw_tracepoint") if has_tp else None,
                     has_tp, reason if has_tp else "no skb:kfree_skb tracepoint on this kernel", command="drops")]
    typed = frozenset(TP_BTF_HOOKS) if tp_btf[0] else frozenset()
    rows.extend(plan_mod.probe_rows(facts, typed))
    return rows


def kernel_facts(facts: KernelFacts, tp_btf: tuple[bool | None, str] = (None, "")) -> dict[str, object]:
    plan = plan_mod.make_plan(facts)
    return {
        "release": facts.release,
        "btf": facts.has_btf,
        "headers": facts.has_headers,
        "header_mode": bpf.headers_mode(facts),
        "kprobes": facts.has_kprobes,
        "kprobes_reason": facts.kprobe_reason,
        "tracefs": str(facts.tracefs) if facts.tracefs else None,
        "tracepoints": len(facts.tracepoints),
        "tp_btf": tp_btf[0],
        "tp_btf_reason": tp_btf[1],
        "trace_handoff": plan.handoff,
        "trace_handoff_reason": plan.handoff_reason,
    }


def _wrap(text: str, width: int) -> list[str]:
    """Between words only: hook, symbol and option names stay whole."""
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


def unprivileged_kernel_facts(facts: KernelFacts, denied: Path) -> dict[str, object]:
    """What a user who may not read tracefs can still be told: everything but the tracepoints."""
    why = f"not checked: {denied} is not readable by uid {os.geteuid()} (tracefs is root's)"
    return {
        "release": facts.release, "btf": facts.has_btf, "headers": facts.has_headers,
        "header_mode": bpf.headers_mode(facts), "kprobes": facts.has_kprobes, "kprobes_reason": facts.kprobe_reason,
        "tracefs": str(denied), "tracepoints": None, "tp_btf": None, "tp_btf_reason": why,
        "trace_handoff": None, "trace_handoff_reason": why,
    }


@click.command("probes", help=HELP)
@click.option("--json", "json_mode", is_flag=True, help="One JSON object (schema netpath/1) on stdout.")
@click.option("--reasons", "show_reasons", is_flag=True, help="List the drop reasons this kernel defines.")
def probes(json_mode: bool, show_reasons: bool) -> None:
    facts = KernelFacts.load(kernel_root())
    # tracefs is root's (0700) on most systems: without it there is no attach plan, but the kernel's release,
    # BTF, headers, kprobes, drop reasons and receive-path programs are still readable, and shown
    denied = facts.unreadable_tracefs()
    if denied is None:
        load_facts(facts)
    term = Terminal(json_mode)
    if denied is None:
        tp_btf = tp_btf_check(facts)
        kernel = kernel_facts(facts, tp_btf)
        hooks = hook_rows(facts, tp_btf)
        not_listed = None
    else:
        kernel, hooks = unprivileged_kernel_facts(facts, denied), []
        not_listed = (f"{denied} is not readable by uid {os.geteuid()} (tracefs is root's): run "
                      "'sudo netpath probes' for how each hook attaches")
    reasons = drops_mod.drop_reasons(facts) if show_reasons else None
    if json_mode:
        extra: dict[str, object] = {"hooks_reason": not_listed} if not_listed else {}
        if reasons is not None:
            extra["reasons"] = [{"reason": reasons.name(c), "reason_code": c} for c in sorted(reasons.core)]
            extra["reason_source"] = reasons.source
        term.emit(records.record("probes", kernel=kernel, hooks=[records.probe_row(r) for r in hooks],
                                 **rx_path.report(), **extra))
        return
    term.print(
        f"kernel {kernel['release']}  BTF {'yes' if kernel['btf'] else 'no'}  "
        f"headers {'yes' if kernel['headers'] else 'no (using netpath header shim)'}\n"
        f"kprobes: {'yes' if kernel['kprobes'] else 'no'} ({facts.kprobe_reason})  tracefs {kernel['tracefs']}"
    )
    if not_listed:
        for line in _wrap(f"hooks: not listed: {not_listed}", 80):
            term.print(line)
    else:
        for line in textwrap.wrap(f"trace hand-off time: {kernel['trace_handoff_reason']}", width=80,
                                  subsequent_indent="  ", break_long_words=False, break_on_hyphens=False):
            term.print(line)
        _print_hooks(term, hooks)
    for line in rx_path.lines(rx_path.report()):
        term.print(line)
    if reasons is not None:
        term.print(f"drop reasons ({reasons.source}):")
        for code in sorted(reasons.core):
            term.print(f"  {code:>5}  {reasons.name(code)}")


def _print_hooks(term: Terminal, hooks: list[ProbeRow]) -> None:
    mw = max([len("METHOD"), *(len(r.method or "unavailable") for r in hooks)])  # whole method names
    term.print(f"{'STAGE':<18} {'METHOD':<{mw}} HOOK", style="bold")
    hook_at = 18 + 1 + mw + 1
    for row in hooks:
        method = row.method or "unavailable"
        hooks_text = _wrap(row.hook.replace("+", " + "), max(80 - hook_at, 20)) or ["-"]
        term.print(f"{row.stage:<18} {method:<{mw}} {hooks_text[0]}")
        for line in hooks_text[1:]:
            term.print(" " * hook_at + line)
        for line in _wrap(row.reason, 80 - 19):
            term.print(" " * 19 + line, style="dim")
