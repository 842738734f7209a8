"""`netpath trace`: where received packets spend their time, stage by stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click

from netpath import bpf
from netpath import netns as netns_mod
from netpath.cli.console import Terminal
from netpath.cli.options import common_options, resolve_filters
from netpath.cli.preflight import load_facts, require_capability
from netpath.collect import counters as counters_mod
from netpath.collect import trace as trace_mod
from netpath.collect import trace_stats as ts
from netpath.errors import EXIT_OK, EXIT_THRESHOLD, BadInput
from netpath.kernel.facts import KernelFacts
from netpath.links import IfaceNames
from netpath.plan import AttachPlan, make_plan
from netpath.render import trace_view
from netpath.runloop import SignalStop, run
from netpath.stages import STAGE_IDS, UNFILTERED
from netpath.thresholds import LatencyThreshold, crossed, parse_duration, parse_fail_on_latency

HELP = f"""Show where received packets spend their time, stage by stage.

\b
One row per receive-path stage in path order: hardirq, softirq_wait,
net_rx_action, napi_poll, gro, netif_receive_skb, ip_rcv, ip_local_deliver,
tcp_v4_rcv, udp_rcv, socket_queue, stack_total. Each row has the hook and
attach method, the sample count and p50/p90/p99/max from an in-kernel
histogram read every interval. Per-packet stages are deltas between two
checkpoints of the same skb; per-invocation stages are run times. Stages this
kernel cannot attach (no kprobes, say) are listed with the reason; the rest
still run. 'netpath probes' shows the plan without loading anything.

\b
--iface/--netns/--proto/--port/--host narrow the per-packet stages and gro.
They cannot narrow {', '.join(UNFILTERED)}: those are
CPU-wide events with no packet (--per-iface still splits napi_poll by device).

\b
Examples:
  sudo netpath trace                               live table, Ctrl-C to stop
  sudo netpath trace --proto udp --port 5353 --hist socket_queue
  sudo netpath trace --per-iface --duration 30 --json
  sudo netpath trace --slower 5ms                  stream slow packets too
  sudo netpath trace --duration 60 --fail-on-latency socket_queue:p99:10ms
"""


@dataclass
class Options:
    per_iface: bool
    per_cpu: bool
    hist_stage: str | None
    thresholds: list[LatencyThreshold] = field(default_factory=list)
    slower_ns: int = 0


@click.command("trace", help=HELP)
@common_options
@click.option("--per-iface", is_flag=True, help="Break every stage down by interface.")
@click.option("--per-cpu", is_flag=True, help="Break every stage down by CPU.")
@click.option("--hist", "hist_stage", type=click.Choice(STAGE_IDS), metavar="STAGE",
              help="Also print the full log2 histogram of STAGE.")
@click.option("--fail-on-latency", "fail_specs", multiple=True, metavar="STAGE:PCT:DURATION",  # checked while parsing
              callback=lambda _ctx, _param, specs: (tuple(map(parse_fail_on_latency, specs)), specs)[1],
              help="Exit 1 when STAGE's PCT (p50, p90, p99, max) exceeds DURATION in any interval or "
                   "the whole run, e.g. socket_queue:p99:10ms (repeatable).")
@click.option("--slower", "slower", metavar="DURATION",  # checked while parsing: "" is bad input, not "off"
              callback=lambda _ctx, _param, v: None if v is None else (parse_duration(v, "--slower duration"), v)[1],
              help="Also stream each packet whose stack_total or socket_queue exceeds DURATION (e.g. 5ms).")
@click.pass_context
def trace(ctx: click.Context, ifaces: tuple[str, ...], netns_spec: str | None, proto: str | None,
          port: int | None, host: str | None, interval: float, duration: float | None, count: int | None,
          json_mode: bool, ebpf: bool, per_iface: bool, per_cpu: bool, hist_stage: str | None,
          fail_specs: tuple[str, ...], slower: str | None) -> None:
    opts = Options(per_iface, per_cpu, hist_stage, [parse_fail_on_latency(s) for s in fail_specs],
                   parse_duration(slower, "--slower duration") if slower else 0)
    filters = resolve_filters(ifaces, netns_spec, proto, port, host)
    if not ebpf:
        require_capability()
    facts = load_facts()
    plan = make_plan(facts)
    for t in opts.thresholds:
        choice = plan.choice(t.stage)
        if not choice.available:
            raise BadInput(f"bad --fail-on-latency {t.spec!r}: stage {t.stage} cannot attach here ({choice.reason})")
    query = trace_mod.TraceQuery(filters.netns, filters.iface_keys, filters.proto, filters.port, filters.host,
                                 per_iface, per_cpu, opts.slower_ns)
    source = trace_mod.program_source(query, plan, bpf.struct_offsets(facts))
    if ebpf:
        click.echo(bpf.dump_source(source, facts))
        return
    term = Terminal(json_mode)
    ctx.exit(_run(term, query, plan, facts, source, opts, interval, duration, count))


def _softnet() -> dict[str, int]:
    try:
        text = Path("/proc/net/softnet_stat").read_text()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for cols in counters_mod.parse_softnet(text).values():
        for name in ("time_squeeze", "dropped"):
            out[name] = out.get(name, 0) + cols.get(name, 0)
    return out


def _names() -> trace_view.Names:
    cache = IfaceNames()
    here = netns_mod.current().inode

    def name(ns_inode: int, ifindex: int) -> str | None:
        return cache.name(ns_inode or here, ifindex)

    return name


def _unavailable(plan: AttachPlan) -> list[dict[str, str]]:
    return [{"stage": c.stage.id, "hook": c.hook, "reason": c.reason} for c in plan.unavailable]


def _run(term: Terminal, query: trace_mod.TraceQuery, plan: AttachPlan, facts: KernelFacts,
         source: bpf.ProgramSource, opts: Options, interval: float, duration: float | None,
         count: int | None) -> int:
    names = _names()
    collector = trace_mod.TraceCollector(query, plan, facts, source)
    acc = ts.Accumulator()
    unavailable = _unavailable(plan)
    keep_parts = opts.per_iface or opts.per_cpu
    hits: dict[str, object] = {}
    with SignalStop() as stop:
        try:
            collector.start()
            unavailable.extend(collector.failed)
            softnet = {"base": _softnet()}
            softnet["last"] = softnet["base"]
            _emit_start(term, query, facts, collector, unavailable, opts)
            state = {"seq": 0, "last_ns": 0, "lost": 0}

            def on_interval(elapsed_ns: int) -> None:
                dists, napi, hits_d, stats = acc.step(collector.read())
                now_softnet = _softnet()
                sn = {k: v - softnet["last"].get(k, 0) for k, v in now_softnet.items()}
                softnet["last"] = now_softnet
                snap = ts.TraceSnapshot(ts.stage_stats(plan, dists, napi, keep_parts), unavailable, hits_d,
                                        stats, collector.slow_lost - state["lost"], sn, elapsed_ns)
                state["lost"] = collector.slow_lost
                state["seq"] += 1
                span = elapsed_ns - state["last_ns"]
                state["last_ns"] = elapsed_ns
                _flush_slow(term, collector, names)
                body = _snap_json(snap, names, opts)
                for t in opts.thresholds:
                    value = crossed(t, body["stages"])  # type: ignore[arg-type]
                    if value is not None:
                        hits.setdefault(t.spec, value)
                title = f"netpath trace  t={elapsed_ns / 1e9:.0f}s  interval {span / 1e9:.1f}s"
                if term.json_mode:
                    term.emit("interval", command="trace", seq=state["seq"], elapsed_ns=elapsed_ns,
                              interval_ns=span, **body)
                elif term.interactive:
                    term.show(trace_view.trace_table(snap, title, names, opts.per_iface, opts.per_cpu,
                                                     opts.hist_stage))
                else:
                    term.plain("\n".join(trace_view.plain_lines(snap, title, names, opts.per_iface,
                                                                opts.per_cpu, opts.hist_stage)) + "\n")

            stop_reason, elapsed = run(interval, duration, count, on_interval, collector.poll, stop)
            acc.step(collector.read())
            _flush_slow(term, collector, names)
            dists, napi, hits_t, stats = acc.totals()
            total_softnet = {k: v - softnet["base"].get(k, 0) for k, v in _softnet().items()}
            summary = ts.TraceSnapshot(ts.stage_stats(plan, dists, napi, keep_parts), unavailable, hits_t, stats,
                                       collector.slow_lost, total_softnet, elapsed)
        finally:
            collector.close()
            term.close_live()
    body = _snap_json(summary, names, opts)
    for t in opts.thresholds:
        value = crossed(t, body["stages"])  # type: ignore[arg-type]
        if value is not None:
            hits.setdefault(t.spec, value)
    threshold = [{**t.as_json(), "crossed": t.spec in hits, "value_ns": hits.get(t.spec)}
                 for t in opts.thresholds] or None
    if term.json_mode:
        term.emit("summary", command="trace", stop_reason=stop_reason, elapsed_ns=elapsed, **body,
                  threshold=threshold)
    else:
        title = f"summary ({stop_reason}, {elapsed / 1e9:.1f}s)"
        term.plain("\n".join(trace_view.plain_lines(summary, title, names, opts.per_iface, opts.per_cpu,
                                                    opts.hist_stage)))
        for spec, value in hits.items():
            term.plain(f"threshold crossed: --fail-on-latency {spec} (measured {trace_view.fmt_ns(int(value))})")  # type: ignore[call-overload]
    return EXIT_THRESHOLD if hits else EXIT_OK


def _snap_json(snap: ts.TraceSnapshot, names: trace_view.Names, opts: Options) -> dict[str, object]:
    return {
        "stages": [ts.stage_json(s, names, opts.per_iface, opts.per_cpu) for s in snap.stages],
        "unavailable": snap.unavailable,
        "softnet": snap.softnet,
        "health": {
            "probe_hits": snap.hits,
            "lost_samples": snap.stats.get("lost_rows", 0),
            "lost_skbs": snap.stats.get("lost_skbs", 0),
            "slow_sent": snap.stats.get("slow_sent", 0),
            "missed_enqueue": snap.stats.get("missed_enqueue", 0),
            "ring_overrun": snap.stats.get("ring_overrun", 0),
            "lost_events": snap.slow_lost,
        },
    }


def _flush_slow(term: Terminal, collector: trace_mod.TraceCollector, names: trace_view.Names) -> None:
    for pkt in collector.slow:
        if term.json_mode:
            term.emit("slow", command="trace", ts_ns=pkt.ts_ns, cpu=pkt.cpu, pid=pkt.pid, comm=pkt.comm,
                      iface=names(pkt.netns, pkt.ifindex), ifindex=pkt.ifindex, netns=pkt.netns,
                      family=pkt.family or None, proto=pkt.proto, saddr=pkt.saddr, daddr=pkt.daddr,
                      sport=pkt.sport, dport=pkt.dport, stages_ns=pkt.stages_ns)
        elif term.interactive:
            term.out.print(trace_view.slow_line(pkt, names), markup=False)
        else:
            term.plain(trace_view.slow_line(pkt, names))
    collector.slow.clear()


def _emit_start(term: Terminal, query: trace_mod.TraceQuery, facts: KernelFacts,
                collector: trace_mod.TraceCollector, unavailable: list[dict[str, str]], opts: Options) -> None:
    if term.json_mode:
        term.emit(
            "start",
            command="trace",
            kernel=facts.release,
            headers=bpf.headers_mode(facts),
            stages=list(STAGE_IDS),
            attached=collector.attached(),
            unavailable=unavailable,
            filters={
                "netns": query.netns.inode if query.netns else None,
                "iface_keys": [list(k) for k in query.iface_keys],
                "proto": query.proto,
                "port": query.port,
                "host": str(query.host) if query.host else None,
                "unfiltered_stages": list(UNFILTERED),
            },
            per_iface=opts.per_iface,
            per_cpu=opts.per_cpu,
            slower_ns=opts.slower_ns or None,
            fail_on_latency=[t.as_json() for t in opts.thresholds],
        )
    else:
        term.note(f"netpath trace: {len(collector.attached())} hooks attached, "
                  f"{len(unavailable)} stages unavailable; Ctrl-C for the summary")
