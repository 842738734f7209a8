"""NIC counters that no skb carries: the driver's ethtool statistics (per queue), the netdev
netlink family's per-queue stats (qstats) and XDP's own drops.

Everything here returns cumulative values keyed like `counters.read_all` (source, name, iface,
cpu) and is read from inside the namespace the calling thread is in, so `counters.read_all`
runs it under `netns.run_in` next to the link stats. Three sources:

- ``ethtool``: drop/error-like driver statistics (``ethtool -S``), per queue where the driver
  keeps them per queue; read with the SIOCETHTOOL ioctl.
- ``xdp``: the driver's XDP drop counters (XDP drops happen before an skb exists, so
  skb:kfree_skb never sees them) and ``xdp_exception``, the hits of the xdp:xdp_exception
  tracepoint (a program returned XDP_ABORTED or an action the driver cannot do), counted by
  perf counters on that tracepoint, one per CPU and interface that carries an XDP program.
- ``qstats``: the drop/error-like members of the netdev family's qstats-get (Linux 6.9+), per
  queue.

Only drop/error-like counters are kept: the drops table lists what moved, and packet/byte
counts there would bury the drops.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netpath.kernel import linkstats

CounterKey = tuple[str, str, str | None, int | None]

# ethtool -S names that count lost or refused packets (not packets, bytes, kicks or wakeups).
_DROPLIKE = re.compile(
    r"drop|discard|err|miss|fifo|overrun|over_|timeout|fail|abort|exception|no_?buf|crc|bad|reject|"
    r"invalid|oversize|undersize|jabber|frag|no_dma|out_of_buffer|allowance_exceeded",
    re.IGNORECASE,
)
# virtio_net names a queue rx0_/tx0_ (6.12) or rx_queue_0_/tx_queue_0_ (6.1); mlx5 rx0_, ixgbe
# rx_queue_0_, ice rx_queue_0., bnxt [0]: all keep the queue in the name, which stays as it is.
_XDP = re.compile(r"xdp", re.IGNORECASE)


_AGGREGATE = re.compile(r"^(rx|tx)_(.+)$")
_PER_QUEUE = re.compile(r"^(rx|tx)\d+_(.+)$")


def classify_ethtool(iface: str, stats: Iterable[tuple[str, int]]) -> dict[CounterKey, int]:
    """ethtool -S (name, value) pairs -> the drop/error-like counters, XDP ones under `xdp`.

    A device-wide total (virtio_net's rx_drops) is left out when the driver also gives it per
    queue (rx0_drops, rx1_drops): the queues say the same, and where."""
    pairs = list(stats)
    names = tuple(n for n, _ in pairs)
    kept = _KEPT.get(names)
    if kept is None:
        kept = _KEPT[names] = _kept(names)
    return {(source, names[i], iface, None): int(pairs[i][1]) for i, source in kept}


# a driver's statistic names -> which of them classify_ethtool keeps, and as what: the same names are read for
# each device at every scrape, and a pure function of them need not run its regular expressions again
_KEPT: dict[tuple[str, ...], tuple[tuple[int, str], ...]] = {}


def _kept(names: tuple[str, ...]) -> tuple[tuple[int, str], ...]:
    if len(_KEPT) > 64:  # drivers (and queue counts) on one host: a handful
        _KEPT.clear()
    per_queue = {(m.group(1), m.group(2)) for m in (_PER_QUEUE.match(n) for n in names) if m}
    out = []
    for i, name in enumerate(names):
        if not _DROPLIKE.search(name):
            continue
        agg = _AGGREGATE.match(name)
        if agg and (agg.group(1), agg.group(2)) in per_queue:
            continue
        out.append((i, "xdp" if _XDP.search(name) else "ethtool"))
    return tuple(out)


def parse_ethtool_text(text: str) -> list[tuple[str, int]]:
    """`ethtool -S IFACE` output -> (name, value) pairs, in order (for fixtures and comparisons)."""
    pairs = []
    for line in text.splitlines():
        name, sep, value = line.strip().rpartition(":")
        if sep and name and value.strip().isdigit():
            pairs.append((name.strip(), int(value)))
    return pairs


SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS, ETHTOOL_GSTATS, ETHTOOL_GSSET_INFO = 0x1B, 0x1D, 0x37
ETH_SS_STATS = 1
ETH_GSTRING_LEN = 32


def ethtool_stats(iface: str) -> list[tuple[str, int]] | None:
    """The driver's statistics for `iface`, or None when it has none (virtual devices, lo): the SIOCETHTOOL
    ioctl's GSSET_INFO, GSTRINGS and GSTATS (include/uapi/linux/ethtool.h), on a plain socket."""
    name = iface.encode()
    if not name or len(name) >= 16:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        def call(buf: ctypes.Array[ctypes.c_char]) -> None:
            ifreq = struct.pack("16sP", name, ctypes.addressof(buf))  # struct ifreq: name, ifr_data
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)

        try:
            info = ctypes.create_string_buffer(struct.pack("=IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_STATS, 0))
            call(info)
            mask, count = struct.unpack_from("=QI", info.raw, 8)
            if not mask & (1 << ETH_SS_STATS) or count == 0:
                return None
            strings = ctypes.create_string_buffer(struct.pack("=III", ETHTOOL_GSTRINGS, ETH_SS_STATS, count)
                                                  + bytes(count * ETH_GSTRING_LEN))
            call(strings)
            stats = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_GSTATS, count) + bytes(count * 8))
            call(stats)
        except OSError:  # EOPNOTSUPP, ENODEV: no driver statistics here
            return None
    names = [strings.raw[12 + i * ETH_GSTRING_LEN:12 + (i + 1) * ETH_GSTRING_LEN].split(b"\0", 1)[0]
             .decode(errors="replace") for i in range(count)]
    values = struct.unpack_from(f"={count}Q", stats.raw, 8)
    return list(zip(names, values, strict=True))


# --- qstats: the netdev generic netlink family (Documentation/netlink/specs/netdev.yaml) ---

NETDEV_CMD_QSTATS_GET = 12
NETDEV_A_QSTATS_SCOPE = 4
NETDEV_QSTATS_SCOPE_QUEUE = 1
# attribute number -> name in the spec, for NETDEV_A_QSTATS_* from 1
QSTATS_ATTRS = {
    1: "ifindex", 2: "queue-type", 3: "queue-id", 4: "scope",
    8: "rx-packets", 9: "rx-bytes", 10: "tx-packets", 11: "tx-bytes",
    12: "rx-alloc-fail", 13: "rx-hw-drops", 14: "rx-hw-drop-overruns", 15: "rx-csum-complete",
    16: "rx-csum-unnecessary", 17: "rx-csum-none", 18: "rx-csum-bad", 19: "rx-hw-gro-packets",
    20: "rx-hw-gro-bytes", 21: "rx-hw-gro-wire-packets", 22: "rx-hw-gro-wire-bytes",
    23: "rx-hw-drop-ratelimits", 24: "tx-hw-drops", 25: "tx-hw-drop-errors", 26: "tx-csum-none",
    27: "tx-needs-csum", 28: "tx-hw-gso-packets", 29: "tx-hw-gso-bytes", 30: "tx-hw-gso-wire-packets",
    31: "tx-hw-gso-wire-bytes", 32: "tx-hw-drop-ratelimits", 33: "tx-stop", 34: "tx-wake",
}
QSTATS_DROPLIKE = ("rx-alloc-fail", "rx-hw-drops", "rx-hw-drop-overruns", "rx-csum-bad", "rx-hw-drop-ratelimits",
                   "tx-hw-drops", "tx-hw-drop-errors", "tx-hw-drop-ratelimits")
QUEUE_TYPES = {0: "rx", 1: "tx"}


@dataclass(frozen=True)
class QueueStats:
    ifindex: int
    queue: str  # rx0, tx1
    stats: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Qstats:
    """One qstats-get dump: per-queue stats, or why there are none on this kernel."""

    available: bool
    reason: str
    queues: list[QueueStats] = field(default_factory=list)


def parse_qstats_message(msg: object) -> QueueStats | None:
    """One decoded qstats-get reply -> QueueStats (None if it names no queue)."""
    values: dict[str, int] = {}
    for attr, value in msg.get("attrs", []):  # type: ignore[attr-defined]
        if not attr.startswith("NETDEV_A_QSTATS_"):
            continue
        name = attr[len("NETDEV_A_QSTATS_"):].lower().replace("_", "-")
        if isinstance(value, bytes | bytearray):
            if len(value) in (4, 8):
                values[name] = int.from_bytes(value, "little")
        elif isinstance(value, int):
            values[name] = value
    if "ifindex" not in values or "queue-type" not in values:
        return None
    qtype = QUEUE_TYPES.get(values.pop("queue-type"), "q")
    queue = f"{qtype}{values.pop('queue-id', 0)}"
    ifindex = values.pop("ifindex")
    values.pop("scope", None)
    return QueueStats(ifindex, queue, values)


def decode_qstats_raw(raw: bytes) -> list[dict[str, list[tuple[str, int | bytes]]]]:
    """Raw netlink replies (as read, or captured into fixtures) -> messages as parse_qstats_message takes
    them: the attributes after the genl header by the spec's names; ifindex, queue type and id, and scope
    are u32, the stats the spec's variable-width `uint` (4 or 8 bytes), kept as bytes."""
    from netpath.kernel import rtnl

    out = []
    for _kind, body in rtnl.split(raw):
        pairs: list[tuple[str, int | bytes]] = []
        for num, value in rtnl.attrs(body, 4):
            name = QSTATS_ATTRS.get(num)
            if name is None:
                continue
            attr = "NETDEV_A_QSTATS_" + name.upper().replace("-", "_")
            if num <= 4 and len(value) >= 4:
                pairs.append((attr, struct.unpack_from("=I", value)[0]))
            else:
                pairs.append((attr, value))
        out.append({"attrs": pairs})
    return out


def qstats_from_messages(msgs: Iterable[object]) -> Qstats:
    queues = [q for q in (parse_qstats_message(m) for m in msgs) if q is not None]
    return Qstats(True, "netdev qstats-get", queues)


def _qstats_error(code: int) -> str:
    if code in (errno.EOPNOTSUPP, errno.EINVAL):
        return f"the netdev family has no qstats-get here (Linux 6.9+): {os.strerror(code)}"
    return f"qstats-get failed: {os.strerror(code)}"


# the netdev family's id, resolved once (the family is built in, net/core/netdev-genl.c, so its id is fixed
# from boot; the lookup cost a netlink socket and a round trip on every scrape): None until asked
_NETDEV_FAMILY: list[int | None] = []


def _netdev_family(fresh: bool = False) -> int | None:
    from netpath.kernel import rtnl

    if fresh or not _NETDEV_FAMILY:
        _NETDEV_FAMILY[:] = [rtnl.genl_family("netdev")]
    return _NETDEV_FAMILY[0]


def read_qstats(raw_out: list[bytes] | None = None) -> Qstats:
    """qstats-get, scope queue, for every device of this namespace that reports queue stats.
    `raw_out` collects the raw replies (fixture capture). A dump refused under the cached family id asks
    for the id again and, when it changed (the family went and came back), dumps once more."""
    family = _netdev_family()
    qs = _qstats_dump(family, raw_out)
    if family is not None and qs.available:
        return qs
    again = _netdev_family(fresh=True)
    return qs if again == family else _qstats_dump(again, raw_out)


def _qstats_dump(family: int | None, raw_out: list[bytes] | None) -> Qstats:
    from netpath.kernel import rtnl

    if family is None:
        return Qstats(False, "the kernel has no netdev netlink family (Linux 6.3+), so no qstats")
    nla = struct.pack("=HHI", 8, NETDEV_A_QSTATS_SCOPE, NETDEV_QSTATS_SCOPE_QUEUE)
    try:
        replies = rtnl.genl_dump(family, NETDEV_CMD_QSTATS_GET, 1, nla)
        msgs = [r for r in replies if struct.unpack_from("=H", r, 4)[0] == family]
        for r in replies:
            list(rtnl.split(r))  # an error reply raises here
    except OSError as exc:
        return Qstats(False, _qstats_error(exc.errno or errno.EIO))
    if raw_out is not None:
        raw_out.extend(msgs)
    return qstats_from_messages(decode_qstats_raw(b"".join(msgs)))


def qstats_counters(qs: Qstats, names: dict[int, str], ifaces: set[str] | None) -> dict[CounterKey, int]:
    out: dict[CounterKey, int] = {}
    for q in qs.queues:
        iface = names.get(q.ifindex, str(q.ifindex))
        if ifaces and iface not in ifaces:
            continue
        for stat, value in q.stats.items():
            if stat in QSTATS_DROPLIKE:
                out[("qstats", f"{q.queue} {stat}", iface, None)] = value
    return out


# --- xdp:xdp_exception, counted by perf counters (no BPF program, no compile) ---

PERF_TYPE_TRACEPOINT = 2
PERF_EVENT_IOC_SET_FILTER = 0x40082406
PERF_EVENT_IOC_ENABLE = 0x2400
_SYS_PERF_EVENT_OPEN = 298  # x86_64


class _PerfAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("rest", ctypes.c_uint8 * 96)]


def _tracepoint_id(tracefs: Path, category: str, name: str) -> int | None:
    try:
        return int((tracefs / "events" / category / name / "id").read_text())
    except (OSError, ValueError):
        return None


def _tracefs() -> Path:
    for p in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing")):
        try:
            if (p / "events").is_dir():
                return p
        except OSError:  # root's (0700): an unprivileged `netpath probes` shows what else it can read
            continue
    return Path("/sys/kernel/tracing")


_LIBC: list[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL:
    """The C library's handle, made once (building a CDLL costs a dlopen and a lookup table)."""
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


class XdpExceptions:
    """Perf counters on xdp:xdp_exception filtered to one interface each (by ifindex, which the
    tracepoint carries), summed over CPUs. Opened for the interfaces that carry an XDP program
    when counting starts: an exception needs a program."""

    def __init__(self) -> None:
        self.fds: dict[str, list[int]] = {}
        self.reason = ""

    def open(self, ifaces: dict[str, int]) -> None:
        new = {iface: ifindex for iface, ifindex in ifaces.items() if iface not in self.fds}
        if not new:  # every scrape calls this: nothing to open costs nothing
            return
        tp = _tracepoint_id(_tracefs(), "xdp", "xdp_exception")
        if tp is None:
            self.reason = "no xdp:xdp_exception tracepoint readable in tracefs"
            return
        libc = _libc()
        for iface, ifindex in new.items():
            fds = []
            for cpu in range(os.cpu_count() or 1):
                attr = _PerfAttr(type=PERF_TYPE_TRACEPOINT, size=ctypes.sizeof(_PerfAttr), config=tp,
                                 sample_period=1, flags=1)  # disabled until the filter is set
                fd = libc.syscall(_SYS_PERF_EVENT_OPEN, ctypes.byref(attr), -1, cpu, -1, 8)  # FD_CLOEXEC
                if fd < 0:
                    continue  # an offline CPU
                try:
                    # a bytes argument: fcntl passes a pointer to a copy, the C string the ioctl reads
                    fcntl.ioctl(fd, PERF_EVENT_IOC_SET_FILTER, f"ifindex == {ifindex}".encode() + b"\0")
                    fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
                except (OSError, ValueError, OverflowError) as exc:
                    os.close(fd)
                    self.reason = f"perf counter on xdp:xdp_exception refused: {exc}"
                    continue
                fds.append(fd)
            if fds:
                self.fds[iface] = fds

    def read(self) -> dict[CounterKey, int]:
        out: dict[CounterKey, int] = {}
        for iface, fds in self.fds.items():
            total = 0
            for fd in fds:
                try:
                    total += struct.unpack("=Q", os.read(fd, 8))[0]
                except OSError:
                    continue
            out[("xdp", "xdp_exception", iface, None)] = total
        return out


# --- the whole read, from inside one namespace ---

@dataclass
class _Links:
    names: dict[int, str]  # in the untrusted-name form
    xdp: dict[str, int]  # iface -> ifindex, for those with an XDP program attached
    raw: dict[str, str]  # name shown -> the name to give ethtool, for names that are UTF-8


def _links(token: object = None, dump: linkstats.Dump | None = None) -> _Links:
    from netpath.kernel import linkstats

    names: dict[int, str] = {}
    xdp: dict[str, int] = {}
    raw: dict[str, str] = {}
    for link in (dump if dump is not None else linkstats.current(token)).links:
        names[link.index] = link.name
        if link.raw is not None:  # the ethtool ioctl takes the name as text
            raw[link.name] = link.raw
        if link.xdp:
            xdp[link.name] = link.index
    return _Links(names, xdp, raw)


# one set of perf counters per namespace inode, kept open for the life of the process: the
# counters count from their opening, and CounterDeltas takes the first read as its base
_EXCEPTIONS: dict[int, XdpExceptions] = {}


def _netns_inode() -> int:
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return 0


# netns inode -> (the devices when qstats-get last answered, that answer): asked again only when a device came
# or went, or when some device reports queue stats (their counters move without an skb: no cheaper sign)
_QSTATS: dict[int, tuple[tuple[tuple[int, str], ...], Qstats]] = {}


def _qstats_for(links: _Links) -> Qstats:
    devices = tuple(sorted(links.names.items()))
    last = _QSTATS.get(_netns_inode())
    if last is not None and last[0] == devices and not last[1].queues:
        return last[1]
    qs = read_qstats()
    _QSTATS[_netns_inode()] = (devices, qs)
    return qs


def read_nic_counters(ifaces: set[str] | None, token: object = None,
                      dump: linkstats.Dump | None = None) -> dict[CounterKey, int]:
    """ethtool, xdp and qstats counters of this namespace's devices (or of `ifaces`); `dump`: the link dump
    the caller already took in this namespace for the same reading (else linkstats.current(token))."""
    links = _links(token, dump)
    values: dict[CounterKey, int] = {}
    for ifname in sorted(links.names.values()):
        if ifaces and ifname not in ifaces:
            continue
        stats = ethtool_stats(links.raw[ifname]) if ifname in links.raw else None
        if stats:
            values.update(classify_ethtool(ifname, stats))
    values.update(qstats_counters(_qstats_for(links), links.names, ifaces))
    wanted = {k: v for k, v in links.xdp.items() if not ifaces or k in ifaces}
    exc = _EXCEPTIONS.setdefault(_netns_inode(), XdpExceptions())
    exc.open(wanted)
    values.update(exc.read())
    return values


def iter_sources() -> Iterator[tuple[str, bool, str]]:
    """(source, available, reason) for `netpath probes`, in this namespace."""
    qs = read_qstats()
    yield "ethtool", True, "SIOCETHTOOL statistics of each device that has a driver"
    yield "xdp", _tracepoint_id(_tracefs(), "xdp", "xdp_exception") is not None, (
        "driver XDP counters (ethtool -S); xdp:xdp_exception by perf counter")
    yield "qstats", qs.available, qs.reason
