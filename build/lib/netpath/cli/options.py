"""Options shared by every command, and their validation into typed values.

Every numeric option has a finite range, checked by click while it parses the
command line, so a bad number is exit 2 before anything is loaded. The bounds
and the reason for each live here, next to the option that uses them.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Sequence
from typing import Any

import click

from netpath import links, netns
from netpath.errors import BadInput
from netpath.filter_defines import IFACE_FILTER_CAPACITY
from netpath.query import Filters
from netpath.thresholds import LONGEST_S

F = Callable[..., Any]

# Below 0.1 s a report costs more (map reads, rendering) than it shows; above an hour a live view
# would show nothing for too long: the length of a run is --duration's job.
INTERVAL_MIN_S = 0.1
INTERVAL_MAX_S = 3600.0
# Up to a year (thresholds.LONGEST_S): times are integer ns in JSON and stay far inside int64;
# longer than that is "until stopped", which is what leaving out --duration means.
DURATION_MIN_S = 0.1
DURATION_MAX_S = float(LONGEST_S)
# As many reports as fit in the longest run at the shortest interval.
COUNT_MAX = int(LONGEST_S / INTERVAL_MIN_S)
# Counts are u64 sums in the kernel and JSON integers out of it; consumers hold them as int64.
COUNT_THRESHOLD_MAX = 2**63 - 1
PORT_MIN, PORT_MAX = 1, 65535  # port 0 is never on the wire


class Bounded(click.ParamType):
    """A finite int or float in [lo, hi]; the error names the value as the user typed it."""

    def __init__(self, kind: type, lo: float, hi: float, why: str = "") -> None:
        self.kind = kind
        self.lo = lo
        self.hi = hi
        self.why = why
        self.name = "integer" if kind is int else "number"

    def _number(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | float:
        try:
            number = self.kind(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            self.fail(f"{value!r} is not a valid {self.name}", param, ctx)
        if isinstance(number, float) and not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | float:
        if isinstance(value, int | float) and isinstance(value, self.kind) and not isinstance(value, bool) \
                and self.lo <= value <= self.hi:
            return value  # a default, already in range
        number = self._number(value, param, ctx)
        if not self.lo <= number <= self.hi:
            why = f" ({self.why})" if self.why else ""
            self.fail(f"{value!r} is not in the range {self._fmt(self.lo)}..{self._fmt(self.hi)}{why}", param, ctx)
        return number

    @staticmethod
    def _fmt(bound: float) -> str:
        return str(int(bound)) if float(bound).is_integer() else str(bound)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str | None:
        return None


def bounded_int(lo: int, hi: int, why: str = "") -> Bounded:
    return Bounded(int, lo, hi, why)


def bounded_float(lo: float, hi: float, why: str = "") -> Bounded:
    return Bounded(float, lo, hi, why)


FILTER_OPTIONS = [
    click.option("--iface", "ifaces", multiple=True, metavar="NAME",
                 help=f"Only packets on this interface (repeatable, up to {IFACE_FILTER_CAPACITY}). "
                      "Resolved in --netns when given."),
    click.option("--netns", "netns_spec", metavar="NAME|PATH|PID",
                 help="Only packets in this network namespace: an 'ip netns' name, a netns file, or a PID."),
    click.option("--proto", type=click.Choice(["tcp", "udp", "icmp"]), help="Only this IP protocol."),
    click.option("--port", type=bounded_int(PORT_MIN, PORT_MAX), metavar="N",
                 help="Only packets with this source or destination port."),
    click.option("--host", metavar="ADDR", help="Only packets from or to this IPv4/IPv6 address."),
]
RUN_OPTIONS = [
    click.option("--interval", type=bounded_float(INTERVAL_MIN_S, INTERVAL_MAX_S, "seconds"), default=1.0,
                 show_default=True, metavar="SECONDS", help="Seconds between reports (0.1 to 3600)."),
    click.option("--duration", type=bounded_float(DURATION_MIN_S, DURATION_MAX_S,
                                                  "seconds, at most a year; leave it out to run until stopped"),
                 metavar="SECONDS", help="Stop after this many seconds (default: run until Ctrl-C)."),
    click.option("--count", type=bounded_int(1, COUNT_MAX, "reports"), metavar="N",
                 help="Stop after N reports."),
    click.option("--json", "json_mode", is_flag=True, help="JSON Lines on stdout (schema netpath/1)."),
    click.option("--ebpf", is_flag=True, hidden=True, help="Print the BPF C and cflags, then exit."),
]


def _apply(fn: F, decorators: Sequence[Callable[[F], F]]) -> F:
    for deco in reversed(decorators):
        fn = deco(fn)
    return fn


def filter_options(fn: F) -> F:
    """--iface/--netns/--proto/--port/--host: what every collecting command can narrow to."""
    return _apply(fn, FILTER_OPTIONS)


def common_options(fn: F) -> F:
    """The filters plus the interval/duration/count/json options of the reporting commands."""
    return _apply(fn, FILTER_OPTIONS + RUN_OPTIONS)


def parse_stages(value: str, option: str = "--stages", none_means: str = "") -> tuple[str, ...]:
    """A comma-separated list of stage ids; 'all' for every stage, 'packet' for the per-packet ones; 'none'
    (when none_means says what that is)."""
    from netpath.stages import PACKET_STAGES, STAGE_IDS

    word = value.strip().lower()
    if word == "all":
        return STAGE_IDS
    if word == "packet":
        return PACKET_STAGES
    if word == "none" and none_means:
        return ()
    extra = ", 'all', 'packet'" + (f", or 'none' for {none_means}" if none_means else "")
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    if not names:
        raise BadInput(f"empty {option}: give stage names{extra}")
    for name in names:
        if name not in STAGE_IDS:
            raise BadInput(f"bad {option} value {name!r}: choose from {', '.join(STAGE_IDS)}{extra}")
    return tuple(s for s in STAGE_IDS if s in names)  # path order, each once


def parse_sample(value: int, limit: int) -> int:
    """--sample N, already within 1..limit (bounded_int): 1 (time every one) or a power of two."""
    if value & (value - 1):
        raise BadInput(f"bad --sample {value}: use 1 (time every packet) or a power of two up to {limit}")
    return value


def parse_host(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if value is None:
        return None
    try:
        return ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        raise BadInput(f"bad address {value!r}: expected an IPv4 or IPv6 address") from None


def check_iface_count(ifaces: tuple[str, ...]) -> None:
    """The BPF device filter is a map of IFACE_FILTER_CAPACITY entries: more names cannot all be held."""
    distinct = list(dict.fromkeys(ifaces))
    if len(distinct) > IFACE_FILTER_CAPACITY:
        raise BadInput(f"too many --iface values: {len(distinct)} interfaces, the filter holds at most "
                       f"{IFACE_FILTER_CAPACITY} (first one over: {distinct[IFACE_FILTER_CAPACITY]!r})")


def resolve_filters(ifaces: tuple[str, ...], netns_spec: str | None, proto: str | None, port: int | None,
                    host: str | None, cgroup_id: int | None = None) -> Filters:
    """Validate everything the user named against this machine (unknown names -> exit 2), once."""
    ns = netns.resolve(netns_spec) if netns_spec is not None else None
    addr = parse_host(host)
    check_iface_count(ifaces)
    keys = []
    for name in dict.fromkeys(ifaces):
        index = links.ifindex_of(name, ns)
        inode = ns.inode if ns else netns.current().inode
        keys.append((inode, index))
    return Filters(ns, tuple(dict.fromkeys(ifaces)), tuple(keys), proto, port, addr, cgroup_id)
