"""`netpath follow`: single packets through the host, hop by hop, and how each ended."""

from __future__ import annotations

import click

from netpath import bpf, contract
from netpath.cli.console import Terminal
from netpath.cli.options import FILTER_OPTIONS, RUN_OPTIONS, F, _apply, bounded_int, resolve_filters
from netpath.cli.preflight import kernel_root, load_facts, require_capability
from netpath.cli.sinks import FollowView, JsonSink
from netpath.collect import factory
from netpath.collect.follow import FollowQuery
from netpath.collect.session import Sink, drive
from netpath.kernel.facts import KernelFacts

HELP = """Follow single packets through the host: every hop, and how each ended.

\b
The first tracepoint that sees a packet matching the filters starts following
its skb; every tracepoint it then passes is a hop: time since the first, CPU,
network namespace, device, length and the addresses read again there, so a
NAT rewrite shows (*) at the hop it is first seen at. The fate: delivered (to
the process that read it), dropped (the kernel's reason, where, in which
namespace), sent out of a device, merged by GRO, consumed, untracked, or in
flight when the run ended. Tracepoints only: no kprobes needed.

\b
Examples:
  sudo netpath follow --host 10.96.0.10 --port 53
  sudo netpath follow --proto tcp --port 443 --count 3 --json
  sudo netpath follow --netns web --iface eth0 --duration 10
"""

# --count counts packets here, not reports: the shared one (RUN_OPTIONS[2]) is replaced by this one
COUNT_OPTION = click.option(
    "--count", type=bounded_int(1, contract.FOLLOW_MAX_LIMIT, "packets"), default=contract.FOLLOW_MAX_DEFAULT,
    show_default=True, metavar="N", help="Follow N packets (and their clones), then stop when each has ended.")


def _options(fn: F) -> F:
    return _apply(fn, [*FILTER_OPTIONS, *RUN_OPTIONS[:2], COUNT_OPTION, *RUN_OPTIONS[3:]])


@click.command("follow", help=HELP)
@_options
@click.pass_context
def follow(ctx: click.Context, ifaces: tuple[str, ...], netns_spec: str | None, proto: str | None,
           port: int | None, host: str | None, interval: float, duration: float | None, count: int,
           json_mode: bool, ebpf: bool) -> None:
    filters = resolve_filters(ifaces, netns_spec, proto, port, host)
    facts = KernelFacts.load(kernel_root())
    if not ebpf:
        require_capability(locations=True)
    load_facts(facts)
    query = FollowQuery(filters, count)
    session = factory.follow_session(query, facts)
    if ebpf:
        click.echo(bpf.dump_source(session.source, facts))
        return
    term = Terminal(json_mode)
    sink: Sink = JsonSink(term) if json_mode else FollowView(term)
    ctx.exit(drive(session, sink, interval, duration, None, done=session.done))

