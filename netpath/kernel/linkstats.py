"""This namespace's links and qdiscs from one rtnetlink dump each, read again only when something changed.

Every scrape of `netpath export` wants the link error counters, the qdisc drops and the device names
(three readers asked rtnetlink for the same link dump each time: ~3 ms of netlink per scrape here). A
dump is reused while both of these stand still:
- /proc/net/dev's error columns (rx errs/drop/fifo/frame, tx errs/drop/fifo/colls/carrier) and device
  list: every link counter netpath reports is summed into one of them (rx_dropped and rx_missed_errors
  into rx drop; rx_over, rx_crc, rx_frame and rx_length_errors into frame: net/core/net-procfs.c,
  dev_seq_printf_stats), except rx_nohandler;
- the caller's token: the drops program's count of kfree_skb hits. rx_nohandler is counted where
  __netif_receive_skb_core frees the skb (kfree_skb_reason, UNHANDLED_PROTO) and a qdisc drop frees its
  skb too (__qdisc_drop, freed by kfree_skb_list), so neither moves without a hit.
A caller without a token (None) gets a fresh dump, shared only within one read (`ReadScope`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netpath import untrusted


@dataclass
class Link:
    index: int
    name: str  # in the untrusted-name form
    raw: str | None  # the name as text for ethtool's ioctl, when it is UTF-8
    stats: dict[str, int]
    xdp: bool
    carrier_changes: int | None = None  # IFLA_CARRIER_CHANGES (the doctor's link-flap evidence)


@dataclass
class Qdisc:
    index: int
    kind: str
    handle: int
    drops: int | None


@dataclass
class Dump:
    links: list[Link] = field(default_factory=list)
    qdiscs: list[Qdisc] = field(default_factory=list)


def proc_net() -> Path:
    # /proc/net follows the thread-group leader's namespace; thread-self follows this thread's setns
    return Path("/proc/thread-self/net") if Path("/proc/thread-self/net").exists() else Path("/proc/net")


DEV_COLUMNS = ("rx_bytes", "rx_packets", "rx_errs", "rx_drop", "rx_fifo", "rx_frame", "rx_compressed",
               "rx_multicast", "tx_bytes", "tx_packets", "tx_errs", "tx_drop", "tx_fifo", "tx_colls",
               "tx_carrier", "tx_compressed")
_ERROR_COLUMNS = tuple(i for i, c in enumerate(DEV_COLUMNS) if not c.endswith(("bytes", "packets", "multicast",
                                                                                 "compressed")))


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/dev: device name -> its columns (two header lines, then `name: 16 numbers`)."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")  # a device name cannot hold ':' (dev_valid_name)
        fields = rest.split()
        if not sep or len(fields) < len(DEV_COLUMNS):
            continue
        try:
            out[name.strip()] = dict(zip(DEV_COLUMNS, (int(f) for f in fields), strict=False))
        except ValueError:
            continue
    return out


def net_dev() -> dict[str, dict[str, int]]:
    try:
        return parse_net_dev((proc_net() / "dev").read_bytes().decode(errors="replace"))
    except OSError:
        return {}


def signature(devs: dict[str, dict[str, int]]) -> tuple[Any, ...]:
    return tuple((name, tuple(cols[DEV_COLUMNS[i]] for i in _ERROR_COLUMNS)) for name, cols in sorted(devs.items()))


def _netns_inode() -> int:
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return 0


# the IFLA_STATS64 members anyone reads: the rx error counters (collect/counters.py) and rx_packets
STATS = ("rx_packets", "rx_dropped", "rx_missed_errors", "rx_fifo_errors", "rx_over_errors", "rx_crc_errors",
         "rx_frame_errors", "rx_length_errors", "rx_nohandler")
# netns inode -> (signature, token, monotonic time taken, dump)
_CACHE: dict[int, tuple[tuple[Any, ...], object, float, Dump]] = {}
DUMPS = [0]  # rtnetlink link+qdisc dumps made by this process (the bench counts them)


def current(token: object, fresh_within: float = 0.0) -> Dump:
    """The links and qdiscs of this thread's namespace: the cached dump when neither /proc/net/dev's error
    columns nor `token` moved since it was taken, or when it is at most `fresh_within` seconds old (a
    reader of packet or carrier counts in the same scrape); else a new one."""
    ino = _netns_inode()
    cached = _CACHE.get(ino)
    now = time.monotonic()
    if cached is not None and fresh_within > 0 and now - cached[2] <= fresh_within:
        return cached[3]
    sig = signature(net_dev())
    if token is not None and cached is not None and cached[0] == sig and cached[1] == token:
        return cached[3]
    dump = _dump()
    _CACHE[ino] = (sig, token, now, dump)
    return dump


def _dump() -> Dump:
    from netpath.kernel import rtnl  # a plain netlink socket: importing pyroute2 would cost ~80 ms per start

    DUMPS[0] += 1
    out = Dump()
    for link in rtnl.links():
        out.links.append(Link(link.index, untrusted.name(link.name), link.name if isinstance(link.name, str) else None,
                              {k: link.stats[k] for k in STATS if k in link.stats}, link.xdp_attached,
                              link.carrier_changes))
    for q in rtnl.qdiscs():
        out.qdiscs.append(Qdisc(q.index, q.kind, q.handle, q.drops))
    return out
