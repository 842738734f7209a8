"""unexplained-drops: every drop the kernel counted that no other finding claims.

The doctor must never say "no problems found" while the kernel dropped packets. After the other rules ran
on a scope (one namespace's window), this one takes what is left: drop rows whose reason no fired rule
claims, grouped by reason with their locations, interfaces and owners, and drop counters that rose with no
fired rule claiming them (IP header errors, truncated packets, no route, unknown protocols, ...). Severity
comes from the "unexplained" policy of severity.py (rate and share), and the knob is the `netpath drops`
command that digs into them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from netpath.diagnose.nic import xdp_part
from netpath.diagnose.observe import Observation, ns_where, owner_where
from netpath.model import Counter, DropRow, Evidence, Finding, FindingWhere, Knob

# SNMP counters that count a dropped packet (nstat names), per netstat/snmp/snmp6 of the scope's namespace
SNMP_DROPS = (
    "IpInHdrErrors", "IpInAddrErrors", "IpInUnknownProtos", "IpInDiscards", "IpExtInNoRoutes",
    "IpExtInTruncatedPkts", "IpExtInCsumErrors", "IpReasmFails",
    "Ip6InHdrErrors", "Ip6InAddrErrors", "Ip6InUnknownProtos", "Ip6InTruncatedPkts", "Ip6InDiscards",
    "Ip6InNoRoutes", "Ip6InTooBigErrors", "Ip6ReasmFails",
    "UdpNoPorts", "UdpRcvbufErrors", "UdpInCsumErrors", "UdpMemErrors",
    "Udp6NoPorts", "Udp6RcvbufErrors", "Udp6InCsumErrors", "Udp6MemErrors",
    "TcpInCsumErrors", "IcmpInErrors", "Icmp6InErrors",
    "TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPBacklogDrop", "TcpExtTCPRcvQDrop",
    "TcpExtTCPZeroWindowDrop", "TcpExtPFMemallocDrop", "TcpExtTCPMinTTLDrop", "TcpExtTCPOFODrop",
    "TcpExtTCPReqQFullDrop", "TcpExtTCPDeferAcceptDrop", "TcpExtIPReversePathFilter",
)
# the SNMP counters that count the same drops as a reason's rows (ip_rcv_core, ip_route_input_noref,
# ip_local_deliver_finish, udp_queue_rcv_one_skb...): a row's finding carries them, they are not counted again
REASON_COUNTERS = {
    "IP_INHDR": ("IpInHdrErrors", "Ip6InHdrErrors"),
    "IP_INADDRERRORS": ("IpInAddrErrors", "Ip6InAddrErrors"),
    "IP_INNOROUTES": ("IpExtInNoRoutes", "Ip6InNoRoutes"),
    "IP_NOPROTO": ("IpInUnknownProtos", "Ip6InUnknownProtos"),
    "PKT_TOO_SMALL": ("IpExtInTruncatedPkts", "Ip6InTruncatedPkts", "IpInHdrErrors", "Ip6InHdrErrors"),
    "IP_CSUM": ("IpExtInCsumErrors",),
    "PKT_TOO_BIG": ("Ip6InTooBigErrors",),
    "TCP_MINTTL": ("TcpExtTCPMinTTLDrop",),
    "PFMEMALLOC": ("TcpExtPFMemallocDrop",),
}
CONNTRACK_DROPS = ("drop", "insert_failed", "chaintoolong")
# counter sources of the drops session read here (snmp and conntrack come from the window, softnet is
# backlog-overflow's and host-wide)
DEVICE_SOURCES = ("link", "qdisc", "ethtool", "qstats", "xdp")
NOT_DROPS = frozenset({("link", "carrier_changes")})
# drop reasons that lose no data: a duplicate of data already received (tcp_data_queue, tcp_validate_incoming:
# TCP_OLD_DATA, TCP_OLD_SEQUENCE, TCP_OFOMERGE), an old ACK (TCP_OLD_ACK, TCP_TOO_OLD_ACK), a segment for a
# connection already closed (TCP_CLOSE, SOCKET_CLOSE): graded by the "benign" policy, never above info
BENIGN = frozenset({"TCP_OLD_DATA", "TCP_OLD_SEQUENCE", "TCP_OFOMERGE", "TCP_OLD_ACK", "TCP_TOO_OLD_ACK",
                    "TCP_CLOSE", "SOCKET_CLOSE"})
MAX_GROUPS = 5  # evidence lines per finding (the busiest)
MAX_REASONS = 6  # findings per scope for unclaimed reasons; the rest go into one "other reasons" finding


def claimed(rules: Iterable[tuple[tuple[str, ...], tuple[str, ...]]]) -> tuple[set[str], set[str]]:
    """(reasons, counter patterns) the given rules' (reasons, counters) claim."""
    reasons: set[str] = set()
    counters: set[str] = set()
    for r, c in rules:
        reasons.update(r)
        counters.update(c)
    return reasons, counters


def _is_claimed(key: str, patterns: set[str]) -> bool:
    return any(key == p or (p.endswith("*") and key.startswith(p[:-1])) for p in patterns)


def _netns_arg(label: str | None) -> list[str]:
    if not label or label == "host":
        return []
    pid = re.search(r"\[(\d+)\]$", label) or re.fullmatch(r"pid:(\d+)", label)
    return ["--netns", pid.group(1) if pid else label]


def dig_in(label: str | None, iface: str | None, reason: str | None) -> str:
    argv = ["netpath", "drops", *_netns_arg(label)]
    if iface:
        argv += ["--iface", iface]
    if reason:
        argv += ["--reason", reason, "--by", "reason,location,iface,flow,socket", "--stack"]
    return " ".join([*argv, "--duration", "30"])


def _describe(row: DropRow) -> str:
    where = [row.location or "?", f"on {row.iface}" if row.iface else "no device"]
    owner = owner_where(row.owner)
    if owner.get("comm"):
        where.append(f"{owner['comm']}[{owner['pid']}]")
    elif owner.get("lport"):
        where.append(f"port {owner['lport']}")
    return " ".join(where)


def _row_findings(obs: Observation, rows: list[DropRow], snmp: dict[str, int]) -> list[Finding]:
    by_reason: dict[str, list[DropRow]] = {}
    for r in rows:
        by_reason.setdefault(r.reason or "UNKNOWN", []).append(r)
    ranked = sorted(by_reason.items(), key=lambda kv: -sum(r.count for r in kv[1]))
    if len(ranked) > MAX_REASONS:
        rest = [r for _reason, rs in ranked[MAX_REASONS - 1:] for r in rs]
        ranked = [*ranked[:MAX_REASONS - 1], ("other reasons", rest)]
    out = []
    for reason, group in ranked:
        n = sum(r.count for r in group)
        groups: dict[str, int] = {}
        for r in group:
            key = (f"{r.reason} " if reason == "other reasons" else "") + _describe(r)
            groups[key] = groups.get(key, 0) + r.count
        top_row = max(group, key=lambda r: r.count)
        ifaces = {r.iface for r in group}
        iface = top_row.iface if len(ifaces) == 1 else None
        received = obs.received(iface)
        evidence = [Evidence("drops no other finding explains", n, f"kfree_skb reason {reason}"
                             if reason != "other reasons" else "kfree_skb, several reasons")]
        evidence += [Evidence(text, k, None) for text, k in sorted(groups.items(), key=lambda kv: -kv[1])[:MAX_GROUPS]]
        for name in sorted({n for r in group for n in REASON_COUNTERS.get(r.reason or "", ())}):
            if snmp.get(name):
                evidence.append(Evidence(f"{name}, the same drops counted by the protocol", snmp.pop(name),
                                         f"nstat {name}"))
        if received:
            evidence.append(Evidence("packets received there in the window", received,
                                     f"link rx_packets ({iface})" if iface and iface in obs.window.rx_packets
                                     else "nstat IpInReceives + Ip6InReceives"))
        where = ns_where(obs, top_row) | ({"iface": iface} if len(ifaces) == 1 else {"iface": None})
        label = str(where.get("netns_label") or "")
        benign = {r.reason for r in group} <= BENIGN
        out.append(Finding(
            "unexplained-drops", obs.grade("benign" if benign else "unexplained", n, received),
            f"{n:,} packets dropped with reason {reason}" + (f" on {iface}" if iface else ""),
            tuple(evidence), FindingWhere(**where),  # type: ignore[arg-type]
            (Knob("netpath drops", dig_in(label, iface, None if reason == "other reasons" else reason),
                  "run it to see the flows, the sockets and the kernel stack of these drops"),),
            "the kernel dropped these packets for a reason none of the doctor's rules explains; the reason and "
            "the code location say where (see netpath-drops(8) and the kernel's enum skb_drop_reason)"))
    return out


def _counter_findings(obs: Observation, counters: list[tuple[str, str, int, str | None]]) -> list[Finding]:
    if not counters:
        return []
    n = max(k for _key, _what, k, _iface in counters)  # the same drops are often in several counters
    ifaces = {iface for *_rest, iface in counters if iface}
    iface = next(iter(ifaces)) if len(ifaces) == 1 else None
    received = obs.received(iface)
    evidence = tuple(Evidence(what, k, src) for src, what, k, _iface in sorted(counters, key=lambda c: -c[2]))
    where = ns_where(obs, iface=iface)
    return [Finding(
        "unexplained-drops", obs.grade("unexplained", n, received),
        "drop counters rose that no other finding explains", evidence,
        FindingWhere(**where),  # type: ignore[arg-type]
        (Knob("netpath drops", dig_in(str(where.get("netns_label") or ""), iface, None),
              "run it to see which drops these counters count, by reason and code location; nstat -az NAME "
              "shows each counter"),),
        "the kernel counted dropped packets with no drop event the doctor could attribute (or none at all: "
        "some paths count without freeing the packet with a reason)")]


def check(obs: Observation, reasons: set[str], counters: set[str]) -> list[Finding]:
    """The drops of this scope that the given claims leave unexplained."""
    rows = [r for r in (obs.drops.rows if obs.drops else []) if (r.reason or "UNKNOWN") not in reasons]
    snmp = {n: k for n, k in obs.window.snmp.items() if n in SNMP_DROPS and not _is_claimed(f"snmp:{n}", counters)}
    found = _row_findings(obs, rows, snmp)  # takes the counters its rows explain out of snmp
    left: list[tuple[str, str, int, str | None]] = []
    for name in SNMP_DROPS:
        k = snmp.get(name, 0)
        if k > 0:
            left.append((f"nstat {name}", name, k, None))
    for name in CONNTRACK_DROPS:
        k = obs.window.conntrack.get(name, 0)
        if k > 0 and not _is_claimed(f"conntrack:{name}", counters):
            left.append((f"/proc/net/stat/nf_conntrack {name}", f"conntrack {name}", k, None))
    device: list[Counter] = [c for c in (obs.drops.counters if obs.drops else [])
                             if c.source in DEVICE_SOURCES and (c.source, c.name) not in NOT_DROPS]
    for c in device:
        # a driver counter that counts XDP drops again (virtio_net) leaves them to xdp-drop when it fired
        k = c.count - (xdp_part(obs, c)[0] if _is_claimed("xdp:", counters) else 0)
        if k > 0 and not _is_claimed(f"{c.source}:{c.name}", counters):
            left.append((f"{c.source} {c.name}" + (f" ({c.iface})" if c.iface else ""),
                         f"{c.source} {c.name}" + (f" on {c.iface}" if c.iface else ""), k, c.iface))
    if not obs.scoped:
        dropped = sum(cols.get("dropped", 0) for cols in obs.window.softnet.values())
        if dropped and not _is_claimed("softnet:dropped", counters):
            left.append(("/proc/net/softnet_stat dropped", "softnet backlog drops", dropped, None))
    return found + _counter_findings(obs, left)


def check_alone(obs: Observation) -> list[Finding]:
    """The rule on its own (no other rule fired): every drop is unexplained."""
    return check(obs, set(), set())
