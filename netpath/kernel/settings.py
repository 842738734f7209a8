"""The settings `netpath doctor` names in its findings, read from the namespace the run looked at.

Everything under /proc/sys/net and /proc/thread-self/net belongs to the
network namespace of the *reading thread*, so namespaced values are read in
a short-lived thread that joined the namespace (netns.run_in); sock_diag and
ethtool's netlink socket are made there too. Global values (and sysctls a
child namespace does not have, such as net.core.netdev_max_backlog) are read
from the host. Every parser takes text, and every reader a root directory,
so unit tests run on fixtures.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from netpath import netns
from netpath.kernel import irqs as irqs_mod
from netpath.kernel import procnet
from netpath.model import NicSettings, Settings, SocketState, Window

# the sysctls the rules name, read in the run's namespace first, on the host when the namespace lacks them
SYSCTLS = (
    "net.core.rmem_max",
    "net.core.rmem_default",
    "net.core.somaxconn",
    "net.core.netdev_max_backlog",
    "net.core.netdev_budget",
    "net.core.netdev_budget_usecs",
    "net.core.dev_weight",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_rmem",
    "net.ipv4.udp_rmem_min",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
    "net.ipv4.ipfrag_time",
    "net.ipv4.ipfrag_high_thresh",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_count",
    "net.netfilter.nf_conntrack_buckets",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_moderate_rcvbuf",
    "net.ipv4.tcp_mem",
    "net.ipv4.udp_mem",
    "net.ipv4.ipfrag_max_dist",
    "net.ipv6.ip6frag_time",
    "net.ipv6.ip6frag_high_thresh",
    "net.ipv6.ip6frag_low_thresh",
    "net.core.flow_limit_cpu_bitmap",
    "net.core.flow_limit_table_len",
    "net.core.busy_read",
    "net.core.busy_poll",
    "vm.min_free_kbytes",
)
PER_IFACE_SYSCTLS = ("net.ipv4.conf.{}.rp_filter",)
NAMESPACED_PREFIXES = ("net.",)

_IFACE_NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}$")  # names from the kernel are untrusted text


def sysctl_path(name: str, root: Path) -> Path:
    """net.ipv4.conf.eth0.rp_filter -> ROOT/net/ipv4/conf/eth0/rp_filter (interface names may hold dots:
    only the first three parts of conf.* names are separators)."""
    parts = name.split(".")
    if len(parts) > 4 and parts[:3] in (["net", "ipv4", "conf"], ["net", "ipv6", "conf"]):
        parts = [*parts[:3], ".".join(parts[3:-1]), parts[-1]]
    return root.joinpath(*parts)


def read_sysctls(names: Iterable[str], root: Path = Path("/proc/sys")) -> dict[str, str]:
    """Each readable sysctl's value, whitespace squeezed (tcp_rmem's three numbers become "4096 131072 ...")."""
    out = {}
    for name in names:
        try:
            out[name] = " ".join(sysctl_path(name, root).read_text().split())
        except OSError:
            continue
    return out


# ---------------------------------------------------------------- sock_diag

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_SKMEMINFO = 7
INET_DIAG_CGROUP_ID = 21
TCP_LISTEN = 10
NLMSG = struct.Struct("=IHHII")
REQ_V2 = struct.Struct("=BBBxI48x")  # family, protocol, ext, pad, states, an empty inet_diag_sockid
DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")  # inet_diag_msg
NLA = struct.Struct("=HH")
SKMEM = ("rmem_alloc", "rcvbuf", "wmem_alloc", "sndbuf", "fwd_alloc", "wmem_queued", "optmem", "backlog", "drops")


def _addr(family: int, raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw[:4]) if family == socket.AF_INET else ipaddress.IPv6Address(raw))


def parse_diag(data: bytes, proto: str) -> tuple[list[SocketState], bool]:
    """One recv() of a sock_diag dump -> sockets, and whether the dump is done."""
    out: list[SocketState] = []
    off = 0
    while off + NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSG.unpack_from(data, off)
        if length < NLMSG.size:
            return out, True
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return out, True
        body = data[off + NLMSG.size:off + length]
        if kind == SOCK_DIAG_BY_FAMILY and len(body) >= DIAG_MSG.size:
            out.append(_socket_state(body, proto))
        off += (length + 3) & ~3
    return out, False


def _socket_state(body: bytes, proto: str) -> SocketState:
    (family, state, _timer, _retrans, sport, _dport, src, _dst, _if, _cookie, _expires, rqueue, wqueue, _uid,
     inode) = DIAG_MSG.unpack_from(body)
    mem: dict[str, int] = {}
    cgroup = None
    off = DIAG_MSG.size
    while off + NLA.size <= len(body):
        alen, atype = NLA.unpack_from(body, off)
        if alen < NLA.size:
            break
        value = body[off + NLA.size:off + alen]
        if atype & 0x3FFF == INET_DIAG_SKMEMINFO:
            nums = struct.unpack(f"={len(value) // 4}I", value[:len(value) // 4 * 4])
            mem = dict(zip(SKMEM, nums, strict=False))
        elif atype & 0x3FFF == INET_DIAG_CGROUP_ID and len(value) >= 8:
            cgroup = struct.unpack_from("=Q", value)[0]
        off += (alen + 3) & ~3
    return SocketState(proto, 4 if family == socket.AF_INET else 6, _addr(family, src),
                       int.from_bytes(sport, "big"), inode, state == TCP_LISTEN, rqueue, wqueue,
                       mem.get("rcvbuf"), mem.get("rmem_alloc"), mem.get("drops"), cgroup)


def sock_diag(family: int, protocol: int, proto: str, states: int) -> list[SocketState]:
    """Every socket of one family and protocol in this thread's namespace, with its memory (skmeminfo)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.bind((0, 0))
        req = REQ_V2.pack(family, protocol, 1 << (INET_DIAG_SKMEMINFO - 1), states)
        nl.send(NLMSG.pack(NLMSG.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
        out: list[SocketState] = []
        while True:
            got, done = parse_diag(nl.recv(65536), proto)
            out.extend(got)
            if done:
                return out


TCP_ESTABLISHED = 1
MAX_TCP_SOCKETS = 8192  # established TCP sockets kept (their receive memory): a busy host has many more


def read_sockets() -> list[SocketState]:
    """UDP sockets (all states), TCP listeners and established TCP sockets (at most MAX_TCP_SOCKETS, those
    with data queued first), v4 and v6."""
    out = []
    established: list[SocketState] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        out += sock_diag(family, socket.IPPROTO_UDP, "udp", 0xFFFFFFFF)
        out += sock_diag(family, socket.IPPROTO_TCP, "tcp", 1 << TCP_LISTEN)
        established += sock_diag(family, socket.IPPROTO_TCP, "tcp", 1 << TCP_ESTABLISHED)
    established.sort(key=lambda s: -(s.rmem_alloc or 0))
    return out + established[:MAX_TCP_SOCKETS]


TCP_SYN_RECV = 3


def syn_queues(requests: Iterable[SocketState]) -> tuple[tuple[str, int, int], ...]:
    """Half-open requests grouped by the (address, port) they were sent to: each listener's SYN queue."""
    counts: dict[tuple[str, int], int] = {}
    for r in requests:
        counts[(r.laddr, r.lport)] = counts.get((r.laddr, r.lport), 0) + 1
    return tuple((a, p, n) for (a, p), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def read_syn_queues() -> tuple[tuple[str, int, int], ...]:
    """Every listener's half-open requests now. A SYN_RECV dump also walks the request sockets
    (tcp_diag_dump / inet_diag_dump_icsk, net/ipv4: `if (idiag_states & TCPF_SYN_RECV) idiag_states |=
    TCPF_NEW_SYN_RECV`), each reported by inet_req_diag_fill as SYN_RECV with its listener's local address
    and port: what `ss -tn state syn-recv` lists. Those are what fills the SYN queue
    (inet_csk_reqsk_queue_is_full: the listener's reqsk queue length against its backlog)."""
    out: list[SocketState] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        out += sock_diag(family, socket.IPPROTO_TCP, "tcp", 1 << TCP_SYN_RECV)
    return syn_queues(out)


# ---------------------------------------------------------------- ethtool, RPS, IRQs


def parse_ethtool_rings(text: str) -> tuple[int | None, int | None]:
    """`ethtool -g IFACE` -> (current RX ring, its maximum)."""
    section = None
    found: dict[str, int] = {}
    for line in text.splitlines():
        low = line.strip().lower()
        if low.startswith("pre-set maximums"):
            section = "max"
        elif low.startswith("current hardware settings"):
            section = "cur"
        elif section and re.match(r"^rx:\s*\d+$", low):
            found.setdefault(section, int(low.split(":")[1]))
    return found.get("cur"), found.get("max")


def parse_ethtool_features(text: str) -> tuple[tuple[str, str], ...]:
    """`ethtool -k IFACE` -> (feature, on/off) for the receive-side offloads the rules name."""
    wanted = ("rx-checksumming", "generic-receive-offload", "large-receive-offload", "rx-gro-hw", "receive-hashing")
    out = []
    for line in text.splitlines():
        name, sep, rest = line.strip().partition(":")
        if sep and name in wanted:
            out.append((name, rest.split()[0] if rest.split() else "?"))
    return tuple(out)


def parse_ethtool_driver(text: str) -> str | None:
    """`ethtool -i IFACE` -> the driver's name ("driver: mlx5_core")."""
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == "driver" and value.strip():
            return value.strip()
    return None


def read_threaded(iface: str, sysfs: Path = Path("/sys/class/net")) -> str | None:
    try:
        return (sysfs / iface / "threaded").read_text().strip()
    except OSError:
        return None


def _ethtool(*argv: str) -> str:
    tool = shutil.which("ethtool") or "/usr/sbin/ethtool"
    try:
        done = subprocess.run([tool, *argv], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def read_rps(iface: str, sysfs: Path = Path("/sys/class/net")) -> tuple[tuple[str, str], ...]:
    queues = sysfs / iface / "queues"
    out = []
    try:
        for q in sorted(queues.iterdir()):
            if q.name.startswith("rx-"):
                try:
                    out.append((q.name, (q / "rps_cpus").read_text().strip()))
                except OSError:
                    continue
    except OSError:
        return ()
    return tuple(out)


def read_irq_affinity(irqs: Iterable[int], proc: Path = Path("/proc")) -> tuple[tuple[int, str], ...]:
    out = []
    for irq in irqs:
        try:
            out.append((irq, (proc / "irq" / str(irq) / "smp_affinity_list").read_text().strip()))
        except OSError:
            continue
    return tuple(out)


# ---------------------------------------------------------------- window counters


def parse_softnet_all(text: str) -> dict[int, dict[str, int]]:
    """/proc/net/softnet_stat -> cpu -> processed, dropped, time_squeeze (and flow_limit where present: backlog
    drops by the flow limit, also in dropped)."""
    keep = ("processed", "dropped", "time_squeeze", "flow_limit")
    return {cpu: {k: cols[k] for k in keep if k in cols} for cpu, cols in procnet.parse_softnet(text).items()
            if len(cols) >= 3}


def _proc_net() -> Path:
    # /proc/net follows the thread-group leader's namespace; thread-self follows this thread's setns
    return Path("/proc/thread-self/net") if Path("/proc/thread-self/net").exists() else Path("/proc/net")


CARRIER = "\0carrier:"  # rx dict keys for IFLA_CARRIER_CHANGES (a NUL can never be in an interface name)


def _rx_packets(reuse_s: float = 0.0) -> dict[str, int]:
    """iface -> rx_packets, and CARRIER + iface -> carrier changes, from the namespace's link dump: a fresh
    one, or one taken within `reuse_s` seconds (the exporter's scrape reuses the drops counters' dump)."""
    from netpath.kernel import linkstats

    out = {}
    for link in linkstats.current(None, fresh_within=reuse_s).links:
        name = link.raw if link.raw is not None else link.name
        if "rx_packets" in link.stats:
            out[name] = link.stats["rx_packets"]
        if link.carrier_changes is not None:
            out[CARRIER + name] = link.carrier_changes
    return out


T = TypeVar("T")
Raw = tuple[dict[str, int], dict[str, int], dict[int, dict[str, int]], dict[str, int]]


def read_window_raw(ns: netns.Netns | None) -> Raw:
    """The cumulative counters a Window is the difference of (the exporter's rolling window: a link dump
    this scrape already took is reused; the doctor's windows read with read_window_raw_marked, fresh)."""
    return read_window_raw_marked(ns, lambda: None, reuse_s=1.0)[0]


def read_window_raw_marked(ns: netns.Netns | None, mark: Callable[[], T], reuse_s: float = 0.0) -> tuple[Raw, T]:
    """read_window_raw, and mark() called right after the SNMP and conntrack counters are read (the slow link
    dump goes first), so a reading taken by mark() (drop counts) and the counters cover the same instant."""
    def inside() -> tuple[dict[str, int], dict[str, int], dict[str, int], T]:
        rx = _rx_packets(reuse_s)
        # in an exporter's scrape, the files as its drop counters read them (procnet.shared_scrape)
        snmp, netstat, snmp6, conntrack = procnet.counter_files(_proc_net())
        snmp |= netstat
        snmp |= snmp6
        return snmp, conntrack, rx, mark()

    snmp, conntrack, rx, marked = netns.run_in(ns, inside)
    return (snmp, conntrack, parse_softnet_all(procnet.read_text(Path("/proc/net/softnet_stat"))), rx), marked


def window(before: Raw, after: Raw) -> Window:
    def diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        return {k: v - a[k] for k, v in b.items() if k in a and v - a[k] > 0}

    snmp0, ct0, sn0, rx0 = before
    snmp1, ct1, sn1, rx1 = after
    conntrack = diff(ct0, ct1)
    if "entries" in ct1:
        conntrack["entries"] = ct1["entries"]  # a level, not a count
    softnet = {cpu: {k: v - sn0[cpu].get(k, v) for k, v in cols.items()} for cpu, cols in sn1.items() if cpu in sn0}
    rx = diff(rx0, rx1)
    carrier = {k.removeprefix(CARRIER): v for k, v in rx.items() if k.startswith(CARRIER)}
    rx = {k: v for k, v in rx.items() if not k.startswith(CARRIER)}
    return Window(diff(snmp0, snmp1), conntrack, softnet, rx, carrier)


# ---------------------------------------------------------------- rulesets


def count_drop_rules(text: str) -> int:
    """iptables-save / nft list ruleset text -> rules that drop or reject."""
    n = 0
    for line in text.splitlines():
        words = line.split()
        if ("-j" in words and words[words.index("-j") + 1:][:1] in (["DROP"], ["REJECT"])) or \
                (words and words[-1] in ("drop", "reject")) or "reject with" in line:
            n += 1
    return n


def _tool_text(argv: list[str]) -> str | None:
    tool = shutil.which(argv[0])
    if tool is None:
        return None
    try:
        done = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def count_tc_filters(text: str) -> int:
    """`tc filter show dev X ingress` -> filters that act: one 'action order N:' line per action, one
    'direct-action' BPF filter each (u32 also prints hash-table lines that do nothing)."""
    return sum(1 for line in text.splitlines()
               if re.match(r"^\s*action order \d+:", line) or ("direct-action" in line and line.startswith("filter")))


# ---------------------------------------------------------------- all of it


def read_settings(ns: netns.Netns | None, ifaces: Iterable[str], sysctl_root: Path = Path("/proc/sys")) -> Settings:
    """Read now: the sysctls, sockets, NIC settings and rulesets of `ns` (None: this namespace)."""
    wanted = [n for n in ifaces if _IFACE_NAME.match(n)]
    names = list(SYSCTLS) + [pattern.format(i) for pattern in PER_IFACE_SYSCTLS for i in wanted]

    def inside() -> tuple[dict[str, str], list[SocketState], list[NicSettings], int | None,
                          dict[str, dict[str, int]], dict[str, int], tuple[tuple[str, int, int], ...]]:
        values = read_sysctls(names, sysctl_root)
        nics = []
        for iface in wanted:
            cur, top = parse_ethtool_rings(_ethtool("-g", iface))
            nics.append(NicSettings(iface, cur, top, parse_ethtool_features(_ethtool("-k", iface)),
                                    driver=parse_ethtool_driver(_ethtool("-i", iface))))
        # iptables-nft's rules are nft rules too: nft's listing when it is installed, else iptables-save's
        text = _tool_text(["nft", "list", "ruleset"])
        if text is None:
            text = _tool_text(["iptables-save"])
        rules = count_drop_rules(text) if text is not None else None
        tc: dict[str, dict[str, int]] = {"ingress": {}, "egress": {}}
        for iface in wanted:
            for hook in ("ingress", "egress"):
                text = _tool_text(["tc", "filter", "show", "dev", iface, hook])
                if text is not None:
                    tc[hook][iface] = count_tc_filters(text)
        base = _proc_net()
        levels = procnet.parse_sockstat(procnet.read_text(base / "sockstat"))
        return values, read_sockets(), nics, rules, tc, levels, read_syn_queues()

    values, sockets, nics, rules, tc, levels, syn = netns.run_in(ns, inside)
    missing = [n for n in names if n not in values]
    if missing and ns is not None:  # global sysctls live in the host's /proc/sys only
        values |= read_sysctls(missing, sysctl_root)
    here = ns is None or ns.inode == os.stat("/proc/self/ns/net").st_ino
    interrupts = irqs_mod.read_interrupts()
    devices = irqs_mod.local_devices() if here else {}
    full = []
    for nic in nics:
        rps = read_rps(nic.iface) if here else ()  # /sys shows the host's devices only
        mine = {nic.iface: devices[nic.iface]} if nic.iface in devices else {}
        irqs = read_irq_affinity(sorted(irqs_mod.nic_irqs(interrupts, mine))) if mine else ()
        full.append(NicSettings(nic.iface, nic.rx_ring, nic.rx_ring_max, nic.offloads, rps, irqs, nic.driver,
                                read_threaded(nic.iface) if here else None))
    label = ns.label if ns is not None else "host"
    inode = ns.inode if ns is not None else os.stat("/proc/self/ns/net").st_ino
    return Settings(inode, label, values, tuple(sockets), tuple(full), os.cpu_count() or 1, rules, tc["ingress"],
                    tc["egress"], levels, syn)
