"""The receive-path part of `netpath probes`: BPF programs on each interface's receive path
(XDP, tc ingress) and the NIC counter sources this kernel offers, in the current namespace."""

from __future__ import annotations

import textwrap

from netpath.collect import nic_counters
from netpath.kernel import rx_programs


def report() -> dict[str, object]:
    try:
        progs: list[dict[str, object]] = [p.as_json() for p in rx_programs.read_rx_programs()]
        progs_error = None
    except OSError as exc:  # rtnetlink refused: say so rather than list nothing
        progs, progs_error = [], f"rtnetlink: {exc}"
    sources = [{"source": s, "available": a, "reason": r} for s, a, r in nic_counters.iter_sources()]
    out: dict[str, object] = {"rx_programs": progs, "counter_sources": sources}
    if progs_error:
        out["rx_programs_error"] = progs_error
    return out


def lines(rep: dict[str, object]) -> list[str]:
    out = ["receive-path BPF programs (XDP, tc ingress):"]
    progs = rep["rx_programs"]
    assert isinstance(progs, list)
    for p in progs:
        extra = f" pref {p['pref']}{' direct-action' if p['direct_action'] else ''}" if p["hook"] == "tc" else ""
        out.append(f"  {p['iface']:<16} {p['hook']:<4} {p['mode']:<15} id {p['prog_id']:<6} "
                   f"{p['name'] or '?'}{extra}")
    if not progs:
        out.append(f"  none{' (' + str(rep['rx_programs_error']) + ')' if rep.get('rx_programs_error') else ''}")
    out.append("NIC counter sources (netpath drops):")
    sources = rep["counter_sources"]
    assert isinstance(sources, list)
    for s in sources:  # the reason wraps between words under itself: 80 columns, nothing cut
        out.extend(textwrap.wrap(f"  {s['source']:<8} {'yes' if s['available'] else 'no ':<4} {s['reason']}", 80,
                                 subsequent_indent=" " * 16, break_long_words=False, break_on_hyphens=False))
    return out
