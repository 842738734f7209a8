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
    return " ".join(bits) or "no socket"


def _iface(row: DropRow) -> str:
    """veth0@web: the interface and, outside the host namespace, the namespace's name for people."""
    name = row.iface or (str(row.ifindex) if row.ifindex else "-")
    return f"{name}@{row.netns_label}" if row.netns_label and row.netns_label != "host" else name


def _place(row: DropRow) -> str:
    """Location and interface in 36 columns; the interface gets them all when rows do not group by location."""
    if row.location is None:
        return f"{_iface(row):<36.36}"
    return f"{row.location:<26.26} {_iface(row):<9.9}"


def _where(row: DropRow) -> str:
    return row.location or "-"


def _rate(count: int, elapsed_ns: int) -> str:
    if elapsed_ns <= 0:
        return "-"
    rate = count * 1e9 / elapsed_ns
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.1f}"


# TOTAL and REASON stay at any width; the rest go, least useful first, as the terminal narrows
DROP_COLUMNS = [
    Column("#", 1, "right"),
    Column("REASON", 0, max_width=22, squeeze=True, least=10),
    Column("LOCATION", 3, max_width=26, squeeze=True),
    Column("IFACE", 5, max_width=16, squeeze=True),
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
            details.extend(f"      {frame}" for frame in row.stack[:12])
    if snap.other_rows:
        cells.append(["", f"({snap.other_rows} more rows)", "", "", "", "", f"{snap.other_count:,}"])
    table = fitted_table(title, DROP_COLUMNS, cells, width)
    parts: list[RenderableType] = [table]
    if details:
        parts.append(Text("\n".join(details), style="dim", overflow="ellipsis", no_wrap=True))
    if snap.counters:
        parts.append(counters_table(snap.counters))
    h = snap.health
    parts.append(
        Text(
            f"kfree_skb hits {h.probe_hits.get('skb:kfree_skb', 0):,}, matched {h.matched:,}, "
            f"lost rows {h.lost_rows}, samples {h.samples} (lost {h.lost_samples})" + pcap_text(snap),
            style="dim",
        )
    )
    parts.extend(Text(f"warning: {w}", style="bold") for w in snap.warnings)
    for said in (no_device_line(snap), counter_only_line(snap)):
        if said:
            parts.append(Text(textwrap.fill(said, max(width, 40)), style="bold"))
    return Group(*parts)


def pcap_text(snap: DropSnapshot) -> str:
    p = snap.health.pcap
    if p is None:
        return ""
    text = f", pcap written {p.written:,} (skipped {p.skipped:,}: cap or rate limit; lost {p.lost:,})"
    if p.error:
        text += f"; capture stopped: {p.error}, {p.unwritten:,} not written"
    return text


def counters_table(counters: list[Counter]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title=Text("drop counters (no skb event)"), title_justify="left",
                  pad_edge=False)
    table.add_column("SOURCE", no_wrap=True)
    table.add_column("COUNTER", overflow="ellipsis", no_wrap=True, max_width=30)
    table.add_column("WHERE", no_wrap=True, max_width=12, overflow="ellipsis")
    table.add_column("DELTA", justify="right", no_wrap=True)
    for c in counters:
        where = c.iface if c.iface is not None else (f"cpu{c.cpu}" if c.cpu is not None else "-")
        # Text, not markup: an interface's name is anyone's choice
        table.add_row(Text(c.source), Text(c.name), Text(where), Text(f"{c.count:,}"))
    return table


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


def plain_lines(snap: DropSnapshot, title: str) -> list[str]:
    lines = [title]
    if not snap.rows:
        lines.append("  no drops")
    for row in snap.rows:
        lines.append(
            f"  {row.count:>10,}  {(row.reason or '-'):<22.22} {_place(row)} {row.proto or '-'}".rstrip()
        )
        flow = _flow(row)
        if flow:
            lines.append(f"              {flow}")
        if snap.owner_keyed:
            lines.append(f"              owner: {owner_text(row.owner)}")
        for frame in (row.stack or [])[:8]:
            lines.append(f"              {frame}")
    if snap.other_rows:
        lines.append(f"  {snap.other_count:>10,}  ({snap.other_rows} more rows)")
    for c in snap.counters:
        where = c.iface if c.iface is not None else (f"cpu{c.cpu}" if c.cpu is not None else "")
        lines.append(f"  {c.count:>10,}  counter {c.source}:{c.name} {where}".rstrip())
    h = snap.health
    lines.append(f"  health: hits={h.probe_hits.get('skb:kfree_skb', 0)} matched={h.matched} "
                 f"lost_rows={h.lost_rows} samples={h.samples} lost_samples={h.lost_samples}"
                 + (f" pcap_written={h.pcap.written} pcap_skipped={h.pcap.skipped} pcap_lost={h.pcap.lost}"
                    f" pcap_unwritten={h.pcap.unwritten}" if h.pcap is not None else "")
                 + (f" pcap_error={h.pcap.error!r}" if h.pcap is not None and h.pcap.error else ""))
    lines.extend(f"  warning: {w}" for w in snap.warnings)
    for said in (no_device_line(snap), counter_only_line(snap)):
        if said:
            lines.extend(textwrap.wrap(said, 78, initial_indent="  ", subsequent_indent="    "))
    return lines


def sample_line(sample: DropSample) -> str:
    row = sample.row
    return (f"sample cpu{sample.cpu} {sample.comm}[{sample.pid}] {row.reason or '-'} {row.location or '-'} "
            f"{row.iface or '-'} {row.proto or '-'} {_flow(row)} len={sample.len}").rstrip()


def verdict_lines(verdicts: list[Verdict]) -> list[str]:
    return [f"threshold crossed: {v.value or 0:,} drops >= --fail-on-drops {v.spec['fail_on_drops']:,}"
            for v in verdicts if v.crossed]
