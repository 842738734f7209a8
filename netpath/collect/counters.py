"""Drop counters that no skb event carries: link stats, softnet, qdisc, SNMP, conntrack.

Each read returns cumulative values; `CounterDeltas` turns them into
per-interval deltas and run totals.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from netpath import netns
from netpath.kernel import linkstats, procnet
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
    """/proc/net/snmp or /proc/net/netstat: the drop-like fields of SNMP_WANTED (kernel/procnet.py parses)."""
    return _wanted_snmp(procnet.parse_snmp(text))


def _wanted_snmp(every: dict[str, int]) -> dict[str, int]:
    return {prefix + name: every[prefix + name] for prefix, names in SNMP_WANTED.items() for name in names
            if prefix + name in every}


def parse_snmp6(text: str) -> dict[str, int]:
    return _only(procnet.parse_snmp6(text), SNMP6_WANTED)


def parse_conntrack(text: str) -> dict[str, int]:
    """/proc/net/stat/nf_conntrack: CONNTRACK_WANTED, summed over CPUs."""
    return _only(procnet.parse_conntrack_stats(text), CONNTRACK_WANTED)


def _only(every: dict[str, int], wanted: Collection[str]) -> dict[str, int]:
    return {k: v for k, v in every.items() if k in wanted}


SOFTNET_WANTED = ("dropped", "time_squeeze", "flow_limit")


def read_netns_counters(ifaces: set[str] | None, token: object = None) -> dict[CounterKey, int]:
    """Everything namespaced, read from inside the namespace this thread is in (`token`: linkstats.current)."""
    return _read_netns(ifaces, token)[0]


def _read_netns(ifaces: set[str] | None, token: object) -> tuple[dict[CounterKey, int], linkstats.Dump]:
    """read_netns_counters, and the link dump it read (the NIC counters name the same devices)."""
    values: dict[CounterKey, int] = {}
    # /proc/net follows the thread-group leader; thread-self follows this thread's setns.
    base = "/proc/thread-self/net" if Path("/proc/thread-self/net").exists() else "/proc/net"
    # always read afresh (each try of an aligned reading is a new instant); the scrape's later readers of
    # these files take this reading (procnet.shared_scrape)
    snmp_all, netstat_all, snmp6_all, conntrack_all = procnet.counter_files(Path(base), fresh=True)
    snmp = _wanted_snmp(snmp_all) | _wanted_snmp(netstat_all)
    snmp |= _only(snmp6_all, SNMP6_WANTED)
    for name, value in snmp.items():
        values[("snmp", name, None, None)] = value
    for name, value in _only(conntrack_all, CONNTRACK_WANTED).items():  # empty: no nf_conntrack
        values[("conntrack", name, None, None)] = value
    dump = linkstats.current(token)
    names = {link.index: link.name for link in dump.links}
    for link in dump.links:
        if ifaces and link.name not in ifaces:
            continue
        for key, label in LINK_STATS.items():
            if key in link.stats:
                values[("link", label, link.name, None)] = link.stats[key]
    for q in dump.qdiscs:
        ifname = names.get(q.index, str(q.index))
        if q.drops is None or (ifaces and ifname not in ifaces):
            continue
        values[("qdisc", f"{q.kind} {q.handle >> 16:x}:{q.handle & 0xFFFF:x} drops", ifname, None)] = q.drops
    return values, dump


def read_all(ns: netns.Netns | None, ifaces: set[str] | None, token: object = None) -> dict[CounterKey, int]:
    """Every counter; `token` (the drops program's kfree_skb hits) lets an unchanged link dump be reused
    (kernel/linkstats.py says when that is exact). Without one, the readers here share one fresh dump."""
    from netpath.collect import nic_counters  # NIC driver counters: ethtool -S, qstats, XDP

    token = object() if token is None else token

    def inside() -> dict[CounterKey, int]:
        values, dump = _read_netns(ifaces, token)
        return values | nic_counters.read_nic_counters(ifaces, token, dump)

    values = netns.run_in(ns, inside)
    for cpu, cols in procnet.parse_softnet(procnet.read_text(Path("/proc/net/softnet_stat"))).items():
        for name in SOFTNET_WANTED:
            if name in cols:
                values[("softnet", name, None, cpu)] = cols[name]
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
