"""`netpath drops`: every receive-path drop, by the kernel's reason, where, on which interface."""

from __future__ import annotations

import click

from netpath import bpf, contract
from netpath.cli import pcap_out
from netpath.cli.console import Terminal
from netpath.cli.options import COUNT_THRESHOLD_MAX, bounded_int, common_options, resolve_filters
from netpath.cli.preflight import kernel_root, load_facts, require_capability
from netpath.cli.sinks import DropsView, JsonSink, PcapSink
from netpath.collect import drops as drops_mod
from netpath.collect import factory
from netpath.collect.session import Sink, drive
from netpath.errors import EXIT_ENVIRONMENT, BadInput, MissingCapability
from netpath.kernel import reasons as reasons_mod
from netpath.kernel.cgroups import CgroupTree, find_mount
from netpath.kernel.facts import KernelFacts
from netpath.thresholds import DropsThreshold

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
  sudo netpath drops --by reason,socket        whose socket overflowed
  sudo netpath drops --by reason,cgroup --cgroup /system.slice/dns.service
  sudo netpath drops --duration 60 --fail-on-drops 1000  # exit 1 at >= 1000
  sudo netpath drops --port 53 --pcap dns-drops.pcapng --duration 30
  sudo netpath drops --pcap - | tshark -r -    the dropped packets, annotated
"""


def check_pcap(pcap: str | None, pcap_max: int | None, snaplen: int | None, force: bool, json_mode: bool,
               stdout_is_terminal: bool) -> drops_mod.PcapQuery | None:
    """--pcap and its companions as a query; conflicts are bad input, named."""
    if pcap is None:
        given = [name for name, value in (("--pcap-max", pcap_max), ("--snaplen", snaplen)) if value is not None]
        given += ["--force"] if force else []
        if given:
            raise BadInput(f"{', '.join(given)} only apply with --pcap FILE|-")
        return None
    if pcap == "-":
        if json_mode:
            raise BadInput("--json and --pcap - both want stdout: write the capture to a file (--pcap FILE) "
                           "or drop --json")
        if stdout_is_terminal:
            raise BadInput("--pcap -: stdout is a terminal; pipe it (| tshark -r -) or give a file")
    elif not pcap.strip():
        raise BadInput(f"--pcap {pcap!r}: give a file name, or - for stdout")
    else:
        pcap_out.check_target(pcap, force)
    return drops_mod.PcapQuery(snaplen if snaplen is not None else contract.SNAPLEN_DEFAULT,
                               pcap_max if pcap_max is not None else contract.PCAP_MAX_DEFAULT)


def _reason_from_btf(name: str, facts: KernelFacts) -> int | None:
    """The reason's code from BTF (readable by everyone); None when BTF cannot say. Unknown: BadInput."""
    if not facts.has_btf:
        return None
    try:
        reasons = reasons_mod.load(facts.btf_path, None)
    except MissingCapability:
        return None
    if reasons.source != "btf":
        return None
    code = reasons.code(name)
    if code is None:
        raise BadInput(f"unknown drop reason {name!r} on this kernel (see 'netpath probes --reasons')")
    return code


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
              help="What rows group by: any of reason,location,iface,proto,flow,socket,cgroup "
                   "(socket: the receiving socket and its process; cgroup: its cgroup and container).")
@click.option("--cgroup", "cgroup_spec", metavar="PATH",
              help="Only drops whose receiving socket is in this cgroup v2 (e.g. /system.slice/nginx.service).")
@click.option("--top", type=bounded_int(1, drops_mod.MAX_ROWS, "rows the drops map holds"), metavar="N",
              help="Show the N busiest rows per report [default: 10, all in --json].")
@click.option("--stack", is_flag=True, help="Add the kernel stack of the last drop for each shown row.")
@click.option("--samples", type=bounded_int(0, 10000, "samples per CPU per interval"), default=0, show_default=True,
              metavar="N",
              help="Also stream up to N sampled drops per CPU per interval, with their flow.")
@click.option("--pcap", "pcap", metavar="FILE|-",
              help="Write the matched dropped packets as pcapng (Wireshark), each with a comment saying why "
                   "and where it died; - is stdout (the table then goes to stderr). Created 0600.")
@click.option("--pcap-max", type=bounded_int(1, contract.PCAP_MAX_LIMIT, "packets"), metavar="N",
              help=f"Stop capturing after N packets (counting goes on) [default: {contract.PCAP_MAX_DEFAULT}].")
@click.option("--snaplen", type=bounded_int(contract.SNAPLEN_MIN, contract.SNAPLEN_MAX, "bytes per packet"),
              metavar="BYTES", help=f"Bytes kept of each packet [default: {contract.SNAPLEN_DEFAULT}].")
@click.option("--force", is_flag=True, help="Replace an existing --pcap file (never through a symbolic link).")
@click.option("--fail-on-drops", type=bounded_int(1, COUNT_THRESHOLD_MAX), metavar="N",  # counts are int64 in JSON
              help="Exit 1 when at least N matching drop events were seen (the counters are not in it).")
@click.pass_context
def drops(ctx: click.Context, ifaces: tuple[str, ...], netns_spec: str | None, proto: str | None,
          port: int | None, host: str | None, interval: float, duration: float | None, count: int | None,
          json_mode: bool, ebpf: bool, reason_name: str | None, by_spec: str, cgroup_spec: str | None,
          top: int | None, stack: bool, samples: int, pcap: str | None, pcap_max: int | None,
          snaplen: int | None, force: bool, fail_on_drops: int | None) -> None:
    by = parse_by(by_spec)
    pcap_query = check_pcap(pcap, pcap_max, snaplen, force, json_mode, Terminal.stdout_is_terminal())
    cgroup_id = CgroupTree(find_mount()).id_of(cgroup_spec) if cgroup_spec is not None else None
    filters = resolve_filters(ifaces, netns_spec, proto, port, host, cgroup_id)
    facts = KernelFacts.load(kernel_root())  # once per run; tracefs is mounted after the capability check
    reason_code = None
    if reason_name is not None and (code := _reason_from_btf(reason_name, facts)) is not None:
        reason_code = code  # checked before the capability: a typo is bad input, whoever runs it
    if not ebpf:
        require_capability(locations="location" in by or stack or samples > 0, command="drops")
    load_facts(facts)
    if not facts.has_tracepoint(drops_mod.TRACEPOINT):
        raise MissingCapability("this kernel has no skb:kfree_skb tracepoint (needs Linux 4.x+ with tracefs mounted)")
    reasons = drops_mod.drop_reasons(facts)
    if reason_name is not None and reason_code is None:
        reason_code = reasons.code(reason_name)
        if reason_code is None:
            raise BadInput(f"unknown drop reason {reason_name!r} on this kernel (see 'netpath probes --reasons')")
    query = drops_mod.DropsQuery(filters, reason_code, by, stack, samples, pcap=pcap_query)
    term = Terminal(json_mode, stdout_taken=pcap == "-")
    limit = top if top is not None else (None if json_mode else 10)
    session = factory.drops_session(query, facts, reasons=reasons, limit=limit, live=term.interactive)
    if ebpf:
        click.echo(bpf.dump_source(session.source, facts))
        return
    sink: Sink = JsonSink(term) if json_mode else DropsView(term)
    thresholds = [DropsThreshold(fail_on_drops)] if fail_on_drops is not None else []
    out = None
    if pcap is not None:
        out = term.binary_stdout() if pcap == "-" else pcap_out.open_file(pcap, force)
        sink = PcapSink(sink, out, pcap, term, on_stop=session.stop_capture)
    try:
        code = drive(session, sink, interval, duration, count, thresholds)
        if isinstance(sink, PcapSink) and sink.stopped is not None:
            code = EXIT_ENVIRONMENT  # the capture did not run to its end: the summary said why
        ctx.exit(code)
    finally:
        term.close_live()
        if out is not None:
            out.close()
