"""Options shared by every command, and their validation into typed values."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from netpath import links, netns
from netpath.errors import BadInput

F = Callable[..., Any]


FILTER_OPTIONS = [
    click.option("--iface", "ifaces", multiple=True, metavar="NAME",
                 help="Only packets on this interface (repeatable). Resolved in --netns when given."),
    click.option("--netns", "netns_spec", metavar="NAME|PATH|PID",
                 help="Only packets in this network namespace: an 'ip netns' name, a netns file, or a PID."),
    click.option("--proto", type=click.Choice(["tcp", "udp", "icmp"]), help="Only this IP protocol."),
    click.option("--port", type=click.IntRange(1, 65535), metavar="N",
                 help="Only packets with this source or destination port."),
    click.option("--host", metavar="ADDR", help="Only packets from or to this IPv4/IPv6 address."),
]
RUN_OPTIONS = [
    click.option("--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True,
                 metavar="SECONDS", help="Seconds between reports."),
    click.option("--duration", type=click.FloatRange(0.1, None), metavar="SECONDS",
                 help="Stop after this many seconds (default: run until Ctrl-C)."),
    click.option("--count", type=click.IntRange(1, None), metavar="N", help="Stop after N reports."),
    click.option("--json", "json_mode", is_flag=True, help="JSON Lines on stdout (schema netpath/1)."),
    click.option("--ebpf", is_flag=True, hidden=True, help="Print the BPF C and cflags, then exit."),
]


def _apply(fn: F, decorators: list[Callable[[F], F]]) -> F:
    for deco in reversed(decorators):
        fn = deco(fn)
    return fn


def filter_options(fn: F) -> F:
    """--iface/--netns/--proto/--port/--host: what every collecting command can narrow to."""
    return _apply(fn, FILTER_OPTIONS)


def common_options(fn: F) -> F:
    """The filters plus the interval/duration/count/json options of the reporting commands."""
    return _apply(fn, FILTER_OPTIONS + RUN_OPTIONS)


@dataclass
class Filters:
    netns: netns.Netns | None = None
    ifaces: list[str] = field(default_factory=list)
    iface_keys: list[tuple[int, int]] = field(default_factory=list)
    proto: str | None = None
    port: int | None = None
    host: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None


def parse_host(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if value is None:
        return None
    try:
        return ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        raise BadInput(f"bad address {value!r}: expected an IPv4 or IPv6 address") from None


def resolve_filters(ifaces: tuple[str, ...], netns_spec: str | None, proto: str | None, port: int | None,
                    host: str | None) -> Filters:
    """Validate everything the user named against this machine (unknown names -> exit 2)."""
    ns = netns.resolve(netns_spec) if netns_spec else None
    addr = parse_host(host)
    keys = []
    for name in ifaces:
        index = links.ifindex_of(name, ns)
        inode = ns.inode if ns else netns.current().inode
        keys.append((inode, index))
    return Filters(ns, list(ifaces), keys, proto, port, addr)
