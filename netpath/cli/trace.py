"""`netpath trace`: where received packets spend their time, stage by stage."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import click

from netpath import bpf, contract
from netpath.cli.console import Terminal
from netpath.cli.options import bounded_int, common_options, parse_sample, parse_stages, resolve_filters
from netpath.cli.preflight import load_facts, require_capability
from netpath.cli.sinks import JsonSink, TraceView
from netpath.collect import factory
from netpath.collect.session import drive
from netpath.collect.trace import TraceQuery
from netpath.errors import BadInput
from netpath.kernel.clock import tai_offset_ns
from netpath.stages import PACKET_STAGES, STAGE_IDS, STAGES, UNFILTERED
from netpath.thresholds import LatencyThreshold, parse_duration, parse_fail_on_latency

# 1 in 16: an untimed hook only counts, and the clock read it skips is most of a hook's cost; at 10k
# packets/s that still times 625 a second (make bench: the figures are in netpath-trace(8), OVERHEAD)
DEFAULT_SAMPLE = 16
INVOCATION_STAGES = tuple(s for s in STAGE_IDS if s not in PACKET_STAGES)
KPROBE_STAGES = tuple(s.id for s in STAGES if s.checkpoint)  # timed between kprobe checkpoints


def _wrapped(text: str) -> str:
    return "\n".join(textwrap.wrap(text, 76))


HELP = f"""Show where received packets spend their time, stage by stage.

\b
{_wrapped(
    "One row per receive-path stage in path order. By default the per-packet stages run: "
    f"{', '.join(PACKET_STAGES)} (the {', '.join(KPROBE_STAGES)} ones need kprobes). --stages all adds the "
    f"per-invocation ones ({', '.join(INVOCATION_STAGES)}), which run a hook per IRQ, softirq or poll. Each row "
    "has the hook and attach method, the exact count and p50/p90/p99/max from an in-kernel histogram read "
    "every interval. Per-packet stages are deltas between two checkpoints of the same skb; per-invocation "
    "stages are run times. Stages this kernel cannot attach (no kprobes, say) are listed with the reason; "
    "the rest still run. 'netpath probes' shows the plan without loading anything.")}

\b
Timing is sampled: 1 in 16 packets and NET_RX runs is timed (--sample),
chosen at random; every count stays exact, and the output says how many
were timed. --sample 1, --exact and the breakdowns time every one.

\b
--iface/--netns/--proto/--port/--host narrow the per-packet stages and gro.
They cannot narrow {', '.join(UNFILTERED)}: those are
CPU-wide events with no packet (--per-iface still splits napi_poll by device).

\b
Examples:
  sudo netpath trace                               live table, Ctrl-C to stop
  sudo netpath trace --stages all                  softirq and NAPI too
  sudo netpath trace --proto udp --port 5353 --hist socket_queue
  sudo netpath trace --per-iface --duration 30 --json
  sudo netpath trace --slower 5ms                  stream slow packets too
  sudo netpath trace --per-socket --port 53        which reader is slow
  sudo netpath trace --duration 60 --fail-on-latency socket_queue:p99:10ms
"""


def _parsed(parse: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback: the option is parsed (and bad input refused, exit 2) once, while click parses."""
    return lambda _ctx, _param, value: parse(value)


@click.command("trace", help=HELP)
@common_options
@click.option("--per-iface", is_flag=True, help="Break every stage down by interface.")
@click.option("--per-cpu", is_flag=True, help="Break every stage down by CPU.")
@click.option("--per-socket", is_flag=True,
              help="Break socket_queue down by who reads: the process and its cgroup (and container).")
@click.option("--hist", "hist_stage", type=click.Choice(STAGE_IDS), metavar="STAGE",
              help="Also print the full log2 histogram of STAGE.")
@click.option("--fail-on-latency", "thresholds", multiple=True, metavar="STAGE:PCT:DURATION",
              callback=_parsed(lambda specs: tuple(map(parse_fail_on_latency, specs))),
              help="Exit 1 when STAGE's PCT (p50, p90, p99, max) exceeds DURATION in any interval or "
                   "the whole run, e.g. socket_queue:p99:10ms (repeatable).")
@click.option("--exact", is_flag=True,
              help="Time the hand-off with netpath's own hooks and a per-skb table (as on kernels before 6.1) "
                   "instead of the kernel's receive timestamp (skb->tstamp): two more hook runs per packet.")
@click.option("--stages", "stages", default="packet", show_default=True, metavar="LIST",
              callback=_parsed(parse_stages),
              help="Stages to run (comma-separated): 'packet' (every per-packet stage), 'all' (adds "
                   f"{', '.join(INVOCATION_STAGES)}: a hook run per IRQ, softirq or poll each), or stage names.")
@click.option("--sample", "sample_every", type=bounded_int(1, contract.SAMPLE_MAX), default=DEFAULT_SAMPLE,
              show_default=True, metavar="N", callback=_parsed(lambda n: parse_sample(n, contract.SAMPLE_MAX)),
              help="Time 1 in N NET_RX runs and packets (a power of two; 1 times every one). Counts stay "
                   "exact. --per-iface, --per-cpu, --per-socket, --slower and --exact time every one.")
@click.option("--slower", "slower_ns", metavar="DURATION",  # "" is bad input, not "off"
              callback=_parsed(lambda v: 0 if v is None else parse_duration(v, "--slower duration")),
              help="Also stream each packet whose stack_total or socket_queue exceeds DURATION (e.g. 5ms).")
@click.pass_context
def trace(ctx: click.Context, ifaces: tuple[str, ...], netns_spec: str | None, proto: str | None,
          port: int | None, host: str | None, interval: float, duration: float | None, count: int | None,
          json_mode: bool, ebpf: bool, per_iface: bool, per_cpu: bool, per_socket: bool, hist_stage: str | None,
          thresholds: tuple[LatencyThreshold, ...], exact: bool, stages: tuple[str, ...], sample_every: int,
          slower_ns: int) -> None:
    for t in thresholds:
        if t.stage not in stages:
            raise BadInput(f"bad --fail-on-latency {t.spec!r}: stage {t.stage} is not in --stages "
                           f"{','.join(stages)}")
    filters = resolve_filters(ifaces, netns_spec, proto, port, host)
    if not ebpf:
        require_capability(command="trace")
    facts = load_facts()
    query = TraceQuery(filters, stages, exact, per_iface, per_cpu, slower_ns, per_socket=per_socket,
                       tai_offset_ns=tai_offset_ns(), sample_every=sample_every)
    session = factory.trace_session(query, facts, fail_on_latency=tuple(t.as_json() for t in thresholds))
    for t in thresholds:
        choice = session.plan.choice(t.stage)
        if not choice.available:
            raise BadInput(f"bad --fail-on-latency {t.spec!r}: stage {t.stage} cannot attach here ({choice.reason})")
    if ebpf:
        click.echo(bpf.dump_source(session.source, facts))
        return
    term = Terminal(json_mode)
    sink = JsonSink(term) if json_mode else TraceView(term, hist_stage)
    try:
        ctx.exit(drive(session, sink, interval, duration, count, list(thresholds)))
    finally:
        term.close_live()
