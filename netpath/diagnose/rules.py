"""The doctor's rules as data: each a pure function of one window's snapshots and the settings read now.

A rule returns findings; severity is about harm, not about a counter moving:
data an application asked for and lost is at least `warn`, traffic nobody
listens for or a filter someone wrote is `info` unless it takes most of an
interface's traffic; the thresholds are one table (severity.py). Every number
comes from this window (deltas), and where the kernel keeps a counter for it
the evidence says which one and carries its value, so a reader can check it
with nstat or /proc. The table at the end (RULES) is the contract: its ids
are listed in netpath-doctor(8).

diagnose() runs the rules on each scope (the run's namespace, and in a
host-wide run every other namespace whose counters moved), then
unexplained-drops on what no fired rule claims, then folds findings that one
cause explains into one (chains.py).
"""

from __future__ import annotations

from dataclasses import replace

from netpath.diagnose import chains, cpu, nic, packets, policy, sockets, unexplained
from netpath.diagnose.observe import RANK, SEVERITIES, Observation, Rule
from netpath.diagnose.severity import POLICIES
from netpath.model import Finding, NetnsCounters, Settings, Window

__all__ = ["POLICIES", "RANK", "RULES", "RULE_IDS", "SEVERITIES", "Observation", "Rule", "diagnose"]

# legacy names: the thresholds live beside the rules that use them
IMBALANCE_SHARE, IMBALANCE_MIN_PACKETS = cpu.IMBALANCE_SHARE, cpu.IMBALANCE_MIN_PACKETS
SLOW_READER_INFO_NS, SLOW_READER_WARN_NS = sockets.SLOW_READER_INFO_NS, sockets.SLOW_READER_WARN_NS
SOFTIRQ_INFO_NS, SOFTIRQ_WARN_NS = cpu.SOFTIRQ_INFO_NS, cpu.SOFTIRQ_WARN_NS

_UDP_CSUM = ("snmp:UdpInCsumErrors", "snmp:Udp6InCsumErrors", "snmp:TcpInCsumErrors", "snmp:IpExtInCsumErrors")
_LOSS = "loss policy (severity.py)"

RULES: tuple[Rule, ...] = (
    Rule("socket-rcvbuf-overflow", sockets.socket_rcvbuf_overflow,
         "kfree_skb SOCKET_RCVBUFF drops (UDP, raw), by receiving socket",
         "SO_RCVBUF, net.core.rmem_max, net.core.rmem_default (TCP: net.ipv4.tcp_rmem)",
         _LOSS, ("SOCKET_RCVBUFF",), ("snmp:UdpRcvbufErrors", "snmp:Udp6RcvbufErrors")),
    Rule("tcp-rcvq-drop", sockets.tcp_rcvq_drop,
         "TCPRcvQDrop, TCPZeroWindowDrop, TCPOFODrop, TCPBacklogDrop grew, or kfree_skb SOCKET_BACKLOG, "
         "TCP_ZEROWINDOW, TCP_OFO_DROP, TCP_OFO_QUEUE_PRUNE, PROTO_MEM (TCP) drops, by socket",
         "net.ipv4.tcp_rmem, a fixed SO_RCVBUF, net.ipv4.tcp_moderate_rcvbuf, net.ipv4.tcp_mem", _LOSS,
         sockets.TCP_RCVQ_REASONS, tuple(f"snmp:{n}" for n in sockets.TCP_RCVQ_DROPS)),
    Rule("listen-overflow", sockets.listen_overflow, "TcpExtListenOverflows grew (accept queue full), or "
         "kfree_skb TCP_LISTEN_OVERFLOW drops", "the listen() backlog, net.core.somaxconn",
         "refused policy (severity.py; share of TcpPassiveOpens + overflows)", ("TCP_LISTEN_OVERFLOW",),
         ("snmp:TcpExtListenOverflows", "snmp:TcpExtListenDrops")),
    Rule("syn-queue-overflow", sockets.syn_queue_overflow, "TcpExtTCPReqQFullDrop or TCPReqQFullDoCookies "
         "grew, or ListenDrops beyond ListenOverflows", "the listen() backlog, net.core.somaxconn, "
         "net.ipv4.tcp_syncookies, net.ipv4.tcp_max_syn_backlog",
         "info when every SYN got a cookie; else the refused policy (severity.py)", (),
         ("snmp:TcpExtTCPReqQFullDrop", "snmp:TcpExtListenDrops")),
    Rule("no-listener", sockets.no_listener, "kfree_skb NO_SOCKET drops", "none (start the service, or ignore a scan)",
         "info: nothing an application asked for is lost", ("NO_SOCKET",), ("snmp:UdpNoPorts", "snmp:Udp6NoPorts")),
    Rule("netfilter-drop", policy.netfilter_drop, "kfree_skb NETFILTER_DROP drops beyond conntrack's own refusals "
         "(drop, insert_failed, chaintoolong)", "the ruleset (iptables-save / nft list ruleset)",
         "policy policy (severity.py): info; warn at half of the interface's packets", ("NETFILTER_DROP",)),
    Rule("tc-drop", policy.tc_drop, "kfree_skb TC_INGRESS/TC_EGRESS, tc errors, QDISC_DROP and the qdisc "
         "reasons", "tc filter show dev IFACE ingress|egress, tc -s qdisc show dev IFACE",
         "policy policy (severity.py)", policy.TC_REASONS, ("qdisc:*",)),
    Rule("rp-filter", policy.rp_filter, "kfree_skb IP_RPFILTER drops", "net.ipv4.conf.IFACE.rp_filter, "
         "net.ipv4.conf.all.rp_filter (the larger applies)", "warn", ("IP_RPFILTER",),
         ("snmp:TcpExtIPReversePathFilter",)),
    Rule("conntrack-full", policy.conntrack_full, "/proc/net/stat/nf_conntrack drop or early_drop grew",
         "net.netfilter.nf_conntrack_max", "crit when new flows were refused; warn for early drops alone",
         ("NETFILTER_DROP",), ("conntrack:drop",)),
    Rule("conntrack-near-full", policy.conntrack_near_full, "nf_conntrack_count at or above "
         f"{int(policy.CONNTRACK_NEAR_FULL * 100)}% of nf_conntrack_max, nothing refused yet",
         "net.netfilter.nf_conntrack_max, net.netfilter.nf_conntrack_buckets", "warn"),
    Rule("conntrack-insert-failed", policy.conntrack_insert_failed, "/proc/net/stat/nf_conntrack insert_failed "
         "or chaintoolong grew", "SNAT/MASQUERADE --random-fully, net.netfilter.nf_conntrack_buckets",
         "refused policy (severity.py)", ("NETFILTER_DROP",),
         ("conntrack:insert_failed", "conntrack:chaintoolong", "conntrack:drop")),
    Rule("backlog-overflow", cpu.backlog_overflow, "kfree_skb CPU_BACKLOG drops or softnet_stat dropped grew "
         "(flow-limit drops told apart)", "net.core.netdev_max_backlog, net.core.flow_limit_cpu_bitmap, "
         "net.core.flow_limit_table_len", _LOSS, ("CPU_BACKLOG",), ("softnet:dropped", "link:rx_dropped")),
    Rule("napi-budget-squeeze", cpu.napi_budget_squeeze, "softnet_stat time_squeeze grew",
         "net.core.netdev_budget or net.core.netdev_budget_usecs, whichever binds",
         "info; warn when the NIC ring overflowed in the same window"),
    Rule("nic-ring-overrun", nic.nic_ring_overrun, "link rx_missed/rx_fifo/rx_over, netdev qstats hw drops, or "
         "the driver's own ring/port/policer counters (ethtool -S, a table per driver) grew",
         "ethtool -G IFACE rx, ethtool -L, the cloud allowance", _LOSS, (),
         ("link:rx_missed", "link:rx_fifo", "link:rx_over", "link:rx_dropped", "qstats:*", "ethtool:*")),
    Rule("link-errors", nic.link_errors, "link rx_crc_errors, rx_frame_errors, rx_length_errors or carrier "
         "changes grew", "the cable, optic, speed/duplex (ethtool IFACE)",
         "damage policy (severity.py); warn for carrier changes alone", (),
         ("link:rx_crc", "link:rx_frame", "link:rx_length")),
    Rule("rx-imbalance", cpu.rx_imbalance, f"one CPU processed {int(cpu.IMBALANCE_SHARE * 100)}% or more of at "
         f"least {cpu.IMBALANCE_MIN_PACKETS:,} packets", "rps_cpus, /proc/irq/N/smp_affinity_list",
         "info; warn when that CPU also dropped packets (softnet dropped)"),
    Rule("slow-reader", sockets.slow_reader, "socket_queue p99 of a reading process at or above "
         f"{sockets.SLOW_READER_INFO_NS // 1_000_000} ms (at least {sockets.SLOW_READER_MIN} packets)",
         "the application; SO_RCVBUF", f"info; warn at {sockets.SLOW_READER_WARN_NS // 1_000_000} ms"),
    Rule("softirq-wait", cpu.softirq_wait, f"softirq_wait p99 at or above {cpu.SOFTIRQ_INFO_NS // 1_000_000} ms",
         "IRQ affinity, RPS, threaded NAPI, net.core.busy_read/busy_poll",
         f"info; warn at {cpu.SOFTIRQ_WARN_NS // 1_000_000} ms"),
    Rule("reassembly-failure", packets.reassembly_failure, "kfree_skb FRAG_REASM_TIMEOUT/FRAG_TOO_FAR/DUP_FRAG "
         "drops or IpReasmFails/Ip6ReasmFails grew", "net.ipv4.ipfrag_time, ipfrag_max_dist, "
         "ipfrag_high_thresh; net.ipv6.ip6frag_time, ip6frag_high_thresh, ip6frag_low_thresh", "warn",
         packets.FRAG_REASONS, ("snmp:IpReasmFails", "snmp:Ip6ReasmFails")),
    Rule("checksum-errors", packets.checksum_errors, "kfree_skb UDP_CSUM/TCP_CSUM/IP_CSUM/ICMP_CSUM/SKB_CSUM drops",
         "the link (rx_crc_errors) or the sender and any NAT on the path", "damage policy (severity.py)",
         packets.CSUM_REASONS, _UDP_CSUM),
    Rule("xdp-drop", policy.xdp_drop, "XDP drop counters (ethtool -S), xdp:xdp_exception or kfree_skb XDP drops",
         "the XDP program (ip link show)", "info; warn on XDP errors or when it drops at least half of the "
         "interface's packets", ("XDP",), ("xdp:*",)),
    Rule("proto-mem-pressure", sockets.proto_mem_pressure, "UdpMemErrors or TCPMemoryPressures grew, kfree_skb "
         "PROTO_MEM (UDP) drops, or sockstat memory at the udp_mem/tcp_mem pressure value",
         "net.ipv4.udp_mem, net.ipv4.tcp_mem (pages)", "loss policy when datagrams were dropped; warn for TCP "
         "pressure; info for memory at the pressure value", ("PROTO_MEM",),
         ("snmp:UdpMemErrors", "snmp:Udp6MemErrors")),
    Rule("socket-headroom", sockets.socket_headroom, "a socket's receive queue at or above "
         f"{int(sockets.HEADROOM_SHARE * 100)}% of its buffer, or a listener's accept queue at or above "
         f"{int(sockets.HEADROOM_SHARE * 100)}% of its backlog, with no drop at it yet (sock_diag)",
         "SO_RCVBUF / tcp_rmem, the listen() backlog", "warn"),
    Rule("unexplained-drops", unexplained.check_alone, "drops (rows or counters) no other finding claims",
         "netpath drops (the command to dig in)", "unexplained policy (severity.py); benign policy for TCP "
         "discarding data it already has"),
)
RULE_IDS = tuple(r.id for r in RULES)
LATENCY_RULES = ("slow-reader", "softirq-wait")  # they need the trace program (netpath doctor --no-trace: not run)
_BY_ID = {r.id: r for r in RULES}


def _ns_settings(c: NetnsCounters, known: Settings | None) -> Settings:
    """A namespace's settings: those read for it at the end of the run, else what its reading holds."""
    if known is not None:
        return known if known.levels else replace(known, levels=dict(c.levels))
    sysctls = {k: str(v) for k, v in c.levels.items() if k.startswith("net.")}
    return Settings(c.inode, c.label, sysctls, levels=dict(c.levels))


def scopes(obs: Observation) -> list[Observation]:
    """The run's namespace, then each other namespace of a host-wide run with its own counters, rows and
    settings (host-wide softnet and the device counters the drops session read stay in the first)."""
    if not obs.namespaces:
        return [obs]
    here = obs.settings.netns
    split = {c.inode: c for c in obs.namespaces if c.inode != here}
    rows = obs.drops.rows if obs.drops else []
    first = replace(obs, namespaces=(), drops=replace(obs.drops, rows=[r for r in rows if r.netns not in split])
                    if obs.drops else None)
    out = [first]
    for inode, c in split.items():
        mine = [r for r in rows if r.netns == inode]
        settings = _ns_settings(c, obs.others.get(inode))
        drops = replace(obs.drops, rows=mine, counters=[], total=sum(r.count for r in mine)) if obs.drops else None
        out.append(Observation(drops, None, Window(dict(c.snmp), dict(c.conntrack)), settings, obs.elapsed_ns,
                               {}, True, (), obs.sources, other_namespace=True))
    return out


def _run(scope: Observation) -> list[Finding]:
    found = [f for rule in RULES if rule.id != "unexplained-drops" for f in rule.check(scope)]
    fired = {f.id for f in found}
    reasons, counters = unexplained.claimed((_BY_ID[i].reasons, _BY_ID[i].counters) for i in fired)
    return found + unexplained.check(scope, reasons, counters)


def diagnose(obs: Observation) -> list[Finding]:
    """Every rule's findings on every scope, chains folded, worst first (severity, then the first evidence)."""
    found = [f for scope in scopes(obs) for f in _run(scope)]
    found = chains.fold(found)
    return sorted(found, key=lambda f: (-RANK[f.severity], -(f.evidence[0].value if f.evidence else 0), f.id))


def counts(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}


def at_least(findings: list[Finding], level: str) -> bool:
    return any(RANK[f.severity] >= RANK[level] for f in findings)
