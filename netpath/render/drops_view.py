"""Human views of drop snapshots: a rich table for terminals, plain text for pipes."""

from __future__ import annotations

import textwrap

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from netpath.model import Counter, DropRow, DropSample, DropSnapshot, Owner, Verdict
from netpath.render.fit import Column, fitted_table


def _flow(row: DropRow) -> str:
    if not row.saddr:
        return ""
    if row.sport is not None:
        return f"{row.saddr}:{row.sport} > {row.daddr}:{row.dport}"
    return f"{row.saddr} > {row.daddr}"


def owner_text(o: Owner | None) -> str:
    """python3[4242] udp 10.0.0.2:5353 /x.service (systemd:x.service), or why not."""
    if o is None:
        return ""
    bits = []
    if o.pid is not None:
        bits.append(f"{o.comm or '?'}[{o.pid}]")
    if o.sock is not None:
        host = f"[{o.sock.laddr}]" if o.sock.family == 6 else o.sock.laddr
        bits.append(f"{o.sock.proto} {host}:{o.sock.lport}")
    if o.cgroup is not None:
        bits.append(o.cgroup + (f" ({o.container})" if o.container else ""))
    if o.pod is not None:
        bits.append(f"pod {o.pod_namespace or '?'}/{o.pod}")
    return " ".join(bits) or "no socket"


def _iface(row: DropRow) -> str:
    """veth0@web: the interface and, outside the host namespace, the namespace's name for people."""
    name = row.iface or (str(row.ifindex) if row.ifindex else "-")
    return f"{name}@{row.netns_label}" if row.netns_label and row.netns_label != "host" else name


def _where(row: DropRow) -> str:
    return row.location or "-"


def _rate(count: int, elapsed_ns: int) -> str:
    if elapsed_ns <= 0:
        return "-"
    rate = count * 1e9 / elapsed_ns
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}"


# TOTAL and REASON stay at any width; the rest go, least useful first, as the terminal narrows
# (a squeezed cell ends in an ellipsis; LOCATION is func+0xoff whole or not shown: a cut offset misleads)
DROP_COLUMNS = [
    Column("#", 1, "right"),
    Column("REASON", 0, squeeze=True, least=10),
    Column("LOCATION", 3),
    Column("IFACE", 5, squeeze=True),
    Column("PROTO", 2, max_width=6),
    Column("/s", 4, "right"),
    Column("TOTAL", 0, "right"),
]


def drops_table(snap: DropSnapshot, title: str, width: int = 80) -> RenderableType:
    """Rows carry run totals; the /s column is this interval's rate.

    Flows and stacks are too wide for a cell: they follow the table, keyed by row number.
    """
    details: list[str] = []
    cells: list[list[str | Text]] = []
    for n, row in enumerate(snap.rows, 1):
        cells.append([
            str(n),
            row.reason or "-",
            _where(row),
            _iface(row),
            row.proto or "-",
            _rate(row.interval_count or 0, snap.interval_ns),
            f"{row.count:,}",
        ])
        flow = _flow(row)
        if flow:
            details.append(f"#{n} {flow}")
        if snap.owner_keyed:
            details.append(f"#{n} owner: {owner_text(row.owner)}")
        if row.stack:
            details.append(f"#{n} stack:")
            details.extend(f"      {frame}" for frame in stack_frames(row.stack, 12))
    if snap.other_rows:
        cells.append(["", f"({snap.other_rows} more rows)", "", "", "", "", f"{snap.other_count:,}"])
    table = fitted_table(title, DROP_COLUMNS, cells, width)
    parts: list[RenderableType] = [table]
    if details:
        parts.append(Text("\n".join(details), style="dim", overflow="ellipsis", no_wrap=True))
    if snap.counters or snap.netns_counters:
        parts.append(counters_table(snap.counters + snap.netns_counters))
    parts.append(Text("\n".join(health_lines(snap, max(width, 40))), style="dim"))
    parts.extend(Text(f"warning: {w}", style="bold") for w in snap.warnings)
    for said in (no_device_line(snap), counter_only_line(snap)):
        if said:
            parts.append(Text(textwrap.fill(said, max(width, 40)), style="bold"))
    return Group(*parts)


def health_lines(snap: DropSnapshot, width: int = 80) -> list[str]:
    """netpath's own health in the JSON's words (probe_hits, matched, ...), wrapped between fields."""
    h = snap.health
    fields = [f"probe_hits={h.probe_hits.get('skb:kfree_skb', 0)}", f"matched={h.matched}",
              f"lost_rows={h.lost_rows}", f"samples={h.samples}", f"lost_samples={h.lost_samples}"]
    if h.pcap is not None:
        fields += [f"pcap_written={h.pcap.written}", f"pcap_skipped={h.pcap.skipped}", f"pcap_lost={h.pcap.lost}",
                   f"pcap_unwritten={h.pcap.unwritten}"]
        if h.pcap.error:
            fields.append(f"pcap_error={h.pcap.error!r}")
    return wrap_fields("health: " + " ".join(fields), width, "  ", "    ")


def wrap_fields(text: str, width: int = 80, indent: str = "", more: str = "    ") -> list[str]:
    """Lines of at most `width`, broken between words only: a field is never cut, however long."""
    return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=more, break_long_words=False,
                         break_on_hyphens=False) or [indent.rstrip()]


def stack_frames(stack: list[str], most: int) -> list[str]:
    """The first `most` frames, and a line saying how many more there are (--json has them all)."""
    if len(stack) <= most:
        return list(stack)
    return [*stack[:most], f"... {len(stack) - most} more frames (--json has all)"]


def counters_table(counters: list[Counter]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=Text("drop counters (no skb event)"), title_justify="left",
                  pad_edge=False)
    table.add_column("SOURCE", no_wrap=True)
    table.add_column("COUNTER", overflow="ellipsis", no_wrap=True, max_width=30)
    table.add_column("WHERE", no_wrap=True, max_width=12, overflow="ellipsis")
    table.add_column("DELTA", justify="right", no_wrap=True)
    for c in counters:
        where = _counter_where(c) or "-"
        # Text, not markup: an interface's name is anyone's choice
        table.add_row(Text(c.source), Text(c.name), Text(where), Text(f"{c.count:,}"))
    return table


def _counter_where(c: Counter) -> str:
    """eth0, cpu1, or another namespace's name (and its pod)."""
    if c.netns is not None:
        return f"{c.netns_label or c.netns}" + (f" ({c.pod_namespace or '?'}/{c.pod})" if c.pod else "")
    return c.iface if c.iface is not None else (f"cpu{c.cpu}" if c.cpu is not None else "")


def no_device_line(snap: DropSnapshot) -> str | None:
    """Drops whose namespace the kernel no longer names: said, never silently left out of a filter."""
    n = snap.health.no_device
    if not n:
        return None
    if snap.where_filtered:
        return (f"{n:,} drops had no device or namespace the kernel could name (health no_device): --netns and "
                "--iface cannot match them, so they are not in these rows or the total")
    return f"{n:,} drops had no device or namespace the kernel could name (health no_device): iface and netns '-'"


def counter_only_line(snap: DropSnapshot) -> str | None:
    """Said plainly: the counters rose while no drop event matched, so rows and total show none of it."""
    if not snap.counter_only:
        return None
    rose = ", ".join(f"{c.name}{f' {c.iface}' if c.iface else ''} +{c.count:,}" for c in snap.counter_only[:6])
    more = f" and {len(snap.counter_only) - 6} more" if len(snap.counter_only) > 6 else ""
    return (f"no drop event, but kernel drop counters rose: {rose}{more}. These packets were refused without "
            "a drop event (e.g. a SYN at a full accept queue) or fell outside the filters; total and "
            "--fail-on-drops count drop events only")


def plain_lines(snap: DropSnapshot, title: str, width: int = 80) -> list[str]:
    """Rows as aligned text; a column is as wide as its longest cell, so nothing is cut (piped output
    takes the width it needs); the lines that are prose wrap at `width` between words."""
    lines = [title]
    if not snap.rows:
        lines.append("  no drops")
    reason_w = max((len(r.reason or "-") for r in snap.rows), default=0)
    where_w = max((len(r.location) for r in snap.rows if r.location is not None), default=0)
    iface_w = max((len(_iface(r)) for r in snap.rows), default=0)
    for row in snap.rows:
        place = f"{row.location:<{where_w}} " if row.location is not None else ""
        lines.append(f"  {row.count:>10,}  {(row.reason or '-'):<{reason_w}} {place}{_iface(row):<{iface_w}} "
                     f"{row.proto or '-'}".rstrip())
        flow = _flow(row)
        if flow:
            lines.append(f"              {flow}")
        if snap.owner_keyed:
            lines.extend(wrap_fields(f"owner: {owner_text(row.owner)}", width, " " * 14, " " * 16))
        for frame in stack_frames(row.stack or [], 8):
            lines.append(f"              {frame}")
    if snap.other_rows:
        lines.append(f"  {snap.other_count:>10,}  ({snap.other_rows} more rows)")
    for c in snap.counters + snap.netns_counters:
        where = _counter_where(c)
        lines.append(f"  {c.count:>10,}  counter {c.source}:{c.name} {where}".rstrip())
    lines.extend(health_lines(snap, width))
    lines.extend(f"  warning: {w}" for w in snap.warnings)
    for said in (no_device_line(snap), counter_only_line(snap)):
        if said:
            lines.extend(textwrap.wrap(said, width - 2, initial_indent="  ", subsequent_indent="    "))
    return lines


def sample_lines(sample: DropSample, width: int = 80) -> list[str]:
    """One sampled drop: who, why and where on the first line, the flow and length below, never cut."""
    row = sample.row
    return wrap_fields(f"sample cpu{sample.cpu} {sample.comm}[{sample.pid}] {row.reason or '-'} "
                       f"{row.location or '-'} {_iface(row)} {row.proto or '-'} {_flow(row)} len={sample.len}",
                       width)


def verdict_lines(verdicts: list[Verdict]) -> list[str]:
    return [f"threshold crossed: {v.value or 0:,} drops >= --fail-on-drops {v.spec['fail_on_drops']:,}"
            for v in verdicts if v.crossed]
