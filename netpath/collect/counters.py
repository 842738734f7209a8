"""Drop counters that no skb event carries: link stats, softnet, qdisc, SNMP, conntrack.

Each read returns cumulative values; `CounterDeltas` turns them into
per-interval deltas and run totals.
"""

from __future__ import annotations

from pathlib import Path

from netpath import netns, untrusted
from netpath.kernel.softnet import parse_softnet
from netpath.model import Counter

CounterKey = tuple[str, str, str | None, int | None]  # source, name, iface, cpu

LINK_STATS = {
    "rx_dropped": "rx_dropped",
    "rx_missed_errors": "rx_missed",
    "rx_fifo_errors": "rx_fifo",
    "rx_over_errors": "rx_over",
    "rx_crc_errors": "rx_crc",
    "rx_frame_errors": "rx_frame",
    "rx_length_errors": "rx_length",
    "rx_nohandler": "rx_nohandler",
}

SNMP_WANTED = {
    "Ip": ("InHdrErrors", "InAddrErrors", "InUnknownProtos", "InDiscards"),
    "Udp": ("InErrors", "NoPorts", "RcvbufErrors", "InCsumErrors", "MemErrors"),
    "TcpExt": (
        "ListenDrops",
        "ListenOverflows",
        "TCPBacklogDrop",
        "TCPRcvQDrop",
        "TCPZeroWindowDrop",
        "PFMemallocDrop",
        "TCPMinTTLDrop",
        "TCPOFODrop",
    ),
    "IpExt": ("InNoRoutes", "InCsumErrors"),
}
SNMP6_WANTED = (
    "Ip6InHdrErrors",
    "Ip6InAddrErrors",
    "Ip6InNoRoutes",
    "Ip6InDiscards",
    "Udp6InErrors",
    "Udp6NoPorts",
    "Udp6RcvbufErrors",
    "Udp6InCsumErrors",
)
# /proc/net/stat/nf_conntrack (per namespace, one hex row per CPU): what conntrack refused or lost. A full
# table (drop, early_drop) otherwise looks like a rule's NETFILTER_DROP at nf_hook_slow.
CONNTRACK_WANTED = ("invalid", "insert_failed", "drop", "early_drop", "chaintoolong")
# counters that count no dropped packet (time_squeeze: a softirq ran out of budget or time)
NOT_DROPS = frozenset({("softnet", "time_squeeze")})


def parse_snmp(text: str) -> dict[str, int]:
    """/proc/net/snmp and /proc/net/netstat: header/value line pairs -> nstat-style names."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        prefix, _, names = header.partition(":")
        vprefix, _, nums = values.partition(":")
        if prefix != vprefix or prefix not in SNMP_WANTED:
            continue
        wanted = SNMP_WANTED[prefix]
        for name, num in zip(names.split(), nums.split(), strict=False):
            if name in wanted:
                out[prefix + name] = int(num)
    return out


def parse_snmp6(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in SNMP6_WANTED:
            out[parts[0]] = int(parts[1])
    return out


def parse_conntrack(text: str) -> dict[str, int]:
    """/proc/net/stat/nf_conntrack: a header of names, then one row of hex values per CPU, summed."""
    lines = text.splitlines()
    if not lines:
        return {}
    names = lines[0].split()
    out = dict.fromkeys((n for n in names if n in CONNTRACK_WANTED), 0)
    for line in lines[1:]:
        for name, value in zip(names, line.split(), strict=False):
            if name in out:
                out[name] += int(value, 16)
    return out


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def read_netns_counters(ifaces: set[str] | None) -> dict[CounterKey, int]:
    """Everything namespaced, read from inside the namespace this thread is in."""
    values: dict[CounterKey, int] = {}
    # /proc/net follows the thread-group leader; thread-self follows this thread's setns.
    base = "/proc/thread-self/net" if Path("/proc/thread-self/net").exists() else "/proc/net"
    snmp = parse_snmp(_read(f"{base}/snmp")) | parse_snmp(_read(f"{base}/netstat"))
    snmp |= parse_snmp6(_read(f"{base}/snmp6"))
    for name, value in snmp.items():
        values[("snmp", name, None, None)] = value
    for name, value in parse_conntrack(_read(f"{base}/stat/nf_conntrack")).items():  # absent: no nf_conntrack
        values[("conntrack", name, None, None)] = value
    from netpath.kernel import rtnl  # a plain netlink socket: pyroute2's import would double the start

    names: dict[int, str] = {}
    for link in rtnl.links():
        ifname = untrusted.name(link.name)  # str, or bytes when not UTF-8
        names[link.index] = ifname
        if ifaces and ifname not in ifaces:
            continue
        for key, label in LINK_STATS.items():
            if key in link.stats:
                values[("link", label, ifname, None)] = link.stats[key]
    for qdisc in rtnl.qdiscs():
        ifname = names.get(qdisc.index, str(qdisc.index))
        if (ifaces and ifname not in ifaces) or qdisc.drops is None:
            continue
        handle = qdisc.handle
        label = f"{qdisc.kind} {handle >> 16:x}:{handle & 0xFFFF:x} drops"
        values[("qdisc", label, ifname, None)] = qdisc.drops
    return values


def read_all(ns: netns.Netns | None, ifaces: set[str] | None) -> dict[CounterKey, int]:
    from netpath.collect import nic_counters  # NIC driver counters: ethtool -S, qstats, XDP

    values = netns.run_in(ns, lambda: read_netns_counters(ifaces) | nic_counters.read_nic_counters(ifaces))
    for cpu, cols in parse_softnet(_read("/proc/net/softnet_stat")).items():
        for name, value in cols.items():
            values[("softnet", name, None, cpu)] = value
    return values


class CounterDeltas:
    def __init__(self, first: dict[CounterKey, int]) -> None:
        self._start = dict(first)
        self._last = dict(first)

    def step(self, now: dict[CounterKey, int]) -> list[Counter]:
        out = _diff(self._last, now)
        self._last = dict(now)
        return out

    def totals(self) -> list[Counter]:
        return _diff(self._start, self._last)


def _diff(before: dict[CounterKey, int], after: dict[CounterKey, int]) -> list[Counter]:
    out = []
    for key, value in after.items():
        delta = value - before.get(key, value)
        if delta > 0:
            source, name, iface, cpu = key
            out.append(Counter(source, name, delta, iface, cpu))
    return sorted(out, key=_order)


def _order(c: Counter) -> tuple[int, str, str, int]:
    rank = {"link": 0, "ethtool": 0, "xdp": 0, "qstats": 0, "qdisc": 1, "softnet": 2, "snmp": 3, "conntrack": 4}
    return rank.get(c.source, 9), c.iface or "", c.name, c.cpu if c.cpu is not None else -1



def counter_only(counters: list[Counter], events: int) -> list[Counter]:
    """The drop counters that rose in a window where no drop event matched: packets the kernel refused
    without freeing them with a reason (a SYN at a full accept queue is consumed: ListenOverflows and
    ListenDrops rise, kfree_skb never fires), or drops outside the filters. Empty when events matched."""
    if events:
        return []
    return [c for c in counters if c.count > 0 and (c.source, c.name) not in NOT_DROPS]
