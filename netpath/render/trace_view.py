"""`netpath trace` for people: one row per stage in path order, within 80 columns."""

from __future__ import annotations

import textwrap

from rich.console import Group, RenderableType
from rich.text import Text

from netpath.model import Latency, Owner, SlowPacket, StageRow, Start, TraceSnapshot, Unavailable, Verdict, Where
from netpath.render.fit import Column, fitted_table

SPARK = "▁▂▃▄▅▆▇█"
ASCII_SPARK = ".:-=+*#@"
BAR_WIDTH = 10


def fmt_ns(ns: int) -> str:
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f}us" if ns < 100_000 else f"{ns / 1e3:.0f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms" if ns < 100_000_000 else f"{ns / 1e6:.0f}ms"
    return f"{ns / 1e9:.2f}s"


def spark(lat: Latency, ascii_only: bool = False, width: int = BAR_WIDTH) -> str:
    """A small bar: one character per log2 bucket from the lowest to the highest seen."""
    buckets = lat.buckets
    if not buckets:
        return ""
    chars = ASCII_SPARK if ascii_only else SPARK
    first = buckets[0].lo_ns.bit_length() - 1 if buckets[0].lo_ns else 0
    counts = {(b.lo_ns.bit_length() - 1 if b.lo_ns else 0): b.count for b in buckets}
    last = max(counts)
    span = list(range(first, last + 1))
    if len(span) > width:  # fold neighbours so the bar keeps its width
        step = -(-len(span) // width)
        groups = [span[i:i + step] for i in range(0, len(span), step)]
    else:
        groups = [[i] for i in span]
    values = [sum(counts.get(i, 0) for i in g) for g in groups]
    top = max(values) or 1
    return "".join(" " if v == 0 else chars[min(len(chars) - 1, v * len(chars) // (top + 1))] for v in values)


def _label(row: StageRow) -> str:
    """The attach method as the JSON's `method` says it (tp_btf, raw_tracepoint, ...): one name everywhere."""
    return row.method or "-"


def via_lines(snap: TraceSnapshot, width: int = 80) -> list[str]:
    """How each stage is hooked, grouped by method: `via tp_btf: netif_receive_skb, stack_total; ...`."""
    by: dict[str, list[str]] = {}
    for row in snap.stages:
        by.setdefault(_label(row), []).append(row.stage)
    if not by:
        return []
    text = "via " + "; ".join(f"{method}: {', '.join(stages)}" for method, stages in by.items())
    return textwrap.wrap(text, width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)


def start_note(start: Start) -> str:
    """What was attached, by method, in the start line's words."""
    by: dict[str, int] = {}
    for a in start.attached:
        by[a.method] = by.get(a.method, 0) + 1
    n = len(start.attached)
    how = ", ".join(f"{m} {k}" for m, k in by.items())
    gone = len({u.stage or u.hook for u in start.unavailable})
    return (f"netpath trace: {n} {'hook' if n == 1 else 'hooks'} attached ({how}), {gone} "
            f"{'stage' if gone == 1 else 'stages'} unavailable; Ctrl-C for the summary")


def _part_label(where: Where, per_iface: bool, per_cpu: bool) -> str:
    bits = []
    if per_iface:
        bits.append((where.iface or f"if{where.ifindex}") if where.ifindex else "-")
    if per_cpu:
        bits.append(f"cpu{where.cpu}")
    return "  " + "/".join(bits)


def _owner_label(who: Owner) -> str:
    """A reader as the table shows it: comm[pid], its container or cgroup below in JSON."""
    return f"  {who.comm or '?'}[{who.pid}]" if who.pid else "  ?"


def _cells(lat: Latency, ascii_only: bool, count: int | None = None) -> list[str]:
    """count: the stage's exact count when its timing is sampled (lat then holds the timed ones)."""
    shown = lat.count if count is None else count
    if lat.count == 0:
        return [f"{shown:,}", "-", "-", "-", "-", ""]
    return [f"{shown:,}", fmt_ns(lat.p50_ns), fmt_ns(lat.p90_ns), fmt_ns(lat.p99_ns), fmt_ns(lat.max_ns),
            spark(lat, ascii_only)]


def napi_line(snap: TraceSnapshot) -> str | None:
    row = next((r for r in snap.stages if r.napi is not None), None)
    squeeze = snap.softnet.get("time_squeeze")
    parts = []
    if row is not None and row.napi is not None:
        n = row.napi
        per = n.work / n.polls if n.polls else 0.0
        share = 100.0 * n.exhausted / n.polls if n.polls else 0.0
        parts.append(f"napi: {n.polls:,} polls, {per:.1f} pkts/poll (max {n.max_work}), budget "
                     f"{n.budget or '-'}, budget used up {n.exhausted:,}x ({share:.1f}%)")
    if squeeze is not None:
        parts.append(f"softnet: time_squeeze {squeeze:,}, dropped {snap.softnet.get('dropped', 0):,}")
    return "\n".join(textwrap.fill(p, 80, subsequent_indent="  ") for p in parts) if parts else None


def sample_line(snap: TraceSnapshot) -> str | None:
    """Sampled timing, said every time: percentiles come from 1 in N, COUNT is every one."""
    rows = [r for r in snap.stages if r.sample_every > 1]
    if not rows:
        return None
    timed = sum(r.latency.count for r in rows)
    seen = sum(r.count for r in rows)
    return textwrap.fill(f"timed 1 in {rows[0].sample_every}: {timed:,} of {seen:,} stage samples; COUNT is "
                         "exact; --sample 1 times every one", 80, subsequent_indent="  ")


def not_selected_line(snap: TraceSnapshot) -> str | None:
    if not snap.not_selected:
        return None
    return textwrap.fill(f"off: {', '.join(snap.not_selected)} (--stages all or by name)", 80,
                         subsequent_indent="  ")


def unavailable_lines(unavailable: tuple[Unavailable, ...]) -> list[str]:
    by_reason: dict[str, list[str]] = {}
    for item in unavailable:
        reason = item.reason.split(": ", 1)[-1]
        by_reason.setdefault(reason, []).append(item.stage or item.hook)
    out: list[str] = []
    for reason, stages in by_reason.items():
        out.extend(textwrap.wrap(f"not attached: {', '.join(stages)} ({reason})", 80, subsequent_indent="  "))
    return out


# STAGE and COUNT stay at any width (how each stage is hooked is the `via` line below the table, in the
# JSON's words: a column of tp_btf+raw_tracepoint would not fit 80 columns); the rest go, least useful
# first, as the terminal narrows
TRACE_COLUMNS = [
    Column("STAGE", 0, max_width=18, squeeze=True, least=12),
    Column("COUNT", 0, "right"),
    Column("P50", 6, "right"),
    Column("P90", 3, "right"),
    Column("P99", 5, "right"),
    Column("MAX", 4, "right"),
    Column("HIST", 2),
]


def trace_table(snap: TraceSnapshot, title: str, hist_stage: str | None, width: int = 80) -> RenderableType:
    cells: list[list[str | Text]] = []
    for row in snap.stages:
        cells.append([row.stage, *_cells(row.latency, False, row.count)])
        for where, lat in row.parts:
            cells.append([_part_label(where, snap.per_iface, snap.per_cpu), *_cells(lat, False)])
        for who, lat in row.owners:
            cells.append([_owner_label(who), *_cells(lat, False)])
    for item in snap.unavailable:
        cells.append([Text(item.stage or item.hook, style="dim"), "-", "", "", "", "", ""])
    table = fitted_table(title, TRACE_COLUMNS, cells, width)
    extra: list[RenderableType] = [table]
    extra.extend(Text(t, style="dim") for t in via_lines(snap, max(width, 40)))
    sampled = sample_line(snap)
    if sampled:
        extra.append(Text(sampled, style="dim"))
    line = napi_line(snap)
    if line:
        extra.append(Text(line))
    for text in unavailable_lines(snap.unavailable):
        extra.append(Text(text, style="dim"))
    off = not_selected_line(snap)
    if off:
        extra.append(Text(off, style="dim"))
    extra.extend(Text(t) for t in health_lines(snap))
    if hist_stage:
        extra.append(Text("\n".join(hist_lines(snap, hist_stage))))
    return Group(*extra)


def health_lines(snap: TraceSnapshot) -> list[str]:
    h = snap.health
    lines = []
    if h.lost_samples + h.lost_skbs + h.lost_events:
        lines.append(f"netpath lost: {h.lost_samples} samples (histogram map full), "
                     f"{h.lost_skbs} skbs (tracking map full), {h.lost_events} slow events")
    if h.unstamped:
        lines.append(f"not timed: {h.unstamped} packets at netif_receive_skb with no kernel receive timestamp")
    if h.missed_enqueue + h.ring_overrun + h.unseen_enqueue + h.unseen_read:
        text = (f"not timed: {h.missed_enqueue} datagrams read before their wakeup, {h.ring_overrun} past a "
                f"socket's {h.ring_slots}-slot ring, {h.unseen_enqueue} enqueued unfollowed, {h.unseen_read} "
                "read with no enqueue seen")
        lines.extend(textwrap.wrap(text, 80, subsequent_indent="  "))
    return lines


def plain_lines(snap: TraceSnapshot, title: str, hist_stage: str | None) -> list[str]:
    """The stage table as text: STAGE and VIA as wide as their longest cell (nothing is cut; piped output
    takes the width it needs), the prose below wrapped at 80 between words."""
    labels = [row.stage for row in snap.stages]
    labels += [_part_label(w, snap.per_iface, snap.per_cpu) for row in snap.stages for w, _ in row.parts]
    labels += [_owner_label(who) for row in snap.stages for who, _ in row.owners]
    lw = max([len("STAGE"), *map(len, labels)]) + 1
    lines = [title, f"{'STAGE':<{lw}}{'COUNT':>9}{'P50':>8}{'P90':>8}{'P99':>8}{'MAX':>8}  HIST"]

    def add(label: str, lat: Latency, count: int | None = None) -> None:
        c = _cells(lat, True, count)
        lines.append(f"{label:<{lw}}{c[0]:>9}{c[1]:>8}{c[2]:>8}{c[3]:>8}{c[4]:>8}  {c[5]}".rstrip())

    for row in snap.stages:
        add(row.stage, row.latency, row.count)
        for where, lat in row.parts:
            add(_part_label(where, snap.per_iface, snap.per_cpu), lat)
        for who, lat in row.owners:
            add(_owner_label(who), lat)
    lines.extend(via_lines(snap))
    sampled = sample_line(snap)
    if sampled:
        lines.append(sampled)
    line = napi_line(snap)
    if line:
        lines.extend(line.splitlines())
    lines.extend(unavailable_lines(snap.unavailable))
    off = not_selected_line(snap)
    if off:
        lines.extend(off.splitlines())
    lines.extend(health_lines(snap))
    if hist_stage:
        lines.extend(hist_lines(snap, hist_stage))
    return lines


def hist_lines(snap: TraceSnapshot, stage_id: str, width: int = 40) -> list[str]:
    """The full log2 histogram of one stage, bcc style."""
    row = snap.stage(stage_id)
    if row is None:
        return [f"{stage_id}: not attached"]
    buckets = row.latency.buckets
    if not buckets:
        return [f"{stage_id}: no samples"]
    top = max(b.count for b in buckets)
    out = [f"{stage_id} ({row.latency.count:,} samples)", f"{'range':>21} : {'count':<9} distribution"]
    for b in buckets:
        bar = "*" * max(1, b.count * width // top) if b.count else ""
        rng = f"{fmt_ns(b.lo_ns)} -> {fmt_ns(b.hi_ns)}"
        out.append(f"{rng:>21} : {b.count:<9} |{bar:<{width}}|")
    return out


def slow_line(pkt: SlowPacket) -> str:
    """One slow packet, compact: where, which flow, who read it, the per-stage breakdown."""
    iface = pkt.iface or f"if{pkt.ifindex}"
    flow = f"{pkt.proto} {pkt.saddr}:{pkt.sport}>{pkt.daddr}:{pkt.dport}" if pkt.family else "non-IP"
    stages = " ".join(f"{pkt.short_names.get(k, k)}={fmt_ns(v)}" for k, v in pkt.stages_ns.items())
    return f"slow cpu{pkt.cpu} {iface} {flow} {pkt.comm}[{pkt.pid}] {stages}"


def slow_lines(pkt: SlowPacket, width: int = 80) -> list[str]:
    """slow_line within `width`, broken between fields (never inside one): the breakdown continues below."""
    return textwrap.wrap(slow_line(pkt), width, subsequent_indent="    ", break_long_words=False,
                         break_on_hyphens=False)


def verdict_lines(verdicts: list[Verdict]) -> list[str]:
    return [f"threshold crossed: --fail-on-latency {v.spec['spec']} (measured {fmt_ns(v.value or 0)})"
            for v in verdicts if v.crossed]
