"""`netpath export`: always-on drop and latency metrics for Prometheus."""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import click
from prometheus_client import CollectorRegistry, make_wsgi_app

from netpath.cli.console import Terminal
from netpath.cli.options import (
    DURATION_MAX_S,
    DURATION_MIN_S,
    bounded_float,
    bounded_int,
    filter_options,
    resolve_filters,
)
from netpath.cli.options import (
    parse_stages as parse_stage_list,
)
from netpath.cli.preflight import load_facts, require_capability
from netpath.collect import drops as drops_mod
from netpath.collect import factory
from netpath.collect.drops import DropsQuery
from netpath.collect.export import ExportCollector
from netpath.collect.session import SignalStop
from netpath.collect.trace import TraceQuery
from netpath.errors import EXIT_OK, BadInput, MissingCapability

DEFAULT_PORT = 9872
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
# Drops only: the kfree_skb program runs per dropped packet, never per delivered one. Any trace stage
# hooks the NET_RX softirq or every packet (make bench: napi_poll alone costs 0.68-0.81 of the pps of a
# drop storm), so stages are asked for, not on by default.
DEFAULT_STAGES: tuple[str, ...] = ()
DEFAULT_MAX_SERIES = 500
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
/healthz answers once every probe is attached.

\b
By default only the drops program runs (once per dropped packet, never per
delivered one): cheap enough to leave running. --stages adds latency
histograms (napi_poll: per softirq; socket_queue, stack_total, ...: per
packet) at their cost (see OVERHEAD in netpath-export(8)). Listens on
localhost unless told.

\b
Examples:
  sudo netpath export                              127.0.0.1:{DEFAULT_PORT}
  sudo netpath export --listen 0.0.0.0:{DEFAULT_PORT}          every address
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
    host = host.strip("[]") if host.startswith("[") and host.endswith("]") else host
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


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not news: no line per request on stderr."""


class _Server(WSGIServer):
    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:  # '::' serves IPv4 too
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def bind(host: str, port: int, app: Callable[..., Iterable[bytes]], listen: str) -> WSGIServer:
    try:
        return make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise MissingCapability(f"--listen {listen}: address already in use (another netpath export or "
                                    "exporter?); pick another port with --listen") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise BadInput(f"bad --listen {listen!r}: {host} is not an address of this host") from None
        raise MissingCapability(f"--listen {listen}: cannot listen: {exc.strerror}") from None


class Routes:
    """/metrics, /healthz and a pointer from / ; the metrics app is set once every probe is attached."""

    def __init__(self) -> None:
        self.metrics: Callable[..., Iterable[bytes]] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics" and self.metrics is not None:
            return self.metrics(environ, start_response)
        if path in ("/healthz", "/metrics"):
            ready = self.metrics is not None
            start_response("200 OK" if ready else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ready else b"attaching\n"]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"netpath export: metrics at /metrics, readiness at /healthz\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics\n"]


@click.command("export", help=HELP)
@filter_options
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="ADDR:PORT",
              help="Where to serve /metrics; :PORT or [::]:PORT for every address.")
@click.option("--stages", "stages_spec", default=",".join(DEFAULT_STAGES) or "none", show_default=True, metavar="LIST",
              help="Trace stages to export as histograms (comma-separated), or 'none'.")
@click.option("--max-series", type=bounded_int(1, 100_000, "series per family"), default=DEFAULT_MAX_SERIES,
              show_default=True, metavar="N",
              help="Label sets per metric family; the rest fold into one _other series.")
@click.option("--by-cgroup", is_flag=True,
              help="Also label drops with the receiving socket's cgroup and container (bounded by --max-series).")
@click.option("--duration", type=bounded_float(DURATION_MIN_S, DURATION_MAX_S, "seconds, at most a year"),
              metavar="SECONDS",
              help="Stop after this many seconds (default: until SIGTERM or Ctrl-C).")
@click.pass_context
def export(ctx: click.Context, ifaces: tuple[str, ...], netns_spec: str | None, proto: str | None,
           port: int | None, host: str | None, listen: str, stages_spec: str, max_series: int, by_cgroup: bool,
           duration: float | None) -> None:
    address = parse_listen(listen)
    stages = parse_stages(stages_spec)
    filters = resolve_filters(ifaces, netns_spec, proto, port, host)
    require_capability()
    facts = load_facts()
    if not facts.has_tracepoint(drops_mod.TRACEPOINT):
        raise MissingCapability("this kernel has no skb:kfree_skb tracepoint (needs tracefs mounted)")
    routes = Routes()
    server = bind(*address, routes, listen)
    term = Terminal(json_mode=False)
    try:
        query = DropsQuery(filters, by=EXPORT_BY + (("cgroup",) if by_cgroup else ()))
        drops = factory.drops_session(query, facts)
        trace = factory.trace_session(TraceQuery(filters, stages, napi_by_dev=True), facts) if stages else None
        collector = ExportCollector(drops, trace, max_series)
        ctx.exit(serve(server, routes, collector, term, listen, duration))
    finally:
        server.server_close()


def serve(server: WSGIServer, routes: Routes, collector: ExportCollector, term: Terminal, listen: str,
          duration: float | None) -> int:
    with SignalStop() as stop:
        try:
            starts = collector.start()
            registry = CollectorRegistry(auto_describe=False)
            registry.register(collector)
            routes.metrics = make_wsgi_app(registry)
            attached = sum(len(s.attached) for s in starts)
            unavailable = [u.stage or u.hook for s in starts for u in s.unavailable]
            term.note(f"netpath export: serving http://{listen}/metrics ({attached} hooks attached"
                      + (f"; unavailable: {', '.join(unavailable)}" if unavailable else "") + ")")
            deadline = time.monotonic() + duration if duration else None
            server.timeout = 0.25
            while not stop and (deadline is None or time.monotonic() < deadline):
                server.handle_request()
        finally:
            collector.close()
    term.note(f"netpath export: stopped ({stop.reason or 'duration'}) after {collector.scrapes} scrapes")
    return EXIT_OK
