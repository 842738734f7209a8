"""`netpath export`: always-on drop and latency metrics for Prometheus."""

from __future__ import annotations

import errno
import gc
import ipaddress
import select
import signal
import socket
import time

import click

from netpath import contract
from netpath.cli import web_config
from netpath.cli.console import Terminal
from netpath.cli.http_server import HttpServer, Routes, SharedScrape
from netpath.cli.options import (
    DURATION_MAX_S,
    DURATION_MIN_S,
    bounded_float,
    bounded_int,
    filter_options,
    parse_sample,
    resolve_filters,
)
from netpath.cli.options import (
    parse_stages as parse_stage_list,
)
from netpath.cli.preflight import load_facts, require_capability
from netpath.collect import drops as drops_mod
from netpath.collect import factory
from netpath.collect.drops import DropsQuery
from netpath.collect.session import SignalStop, Stop
from netpath.collect.trace import TraceQuery
from netpath.compose.export import ExportCollector
from netpath.errors import EXIT_OK, BadInput, MissingCapability
from netpath.kernel.clock import tai_offset_ns

DEFAULT_PORT = 9872
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
# Latency left on where operators look first (how long data waits for its reader), with no hook on a
# packet that is not delivered to a socket: socket_queue alone, 1 in DEFAULT_SAMPLE timed, counts exact.
# netif_receive_skb and stack_total (the default before) hooked every received packet in the softirq that
# also carries the traffic: 0.83-0.89 of the untraced rate in the hardest case, and every storm packet paid
# it. Their cost and this one's are in netpath-export(8), OVERHEAD; --stages none is drops only.
DEFAULT_STAGES: tuple[str, ...] = ("socket_queue",)
# as netpath trace: an untimed run only counts, and the clock read it skips is most of a hook's cost
DEFAULT_SAMPLE = 16
DEFAULT_MAX_SERIES = 500
# a scrape in the middle of reading maps gets STOP_WAIT_S to finish
STOP_WAIT_S = 0.5
EXPORT_BY = ("reason", "iface", "proto")

HELP = f"""Serve receive-path drop and latency metrics to Prometheus.

\b
A long-running exporter: /metrics (Prometheus text or OpenMetrics, as the
scraper asks) reads the in-kernel maps at scrape time, so counts are exact
and Python does no per-packet work. It exports drops by the kernel's drop
reason, interface, namespace and protocol; the drop counters no skb carries
(link, qdisc, SNMP; softnet is left to node_exporter); per-stage latency
histograms; NAPI polls, packets and budget exhaustion per device; stages
that could not attach, with the reason; and netpath's own health.
/healthz answers 503 until every probe is attached, then 200.

\b
By default the drops program and one latency stage run: socket_queue (a
datagram's or a TCP wakeup's wait in the socket's receive queue until the
application reads it), timing 1 in 16 (--sample) with exact counts, hooked
only where data is delivered to a socket and read: a packet that is dropped
or forwarded runs no latency hook. Stage by stage is netpath trace's, or
--stages here (netif_receive_skb,socket_queue,stack_total was the default
before); --stages none is drops only; napi_poll adds a hook per softirq.
Costs: OVERHEAD in netpath-export(8). Listens on localhost unless told.

\b
Examples:
  sudo netpath export                              127.0.0.1:{DEFAULT_PORT}
  sudo netpath export --listen 0.0.0.0:{DEFAULT_PORT}          every address
  sudo netpath export --listen :{DEFAULT_PORT} --web-config-file /etc/netpath/web.yml
  sudo netpath export --stages napi_poll,socket_queue --port 53
  curl -s localhost:{DEFAULT_PORT}/metrics | grep netpath_drops_total
"""


def parse_listen(value: str) -> tuple[str, int]:
    """ADDR:PORT, [V6ADDR]:PORT or :PORT (every address) -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):  # "²".isdigit(), but int("²") fails
        raise BadInput(f"bad --listen {value!r}: expected ADDR:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise BadInput(f"bad --listen {value!r}: port {port} is not in 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # "::1:9872" is itself an IPv6 address: which colon ends it cannot be told
        raise BadInput(f"bad --listen {value!r}: put an IPv6 address in brackets, e.g. [::1]:{DEFAULT_PORT}")
    if host in ("", "*"):
        return "::", port
    if host == "localhost":
        return "127.0.0.1", port
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise BadInput(f"bad --listen {value!r}: {host!r} is not an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        # the HTTP server binds by address alone: a zone would fail at bind (or bind another interface)
        raise BadInput(f"bad --listen {value!r}: a scoped IPv6 address (%{addr.scope_id}) cannot be served; "
                       "give a global or loopback address, or [::] for every address")
    return str(addr), port


def parse_stages(value: str) -> tuple[str, ...]:
    return parse_stage_list(value, none_means="drops only")


def bind(host: str, port: int, routes: Routes, listen: str, web: web_config.WebConfig) -> HttpServer:
    try:
        return HttpServer(host, port, routes, web.tls, web.auth)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise MissingCapability(f"--listen {listen}: address already in use (another netpath export or "
                                    "exporter?); pick another port with --listen") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise BadInput(f"bad --listen {listen!r}: {host} is not an address of this host") from None
        raise MissingCapability(f"--listen {listen}: cannot listen: {exc.strerror}") from None


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


@click.command("export", help=HELP)
@filter_options
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="ADDR:PORT",
              help="Where to serve /metrics; :PORT or [::]:PORT for every address.")
@click.option("--stages", "stages_spec", default=",".join(DEFAULT_STAGES) or "none", show_default=True, metavar="LIST",
              help="Trace stages to export as histograms (comma-separated), or 'none'.")
@click.option("--sample", "sample_every", type=bounded_int(1, contract.SAMPLE_MAX), default=DEFAULT_SAMPLE,
              show_default=True, metavar="N", callback=lambda _c, _p, n: parse_sample(n, contract.SAMPLE_MAX),
              help="Time 1 in N packets of the per-packet stages (a power of two; 1 times every one). "
                   "netpath_stage_packets_total stays exact; with napi_poll every run is timed.")
@click.option("--max-series", type=bounded_int(1, 100_000, "series per family"), default=DEFAULT_MAX_SERIES,
              show_default=True, metavar="N",
              help="Label sets per metric family; the rest fold into one _other series.")
@click.option("--by-cgroup", is_flag=True,
              help="Also label drops with the receiving socket's cgroup and container (bounded by --max-series).")
@click.option("--web-config-file", "web_config_file", metavar="FILE",
              help="TLS and basic auth, in the Prometheus exporter-toolkit format (as node_exporter).")
@click.option("--label-processes", is_flag=True,
              help="Beyond localhost, still label a namespace without an ip netns name by the process in it "
                   "(netns_label=comm[pid]); on by itself on a loopback --listen.")
@click.option("--duration", type=bounded_float(DURATION_MIN_S, DURATION_MAX_S, "seconds, at most a year"),
              metavar="SECONDS",
              help="Stop after this many seconds (default: until SIGTERM or Ctrl-C).")
@click.pass_context
def export(ctx: click.Context, ifaces: tuple[str, ...], netns_spec: str | None, proto: str | None,
           port: int | None, host: str | None, listen: str, stages_spec: str, max_series: int, by_cgroup: bool,
           sample_every: int, web_config_file: str | None, label_processes: bool, duration: float | None) -> None:
    address = parse_listen(listen)
    web = web_config.load(web_config_file) if web_config_file is not None else web_config.WebConfig(None, None)
    stages = parse_stages(stages_spec)
    filters = resolve_filters(ifaces, netns_spec, proto, port, host)
    require_capability(command="export")
    facts = load_facts()
    if not facts.has_tracepoint(drops_mod.TRACEPOINT):
        raise MissingCapability("this kernel has no skb:kfree_skb tracepoint (needs tracefs mounted)")
    term = Terminal(json_mode=False)
    for warning in web.warnings:
        term.note(f"netpath export: {warning}")
    local = is_loopback(address[0])
    if not local and web_config_file is None:
        term.note(f"netpath export: warning: --listen {listen} serves beyond this host without TLS or "
                  "authentication (see --web-config-file)")
    routes = Routes(lambda what: term.note(f"netpath export: {what}"))
    server = bind(*address, routes, listen, web)
    server.serve()  # /healthz answers 503 while the probes attach
    try:
        query = DropsQuery(filters, by=EXPORT_BY + (("cgroup",) if by_cgroup else ()),
                           name_processes=local or label_processes)
        drops = factory.drops_session(query, facts)
        # per-device NAPI counters are a breakdown, which times every run: only when napi_poll is asked for
        tquery = TraceQuery(filters, stages, napi_by_dev="napi_poll" in stages, tai_offset_ns=tai_offset_ns(),
                            sample_every=sample_every)
        trace = factory.trace_session(tquery, facts) if stages else None
        collector = ExportCollector(drops, trace, max_series)
        security = web.security if web_config_file is not None else None
        ctx.exit(serve(server, routes, collector, term, listen, duration, security))
    finally:
        server.close()


def metrics_url(scheme: str, host: str, port: int) -> str:
    """A URL one can paste into curl: a wildcard listen (`:9872`, 0.0.0.0, ::) is named by this host's name
    and said to be every address; an IPv6 address is bracketed."""
    every = host in ("", "0.0.0.0", "::")
    name = socket.gethostname() if every else host
    name = f"[{name}]" if ":" in name else name
    return f"{scheme}://{name}:{port}/metrics" + (" (every address)" if every else "")


def wait_for_stop(stop: Stop, deadline: float | None) -> None:
    """Sleep until SIGINT/SIGTERM (SignalStop's handlers) or the deadline, waking for nothing else.

    A signal (whichever thread the kernel delivers it to) writes a byte to the wakeup fd, which ends the
    select; a signal that came before the select leaves its byte there, so none is missed. Polling a flag
    instead woke this process ten times a second for the life of an always-on exporter."""
    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    old = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
    try:
        while not stop:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            select.select([r], [], [], left)
            try:
                r.recv(64)
            except BlockingIOError:
                pass
    finally:
        signal.set_wakeup_fd(old)
        r.close()
        w.close()


def serve(server: HttpServer, routes: Routes, collector: ExportCollector, term: Terminal, listen: str,
          duration: float | None, security: str | None = None) -> int:
    """security: what --web-config-file gave, for the readiness line (None without one)."""
    scrape = SharedScrape(collector.collect)
    detached = True
    with SignalStop() as stop:
        try:
            starts = collector.start()
            # what the start made (BTF facts, layouts, the loaded programs, the imports) lives as long as the
            # process: out of the collector's sight, the garbage collector no longer walks it at every
            # collection a scrape's allocations set off (collected first, so no garbage is kept with it)
            gc.collect()
            gc.freeze()
            routes.scrape = scrape
            attached = sum(len(s.attached) for s in starts)
            unavailable = [u.stage or u.hook for s in starts for u in s.unavailable]
            scheme = "https" if server.tls is not None else "http"
            term.note(f"netpath export: serving {metrics_url(scheme, *server.server_address[:2])} ({attached} "
                      f"{'hook' if attached == 1 else 'hooks'} attached"
                      + (f"; {security}" if security else "")
                      + (f"; unavailable: {', '.join(unavailable)}" if unavailable else "") + ")")
            wait_for_stop(stop, time.monotonic() + duration if duration else None)
        finally:
            server.close()
            # a scrape reading the maps finishes first (they take milliseconds); one stuck past the bound
            # leaves the probes to the kernel, which detaches them when the process exits
            detached = scrape.close(timeout=STOP_WAIT_S)
            if detached:
                collector.close()
    term.note(f"netpath export: stopped ({stop.reason or 'duration'}) after {collector.scrapes} scrapes"
              + ("" if detached else "; a scrape was still reading the maps"))
    return EXIT_OK
