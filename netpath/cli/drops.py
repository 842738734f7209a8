"""`netpath drops`: every receive-path drop, by the kernel's reason, where, on which interface."""

from __future__ import annotations

import click

from netpath import bpf
from netpath.cli.console import Terminal
from netpath.cli.options import Filters, common_options, resolve_filters
from netpath.cli.preflight import load_facts, require_capability
from netpath.collect import counters as counters_mod
from netpath.collect import drops as drops_mod
from netpath.errors import EXIT_OK, EXIT_THRESHOLD, BadInput, MissingCapability
from netpath.links import IfaceNames
from netpath.model import Counter, DropRow, DropSnapshot
from netpath.render import drops_view
from netpath.runloop import SignalStop, run

HELP = """Show every dropped packet by the kernel's own drop reason.

\b
Hooks the skb:kfree_skb tracepoint and counts drops inside the kernel, so the
counts are exact at any drop rate. Rows group by reason, code location
(func+0xoff), interface (named inside its own network namespace) and protocol;
--by flow adds the 5-tuple. Beside them, a counters table shows drops that no
skb event carries: link stats (rx_missed, rx_fifo, ...), per-CPU softnet
(dropped, time_squeeze), qdisc drops and SNMP (UdpRcvbufErrors, ListenDrops).

\b
Examples:
  sudo netpath drops                           live table, Ctrl-C to stop
  sudo netpath drops --iface eth0 --duration 30 --json
  sudo netpath drops --proto udp --port 53 --by reason,flow
  sudo netpath drops --netns web --iface veth0 --reason NETFILTER_DROP
  sudo netpath drops --duration 60 --fail-on-drops 1000  # exit 1 at >= 1000
"""


def parse_by(value: str) -> tuple[str, ...]:
    fields = tuple(part.strip().lower() for part in value.split(",") if part.strip())
    for name in fields:
        if name not in drops_mod.GROUP_FIELDS:
            raise BadInput(f"bad --by field {name!r}: choose from {', '.join(drops_mod.GROUP_FIELDS)}")
    if not fields:
        raise BadInput("empty --by: choose from " + ", ".join(drops_mod.GROUP_FIELDS))
    return fields


@click.command("drops", help=HELP)
@common_options
@click.option("--reason", "reason_name", metavar="NAME", help="Only this drop reason (e.g. NO_SOCKET).")
@click.option("--by", "by_spec", default=",".join(drops_mod.DEFAULT_BY), show_default=True, metavar="FIELDS",
              help="What rows group by: any of reason,location,iface,proto,flow.")
@click.option("--top", type=click.IntRange(1, drops_mod.MAX_ROWS), metavar="N",  # no more rows than the map holds
              help="Show the N busiest rows per report [default: 10 on a terminal, all in --json].")
@click.option("--stack", is_flag=True, help="Add the kernel stack of the last drop for each shown row.")
@click.option("--samples", type=click.IntRange(0, 10000), default=0, show_default=True, metavar="N",  # samples only
              help="Also stream up to N sampled drops per CPU per interval, with their flow.")
@click.option("--fail-on-drops", type=click.IntRange(1, 2**63 - 1), metavar="N",  # counts are int64 in JSON
              help="Exit 1 when at least N matching drops were seen.")
@click.pass_context
def drops(ctx: click.Context, ifaces: tuple[str, ...], netns_spec: str | None, proto: str | None,
          port: int | None, host: str | None, interval: float, duration: float | None, count: int | None,
          json_mode: bool, ebpf: bool, reason_name: str | None, by_spec: str, top: int | None, stack: bool,
          samples: int, fail_on_drops: int | None) -> None:
    by = parse_by(by_spec)
    filters = resolve_filters(ifaces, netns_spec, proto, port, host)
    if not ebpf:
        require_capability()
    facts = load_facts()
    if not facts.has_tracepoint(drops_mod.TRACEPOINT):
        raise MissingCapability("this kernel has no skb:kfree_skb tracepoint (needs Linux 4.x+ with tracefs mounted)")
    reasons = drops_mod.drop_reasons(facts)
    reason_code = None
    if reason_name is not None:
        reason_code = reasons.code(reason_name)
        if reason_code is None:
            raise BadInput(f"unknown drop reason {reason_name!r} on this kernel (see 'netpath probes --reasons')")
    query = drops_mod.DropsQuery(filters.netns, filters.ifaces, filters.iface_keys, filters.proto, filters.port,
                                 filters.host, reason_code, by, stack, samples)
    source = drops_mod.program_source(query, facts, bpf.struct_offsets(facts))
    if ebpf:
        click.echo(bpf.dump_source(source, facts))
        return
    term = Terminal(json_mode)
    ctx.exit(_run(term, query, filters, facts, reasons, source, interval, duration, count, top, fail_on_drops))


def _run(term: Terminal, query: drops_mod.DropsQuery, filters: Filters, facts: object, reasons: object,
         source: bpf.ProgramSource, interval: float, duration: float | None, count: int | None,
         top: int | None, fail_on: int | None) -> int:
    ifnames = IfaceNames()
    has_reason = drops_mod.has_reason_field(facts)  # type: ignore[arg-type]
    decoder = drops_mod.RowDecoder(query, reasons, facts, ifnames, has_reason)  # type: ignore[arg-type]
    collector = drops_mod.DropsCollector(query, facts, source)  # type: ignore[arg-type]
    limit = top if top is not None else (None if term.json_mode else 10)
    iface_set = set(filters.ifaces) or None
    with SignalStop() as stop:
        try:
            importing = counters_mod.prefetch_netlink()
            collector.start(decoder)
            importing.join()
            deltas = counters_mod.CounterDeltas(counters_mod.read_all(filters.netns, iface_set))
            _emit_start(term, query, facts, collector, has_reason)
            state = {"last": {}, "stats": {}, "seq": 0, "last_ns": 0}

            def on_interval(elapsed_ns: int) -> None:
                now = collector.counts()
                stats = collector.stats()
                interval_counts = {k: v - state["last"].get(k, 0) for k, v in now.items()}
                interval_stats = {k: v - state["stats"].get(k, 0) for k, v in stats.items()}
                state["last"], state["stats"] = now, stats
                counters = deltas.step(counters_mod.read_all(filters.netns, iface_set))
                state["seq"] += 1
                span = elapsed_ns - state["last_ns"]
                state["last_ns"] = elapsed_ns
                lost = collector.samples_lost - state.get("lost", 0)
                state["lost"] = collector.samples_lost
                _flush_samples(term, collector)
                if term.interactive:
                    # the live table ranks rows by run total so quiet intervals don't blank it
                    running, keys = _snapshot_keyed(collector, decoder, now, counters, interval_stats, limit,
                                                    elapsed_ns, collector.samples_lost)
                    rates = {drops_view.row_key(row): interval_counts.get(raw, 0)
                             for row, raw in zip(running.rows, keys, strict=True)}
                    total = sum(v for v in interval_counts.values() if v > 0)
                    term.show(drops_view.drops_table(running, rates, _title(elapsed_ns, total), span))
                else:
                    snap = _snapshot(collector, decoder, interval_counts, counters, interval_stats, limit,
                                     elapsed_ns, lost)
                    if term.json_mode:
                        term.emit("interval", command="drops", seq=state["seq"], elapsed_ns=elapsed_ns,
                                  interval_ns=span, **_snap_json(snap, query))
                    else:
                        term.plain("\n".join(drops_view.plain_lines(snap, _title(elapsed_ns, snap.total))))
                collector.reset_sample_budget()

            stop_reason, elapsed = run(interval, duration, count, on_interval, collector.poll, stop)
            final = collector.counts()
            stats = collector.stats()
            deltas.step(counters_mod.read_all(filters.netns, iface_set))
            summary = _snapshot(collector, decoder, final, deltas.totals(), stats, limit, elapsed,
                                collector.samples_lost)
        finally:
            collector.close()
            term.close_live()
    crossed = fail_on is not None and summary.total >= fail_on
    threshold = {"fail_on_drops": fail_on, "crossed": crossed} if fail_on is not None else None
    if term.json_mode:
        term.emit("summary", command="drops", stop_reason=stop_reason, elapsed_ns=elapsed,
                  **_snap_json(summary, query), threshold=threshold)
    else:
        term.plain("\n".join(drops_view.plain_lines(summary, f"summary ({stop_reason}, {elapsed / 1e9:.1f}s): "
                                                    f"{summary.total:,} drops")))
        if crossed:
            term.plain(f"threshold crossed: {summary.total:,} drops >= --fail-on-drops {fail_on:,}")
    return EXIT_THRESHOLD if crossed else EXIT_OK


def _title(elapsed_ns: int, total: int) -> str:
    return f"netpath drops  t={elapsed_ns / 1e9:.0f}s  {total:,} drops this interval"


def _snapshot(collector: drops_mod.DropsCollector, decoder: drops_mod.RowDecoder, counts: dict[bytes, int],
              counters: list[Counter], stats: dict[str, int], limit: int | None, elapsed_ns: int,
              samples_lost: int) -> DropSnapshot:
    return _snapshot_keyed(collector, decoder, counts, counters, stats, limit, elapsed_ns, samples_lost)[0]


def _snapshot_keyed(collector: drops_mod.DropsCollector, decoder: drops_mod.RowDecoder, counts: dict[bytes, int],
                    counters: list[Counter], stats: dict[str, int], limit: int | None, elapsed_ns: int,
                    samples_lost: int) -> tuple[DropSnapshot, list[bytes]]:
    """The snapshot and, row for row, the raw map keys its rows came from."""
    ranked = sorted(((v, k) for k, v in counts.items() if v > 0), key=lambda item: (-item[0], item[1]))
    shown = ranked if limit is None else ranked[:limit]
    rows: list[DropRow] = []
    for value, raw in shown:
        row = decoder.row(drops_mod.DecodedKey.unpack(raw), value)
        stack = collector.stack_of(raw)
        if stack is not None:
            row = DropRow(**{**row.__dict__, "stack": stack})
        rows.append(row)
    rest = ranked[len(shown):]
    snap = DropSnapshot(rows, counters, drops_mod.health(stats, samples_lost), sum(v for v, _ in ranked),
                        elapsed_ns, len(rest), sum(v for v, _ in rest))
    return snap, [raw for _, raw in shown]


def _snap_json(snap: DropSnapshot, query: drops_mod.DropsQuery) -> dict[str, object]:
    out: dict[str, object] = {
        "rows": [r.as_json(query.flow_keyed) for r in snap.rows],
        "counters": [c.as_json() for c in snap.counters],
        "total": snap.total,
        "health": snap.health.as_json(),
    }
    if snap.other_rows:
        out["other_rows"] = snap.other_rows
        out["other_count"] = snap.other_count
    return out


def _flush_samples(term: Terminal, collector: drops_mod.DropsCollector) -> None:
    for sample in collector.samples:
        if term.json_mode:
            term.emit("sample", command="drops", ts_ns=sample.ts_ns, cpu=sample.cpu, pid=sample.pid,
                      comm=sample.comm, len=sample.len, **sample.row.as_json(True))
        elif not term.interactive:
            term.plain(drops_view.sample_line(sample))
    collector.samples.clear()


def _emit_start(term: Terminal, query: drops_mod.DropsQuery, facts: object, collector: drops_mod.DropsCollector,
                has_reason: bool) -> None:
    unavailable = []
    if not has_reason:
        unavailable.append({"hook": "skb:kfree_skb reason", "reason": "this kernel's kfree_skb has no reason field"})
    if term.json_mode:
        term.emit(
            "start",
            command="drops",
            kernel=facts.release,  # type: ignore[attr-defined]
            headers=bpf.headers_mode(facts),  # type: ignore[arg-type]
            attached=collector.attached(),
            unavailable=unavailable,
            group_by=list(query.by) + (["flow"] if query.flow_keyed and "flow" not in query.by else []),
            filters={
                "netns": query.netns.inode if query.netns else None,
                "iface": query.ifaces,
                "proto": query.proto,
                "port": query.port,
                "host": str(query.host) if query.host else None,
                "reason_code": query.reason_code,
            },
        )
    else:
        term.note("netpath drops: skb:kfree_skb attached; Ctrl-C for the summary")
