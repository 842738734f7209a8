"""Issue 31: each corrected piece of the doctor's advice, pinned; the severity table; unexplained-drops; the new
rules on recorded numbers; cause chains. The kernel facts behind each piece of advice are cited in the rule's
own comment (netpath/diagnose/*.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from netpath.diagnose import severity
from netpath.diagnose.rules import RULES, Observation, diagnose
from netpath.model import (
    Counter,
    DropHealth,
    DropRow,
    DropSnapshot,
    Latency,
    NetnsCounters,
    NicSettings,
    Owner,
    Settings,
    SocketState,
    SockInfo,
    StageRow,
    TraceHealth,
    TraceSnapshot,
    Window,
)

NS = 4026532600
SECOND = 1_000_000_000
SYSCTLS = {
    "net.core.rmem_max": "212992", "net.core.rmem_default": "212992", "net.core.somaxconn": "4096",
    "net.ipv4.tcp_rmem": "4096 131072 6291456", "net.ipv4.tcp_moderate_rcvbuf": "1",
    "net.ipv4.tcp_syncookies": "1", "net.ipv4.tcp_max_syn_backlog": "256", "net.ipv4.tcp_mem": "88 117 176",
    "net.ipv4.udp_mem": "176 235 352", "net.core.netdev_budget": "300", "net.core.netdev_budget_usecs": "2000",
    "net.core.netdev_max_backlog": "1000", "net.core.flow_limit_cpu_bitmap": "3", "net.core.flow_limit_table_len":
    "4096", "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.nn0.rp_filter": "2", "net.ipv4.ipfrag_time": "30",
    "net.ipv4.ipfrag_max_dist": "64", "net.ipv4.ipfrag_high_thresh": "4194304", "net.ipv6.ip6frag_time": "60",
    "net.ipv6.ip6frag_high_thresh": "4194304", "net.ipv6.ip6frag_low_thresh": "3145728",
    "net.netfilter.nf_conntrack_max": "1000", "net.netfilter.nf_conntrack_count": "12",
    "net.netfilter.nf_conntrack_buckets": "1024", "net.core.busy_read": "0", "net.core.busy_poll": "0",
}
SETTINGS = Settings(NS, "pod1", SYSCTLS, (), (NicSettings("nn0"),), 2, 3, {"nn0": 0}, {"nn0": 2})


def row(reason: str, count: int, iface: str | None = "nn0", proto: str | None = "udp", owner: Owner | None = None,
        location: str = "f+0x1") -> DropRow:
    return DropRow(reason, 2, location, iface, 2, NS, proto, count, owner=owner, netns_label="pod1")


def obs(*rows: DropRow, counters: tuple[Counter, ...] = (), window: Window | None = None,
        settings: Settings = SETTINGS, trace: TraceSnapshot | None = None, seconds: int = 10) -> Observation:
    snap = DropSnapshot(list(rows), list(counters), DropHealth(), sum(r.count for r in rows), seconds * SECOND)
    return Observation(snap, trace, window or Window(), settings, seconds * SECOND)


def only(found: list, rule: str):  # type: ignore[no-untyped-def]
    (f,) = [f for f in found if f.id == rule]
    return f


def knobs(f) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    return {k.name: k.value for k in f.knobs}


def advice(f, name: str) -> str:  # type: ignore[no-untyped-def]
    return next(k.advice for k in f.knobs if k.name == name)


def ev(f, counter: str) -> int:  # type: ignore[no-untyped-def]
    return next(e.value for e in f.evidence if e.counter == counter)


# ---------------------------------------------------------------- the severity table


def test_severity_rises_with_rate_or_share() -> None:
    assert severity.grade("loss", 10, 10.0, 100_000) == "warn"
    assert severity.grade("loss", 10_000, 10.0) == "crit"  # 1000/s
    assert severity.grade("loss", 60, 10.0, 1000) == "crit"  # 6% of what arrived
    assert severity.grade("unexplained", 3, 10.0, 1_000_000) == "info"  # 0.3/s, 0.0003%
    assert severity.grade("unexplained", 20, 10.0, 1_000_000) == "warn"  # 2/s
    assert severity.grade("unexplained", 5, 10.0, 1000) == "info"  # 0.5%, but 5 drops are too few for a share
    assert severity.grade("unexplained", 12, 100.0, 1000) == "warn"  # 1.2%
    assert severity.grade("loss", 3, 10.0, 6) == "warn"  # 3 of 6 is not 50% of anything yet
    assert severity.grade("policy", 400, 10.0, 1000) == "info" and severity.grade("policy", 600, 10.0, 1000) == "warn"
    assert severity.grade("refused", 5, 10.0, None) == "warn" and severity.grade("refused", 100, 10.0) == "crit"


def test_the_man_page_prints_the_one_severity_table() -> None:
    page = (Path(__file__).resolve().parents[2] / "man/man8/netpath-doctor.8").read_text().replace("\\-", "-")
    table = page[page.index(".SH SEVERITY POLICIES"):page.index(".TE")]
    for pid, base, warn, crit in severity.table_rows():
        assert f"{pid}\t{base}\t{warn}\t{crit}\n" in table, pid
    for rule in RULES:
        assert f".B {rule.id}\nTrigger: {rule.trigger}.\nKnob: {rule.knob}.\nSeverity: {rule.severity}.\n" in page


# ---------------------------------------------------------------- every drop accounted for


def test_a_drop_no_rule_claims_is_unexplained_never_no_problems() -> None:
    found = diagnose(obs(row("IP_INHDR", 4, location="ip_rcv_core+0x1d2"),
                         window=Window(snmp={"IpInHdrErrors": 4, "IpInReceives": 100_000})))
    f = only(found, "unexplained-drops")
    assert f.severity == "info"  # 0.4/s, 0.004% of what arrived
    assert f.evidence[0].value == 4 and f.evidence[0].counter == "kfree_skb reason IP_INHDR"
    assert f.evidence[1].name == "ip_rcv_core+0x1d2 on nn0"
    assert ev(f, "nstat IpInHdrErrors") == 4  # the same drops: in the row's finding, not a second one
    assert knobs(f)["netpath drops"] == ("netpath drops --netns pod1 --iface nn0 --reason IP_INHDR "
                                         "--by reason,location,iface,flow,socket --stack --duration 30")
    assert f.where.netns == NS and f.where.iface == "nn0"


def test_unexplained_severity_uses_rate_and_share() -> None:
    many = diagnose(obs(row("IP_INNOROUTES", 50), window=Window(rx_packets={"nn0": 1000})))
    assert only(many, "unexplained-drops").severity == "crit"  # 5% of the interface's packets
    burst = diagnose(obs(row("PKT_TOO_SMALL", 30), window=Window(rx_packets={"nn0": 10_000_000})))
    assert only(burst, "unexplained-drops").severity == "warn"  # 3/s


def test_tcp_discarding_what_it_already_has_is_never_above_info() -> None:
    found = diagnose(obs(row("TCP_OLD_DATA", 500, proto="tcp"), row("TCP_OLD_SEQUENCE", 300, proto="tcp")))
    assert [(f.id, f.severity) for f in found] == [("unexplained-drops", "info")] * 2


def test_counter_only_drops_are_unexplained_too() -> None:
    found = diagnose(obs(window=Window(snmp={"IpExtInTruncatedPkts": 7, "Ip6InNoRoutes": 2})))
    f = only(found, "unexplained-drops")
    assert {e.counter: e.value for e in f.evidence} == {"nstat IpExtInTruncatedPkts": 7, "nstat Ip6InNoRoutes": 2}


def test_claimed_drops_are_not_unexplained() -> None:
    found = diagnose(obs(row("NO_SOCKET", 40), window=Window(snmp={"UdpNoPorts": 40})))
    assert [f.id for f in found] == ["no-listener"]


def test_a_rule_that_did_not_fire_claims_nothing() -> None:
    """NETFILTER_DROP rows wholly explained by conntrack refusals: conntrack-full fires and claims them;
    the ListenDrops of a listen-overflow are claimed by it."""
    found = diagnose(obs(row("NETFILTER_DROP", 9, proto="tcp"), window=Window(conntrack={"drop": 9})))
    assert [f.id for f in found] == ["conntrack-full"]
    found = diagnose(obs(window=Window(snmp={"TcpExtListenOverflows": 3, "TcpExtListenDrops": 3})))
    assert [f.id for f in found] == ["listen-overflow"]


# ---------------------------------------------------------------- socket-rcvbuf-overflow: TCP vs UDP

UDP_OWNER = Owner(SockInfo(7001, "udp", 4, "10.1.0.2", 53), 300, "dns", None, None)
TCP_OWNER = Owner(SockInfo(7002, "tcp", 4, "10.1.0.2", 8080), 301, "web", None, None)


def test_udp_buffer_advice_is_so_rcvbuf_capped_at_twice_rmem_max() -> None:
    sock = SocketState("udp", 4, "10.1.0.2", 53, 7001, False, 0, 0, 425984, 425000, 9)
    f = only(diagnose(obs(row("SOCKET_RCVBUFF", 90, owner=UDP_OWNER),
                          settings=replace(SETTINGS, sockets=(sock,)))), "socket-rcvbuf-overflow")
    assert list(knobs(f)) == ["SO_RCVBUF", "net.core.rmem_max", "net.core.rmem_default"]
    assert "2 x net.core.rmem_max" in advice(f, "SO_RCVBUF") and "at that cap" in advice(f, "SO_RCVBUF")
    assert advice(f, "net.core.rmem_max").startswith("raise it first")
    assert "net.ipv4.tcp_rmem" not in knobs(f)


def test_tcp_buffer_advice_is_tcp_rmem_and_no_fixed_so_rcvbuf() -> None:
    """A TCP socket's buffer above tcp_rmem's max was set with SO_RCVBUF (autotuning never goes there)."""
    locked = SocketState("tcp", 4, "10.1.0.2", 8080, 7002, False, 0, 0, 8_000_000, 7_900_000)
    f = only(diagnose(obs(row("TCP_ZEROWINDOW", 40, proto="tcp", owner=TCP_OWNER),
                          settings=replace(SETTINGS, sockets=(locked,)))), "tcp-rcvq-drop")
    names = list(knobs(f))
    assert names[0] == "net.ipv4.tcp_rmem" and "rmem_max does not limit" in advice(f, "net.ipv4.tcp_rmem")
    assert "autotuning off (SOCK_RCVBUF_LOCK)" in advice(f, "SO_RCVBUF") and "remove" in advice(f, "SO_RCVBUF")
    assert "net.core.rmem_max" not in names
    tuned = replace(locked, rcvbuf=2_000_000)
    f = only(diagnose(obs(row("TCP_ZEROWINDOW", 40, proto="tcp", owner=TCP_OWNER),
                          settings=replace(SETTINGS, sockets=(tuned,)))), "tcp-rcvq-drop")
    assert advice(f, "SO_RCVBUF").startswith("leave it unset on TCP")


def test_tcp_rcvq_drop_from_counters_alone_names_each_counter() -> None:
    win = Window(snmp={"TcpExtTCPRcvQDrop": 12, "TcpExtPruneCalled": 30, "TcpExtRcvCollapsed": 400,
                       "TcpInSegs": 50_000})
    f = only(diagnose(obs(window=win)), "tcp-rcvq-drop")
    assert f.severity == "warn" and ev(f, "nstat TcpExtTCPRcvQDrop") == 12 and ev(f, "nstat TcpExtRcvCollapsed") == 400
    assert "net.ipv4.tcp_mem" in knobs(f)


# ---------------------------------------------------------------- accept queue vs SYN queue


def test_syn_queue_overflow_is_told_apart_from_the_accept_queue() -> None:
    win = Window(snmp={"TcpExtListenOverflows": 2, "TcpExtListenDrops": 50, "TcpExtTCPReqQFullDrop": 48,
                       "TcpPassiveOpens": 10})
    found = diagnose(obs(window=win, settings=replace(SETTINGS, sysctls={**SYSCTLS, "net.ipv4.tcp_syncookies": "0"})))
    syn = only(found, "syn-queue-overflow")
    assert syn.severity == "crit"  # 4.8 refused a second
    assert ev(syn, "nstat TcpExtTCPReqQFullDrop") == 48
    assert ev(syn, "nstat TcpExtListenDrops - TcpExtListenOverflows") == 48
    assert knobs(syn)["net.ipv4.tcp_syncookies"] == "0" and "off here" in advice(syn, "net.ipv4.tcp_syncookies")
    assert "only with tcp_syncookies=0" in advice(syn, "net.ipv4.tcp_max_syn_backlog")
    acc = only(found, "listen-overflow")
    assert ev(acc, "nstat TcpExtListenOverflows") == 2
    assert "net.ipv4.tcp_max_syn_backlog" not in knobs(acc)


def test_a_listen_0_listener_is_found_full() -> None:
    listener = SocketState("tcp", 4, "10.1.0.2", 8080, 7005, True, 1, 0)
    f = only(diagnose(obs(window=Window(snmp={"TcpExtListenOverflows": 14, "TcpExtListenDrops": 14}),
                          settings=replace(SETTINGS, sockets=(listener,)))), "listen-overflow")
    assert f.where.lport == 8080 and knobs(f)["listen() backlog"] == "0"


def test_syncookies_answering_a_full_syn_queue_is_info() -> None:
    listener = SocketState("tcp", 4, "10.1.0.2", 443, 7003, True, 0, 128)
    found = diagnose(obs(window=Window(snmp={"TcpExtTCPReqQFullDoCookies": 300, "TcpPassiveOpens": 300}),
                         settings=replace(SETTINGS, sockets=(listener,))))
    syn = only(found, "syn-queue-overflow")
    assert syn.severity == "info" and syn.where.lport == 443 and knobs(syn)["listen() backlog"] == "128"


def test_syn_queue_overflow_names_the_listener_whose_syn_queue_is_full() -> None:
    """Of several listeners, the one sock_diag's SYN_RECV dump shows full (requests >= backlog) is named, with
    its queue; the counters alone cannot say which (they are per namespace)."""
    web = SocketState("tcp", 4, "0.0.0.0", 443, 7010, True, 0, 8)
    api = SocketState("tcp", 4, "10.1.0.2", 8443, 7011, True, 0, 128)
    win = Window(snmp={"TcpExtTCPReqQFullDrop": 32, "TcpExtListenDrops": 32})
    settings = replace(SETTINGS, sockets=(api, web), syn_queues=(("10.1.0.2", 443, 8), ("10.1.0.2", 8443, 3)))
    syn = only(diagnose(obs(window=win, settings=settings)), "syn-queue-overflow")
    assert (syn.where.laddr, syn.where.lport) == ("0.0.0.0", 443) and knobs(syn)["listen() backlog"] == "8"
    assert ev(syn, "sock_diag SYN_RECV requests (ss -tn state syn-recv)") == 8
    assert ev(syn, "sock_diag idiag_wqueue") == 8
    # no queue full at the end (the requests expired): with several listeners none is guessed
    quiet = replace(settings, syn_queues=(("10.1.0.2", 8443, 3),))
    syn = only(diagnose(obs(window=win, settings=quiet)), "syn-queue-overflow")
    assert syn.where.lport is None and knobs(syn)["listen() backlog"] is None


# ---------------------------------------------------------------- netfilter vs conntrack


def test_a_nat_port_clash_is_conntrack_insert_failed_not_a_full_table() -> None:
    """nf_ct_resolve_clash counts an unresolvable clash in drop and insert_failed; __nf_conntrack_confirm
    counts a chain too long in chaintoolong and insert_failed: each refused packet once, the table not full.
    The numbers of the live NAT clash (tests/live/test_doctor_rules_live.py): 3 SYNs, 3 and 3."""
    clash = Window(conntrack={"drop": 3, "insert_failed": 3})
    found = diagnose(obs(row("NETFILTER_DROP", 3, proto="tcp"), window=clash))
    assert [f.id for f in found] == ["conntrack-insert-failed"]
    f = found[0]
    assert ev(f, "/proc/net/stat/nf_conntrack insert_failed") == 3
    assert ev(f, "/proc/net/stat/nf_conntrack insert_failed - chainlength") == 3
    # a full table besides: its share of drop is what the clashes leave
    both = Window(conntrack={"drop": 10, "insert_failed": 5, "chaintoolong": 2})
    found = diagnose(obs(row("NETFILTER_DROP", 12, proto="tcp"), window=both))
    assert sorted(f.id for f in found) == ["conntrack-full", "conntrack-insert-failed"]
    assert ev(only(found, "conntrack-full"), "/proc/net/stat/nf_conntrack drop - (insert_failed - chainlength)") == 7
    assert ev(only(found, "conntrack-insert-failed"), "/proc/net/stat/nf_conntrack chainlength") == 2


def test_netfilter_drop_leaves_conntrack_refusals_to_conntrack_and_keeps_early_drop() -> None:
    """early_drop evicts an entry and drops no packet: it is not subtracted (it was before issue 31)."""
    win = Window(conntrack={"early_drop": 500, "insert_failed": 4, "invalid": 6}, rx_packets={"nn0": 10_000})
    found = diagnose(obs(row("NETFILTER_DROP", 10), window=win))
    nf = only(found, "netfilter-drop")
    assert nf.evidence[0].value == 6  # 10 - 4 insert failures
    assert ev(nf, "/proc/net/stat/nf_conntrack invalid") == 6
    ins = only(found, "conntrack-insert-failed")
    assert ev(ins, "/proc/net/stat/nf_conntrack insert_failed") == 4
    assert "--random-fully" in ins.knobs[0].advice


# ---------------------------------------------------------------- tc egress, qdisc drops


def test_tc_egress_drops_point_at_egress_and_qdisc_drops_at_the_qdisc() -> None:
    f = only(diagnose(obs(row("TC_EGRESS", 20))), "tc-drop")
    assert list(knobs(f)) == ["tc filter show dev nn0 egress"] and knobs(f)["tc filter show dev nn0 egress"] == (
        "2 filters")
    q = only(diagnose(obs(row("QDISC_DROP", 20), counters=(Counter("qdisc", "pfifo 1:0 drops", 20, "nn0"),))),
             "tc-drop")
    assert list(knobs(q)) == ["tc -s qdisc show dev nn0"] and "limit" in q.knobs[0].advice
    assert ev(q, "tc -s qdisc show dev nn0") == 20 and "egress" in q.title
    i = only(diagnose(obs(row("TC_INGRESS", 20))), "tc-drop")
    assert list(knobs(i)) == ["tc filter show dev nn0 ingress"]


# ---------------------------------------------------------------- rp_filter's effective mode


def test_rp_filter_says_the_effective_mode() -> None:
    loose = only(diagnose(obs(row("IP_RPFILTER", 5))), "rp-filter")  # all=0, nn0=2 -> loose
    assert "(loose)" in loose.title and "loose mode" in loose.why and "strict" not in loose.why
    strict = replace(SETTINGS, sysctls={**SYSCTLS, "net.ipv4.conf.all.rp_filter": "1",
                                        "net.ipv4.conf.nn0.rp_filter": "0"})
    f = only(diagnose(obs(row("IP_RPFILTER", 5), settings=strict)), "rp-filter")
    assert "(strict)" in f.title and "strict mode" in f.why


# ---------------------------------------------------------------- backlog flow limit, NAPI budget


def test_backlog_overflow_tells_flow_limit_drops_apart() -> None:
    win = Window(softnet={0: {"processed": 9000, "dropped": 400, "time_squeeze": 0, "flow_limit": 380},
                          1: {"processed": 100, "dropped": 0, "time_squeeze": 0, "flow_limit": 0}})
    f = only(diagnose(obs(row("CPU_BACKLOG", 400), window=win)), "backlog-overflow")
    assert ev(f, "/proc/net/softnet_stat flow_limit_count (column 11)") == 380
    assert "flow limit" in f.title and "single flow" in advice(f, "net.core.flow_limit_cpu_bitmap")


def test_napi_budget_squeeze_says_which_limit_binds() -> None:
    # 50 squeezes but only 3000 packets on CPU 0: at most 10 runs can have spent a 300-packet budget
    on_time = Window(softnet={0: {"processed": 3000, "dropped": 0, "time_squeeze": 50}})
    f = only(diagnose(obs(window=on_time)), "napi-budget-squeeze")
    assert ev(f, "time_squeeze - processed / netdev_budget, per CPU") == 40
    assert "time exhausted" in f.title and f.knobs[0].name == "net.core.netdev_budget_usecs"
    full = Window(softnet={0: {"processed": 90_000, "dropped": 0, "time_squeeze": 50}})
    g = only(diagnose(obs(window=full)), "napi-budget-squeeze")
    assert "packet budget" in g.title and g.knobs[0].name == "net.core.netdev_budget"


def test_softirq_wait_advises_spreading_threaded_napi_and_busy_polling_with_values() -> None:
    stage = StageRow("softirq_wait", "irq:softirq_raise", "raw_tracepoint", Latency(count=900, p99_ns=4_000_000))
    nic = NicSettings("eth0", rps_cpus=(("rx-0", "0"),), irqs=((30, "0"),), threaded="0")
    found = diagnose(obs(window=Window(rx_packets={"eth0": 9000}), settings=replace(SETTINGS, nics=(nic,)),
                         trace=TraceSnapshot((stage,), (), {}, TraceHealth(), 10 * SECOND)))
    f = only(found, "softirq-wait")
    assert knobs(f) == {"/sys/class/net/eth0/queues/rx-*/rps_cpus": "rx-0=0", "/proc/irq/N/smp_affinity_list": "30:0",
                        "/sys/class/net/eth0/threaded": "0", "net.core.busy_read": "0", "net.core.busy_poll": "0"}


# ---------------------------------------------------------------- reassembly


def test_frag_too_far_names_ipfrag_max_dist() -> None:
    f = only(diagnose(obs(row("FRAG_TOO_FAR", 8), window=Window(snmp={"IpReasmFails": 2}))), "reassembly-failure")
    assert f.knobs[0].name == "net.ipv4.ipfrag_max_dist" and knobs(f)["net.ipv4.ipfrag_max_dist"] == "64"
    assert "reordering" in f.why


def test_ipv6_reassembly_names_the_ip6frag_knobs() -> None:
    f = only(diagnose(obs(row("FRAG_REASM_TIMEOUT", 8, proto="ipv6"),
                          window=Window(snmp={"Ip6ReasmFails": 4, "Ip6ReasmTimeout": 4}))), "reassembly-failure")
    assert list(knobs(f)) == ["net.ipv6.ip6frag_time", "net.ipv6.ip6frag_high_thresh", "net.ipv6.ip6frag_low_thresh"]


# ---------------------------------------------------------------- new rules


def test_conntrack_near_full_warns_before_any_refusal() -> None:
    near = replace(SETTINGS, sysctls={**SYSCTLS, "net.netfilter.nf_conntrack_count": "850"})
    f = only(diagnose(obs(settings=near)), "conntrack-near-full")
    assert f.severity == "warn" and ev(f, "sysctl net.netfilter.nf_conntrack_count") == 850
    assert not [x for x in diagnose(obs()) if x.id == "conntrack-near-full"]  # 12 of 1000


def test_proto_mem_pressure_from_udp_mem_errors_and_sockstat() -> None:
    win = Window(snmp={"UdpMemErrors": 70, "UdpInDatagrams": 2000})
    st = replace(SETTINGS, levels={"sockstat.UDP.mem": 360, "sockstat.TCP.mem": 2})
    f = only(diagnose(obs(row("PROTO_MEM", 70), window=win, settings=st)), "proto-mem-pressure")
    assert f.severity == "warn" and ev(f, "nstat UdpMemErrors + Udp6MemErrors") == 70
    assert ev(f, "/proc/net/sockstat UDP mem") == 360 and knobs(f)["net.ipv4.udp_mem"] == "176 235 352"
    quiet = only(diagnose(obs(settings=replace(SETTINGS, levels={"sockstat.UDP.mem": 240}))), "proto-mem-pressure")
    assert quiet.severity == "info"  # at the pressure value, nothing dropped


def test_socket_headroom_before_the_drops() -> None:
    udp = SocketState("udp", 4, "10.1.0.2", 53, 7001, False, 0, 0, 212992, 180000)
    listener = SocketState("tcp", 4, "10.1.0.2", 443, 7003, True, 110, 128)
    calm = SocketState("udp", 4, "10.1.0.2", 54, 7004, False, 0, 0, 212992, 2000)
    found = diagnose(obs(settings=replace(SETTINGS, sockets=(udp, listener, calm))))
    heads = [f for f in found if f.id == "socket-headroom"]
    by_port = {f.where.lport: f for f in heads}
    assert sorted(by_port) == [53, 443] and {f.severity for f in heads} == {"warn"}  # 85%, 86%
    assert ev(by_port[443], "sock_diag idiag_rqueue") == 110
    assert ev(by_port[53], "sock_diag skmeminfo rmem_alloc") == 180000


def test_link_errors_from_crc_and_carrier_changes() -> None:
    snap = (Counter("link", "rx_crc", 12, "eth0"), Counter("link", "rx_frame", 3, "eth0"))
    f = only(diagnose(obs(counters=snap, window=Window(rx_packets={"eth0": 100}, carrier_changes={"eth0": 2}))),
             "link-errors")
    assert f.severity == "crit"  # 15 of 100 frames damaged
    assert ev(f, "ip -s link rx_crc_errors") == 12 and ev(f, "/sys/class/net/eth0/carrier_changes") == 2
    flap = only(diagnose(obs(window=Window(carrier_changes={"nn0": 2}))), "link-errors")
    assert flap.severity == "warn" and "2 carrier changes" in flap.title


# ---------------------------------------------------------------- per namespace, chains


def test_every_namespace_is_its_own_scope() -> None:
    """A host-wide run: another namespace's counter-only drops are diagnosed there, with its label."""
    host = replace(SETTINGS, netns=4026531840, netns_label="host")
    pod = NetnsCounters(NS, 99, "pod1", True, {"TcpExtListenOverflows": 5, "TcpExtListenDrops": 5,
                                                "UdpRcvbufErrors": 3}, {}, {"net.netfilter.nf_conntrack_count": 0})
    o = replace(obs(settings=host), namespaces=(pod,))
    found = diagnose(o)
    acc = only(found, "listen-overflow")
    assert (acc.where.netns, acc.where.netns_label) == (NS, "pod1") and ev(acc, "nstat TcpExtListenOverflows") == 5
    un = only(found, "unexplained-drops")  # no drop row for the UDP errors: still accounted for
    assert un.where.netns_label == "pod1" and ev(un, "nstat UdpRcvbufErrors") == 3


def test_a_slow_reader_whose_socket_overflows_is_one_finding() -> None:
    owner = Owner(SockInfo(7001, "udp", 4, "10.1.0.2", 53), 300, "dns", None, None)
    slow = Latency(count=500, p99_ns=300_000_000, max_ns=400_000_000)
    stage = StageRow("socket_queue", "sock:sk_data_ready", "raw_tracepoint", Latency(count=500),
                     owners=((owner, slow),))
    found = diagnose(obs(row("SOCKET_RCVBUFF", 200, owner=owner),
                         trace=TraceSnapshot((stage,), (), {}, TraceHealth(), 10 * SECOND)))
    assert [f.id for f in found] == ["socket-rcvbuf-overflow"]
    f = found[0]
    assert f.explains == ("slow-reader",) and "the reader is slow" in f.why
    assert any(e.name == "slow-reader: p99 time in the socket queue" and e.value == 300_000_000 for e in f.evidence)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.id)
def test_every_rule_is_quiet_on_a_quiet_window(rule) -> None:  # type: ignore[no-untyped-def]
    assert rule.check(obs()) == []


# every drop reason Linux 6.18 defines (netpath probes --reasons on the project VM)
REASONS_618 = """NOT_SPECIFIED NO_SOCKET SOCKET_CLOSE SOCKET_FILTER SOCKET_RCVBUFF UNIX_DISCONNECT UNIX_SKIP_OOB
PKT_TOO_SMALL TCP_CSUM UDP_CSUM NETFILTER_DROP OTHERHOST IP_CSUM IP_INHDR IP_RPFILTER UNICAST_IN_L2_MULTICAST
XFRM_POLICY IP_NOPROTO PROTO_MEM TCP_AUTH_HDR TCP_MD5NOTFOUND TCP_MD5UNEXPECTED TCP_MD5FAILURE TCP_AONOTFOUND
TCP_AOUNEXPECTED TCP_AOKEYNOTFOUND TCP_AOFAILURE SOCKET_BACKLOG TCP_FLAGS TCP_ABORT_ON_DATA TCP_ZEROWINDOW
TCP_OLD_DATA TCP_OVERWINDOW TCP_OFOMERGE TCP_RFC7323_PAWS TCP_RFC7323_PAWS_ACK TCP_RFC7323_TW_PAWS
TCP_RFC7323_TSECR TCP_LISTEN_OVERFLOW TCP_OLD_SEQUENCE TCP_INVALID_SEQUENCE TCP_INVALID_END_SEQUENCE
TCP_INVALID_ACK_SEQUENCE TCP_RESET TCP_INVALID_SYN TCP_CLOSE TCP_FASTOPEN TCP_OLD_ACK TCP_TOO_OLD_ACK
TCP_ACK_UNSENT_DATA TCP_OFO_QUEUE_PRUNE TCP_OFO_DROP IP_OUTNOROUTES BPF_CGROUP_EGRESS IPV6DISABLED
NEIGH_CREATEFAIL NEIGH_FAILED NEIGH_QUEUEFULL NEIGH_DEAD NEIGH_HH_FILLFAIL TC_EGRESS SECURITY_HOOK QDISC_DROP
QDISC_OVERLIMIT QDISC_CONGESTED CAKE_FLOOD FQ_BAND_LIMIT FQ_HORIZON_LIMIT FQ_FLOW_LIMIT CPU_BACKLOG XDP TC_INGRESS
UNHANDLED_PROTO SKB_CSUM SKB_GSO_SEG SKB_UCOPY_FAULT DEV_HDR DEV_READY FULL_RING NOMEM HDR_TRUNC TAP_FILTER
TAP_TXFILTER ICMP_CSUM INVALID_PROTO IP_INADDRERRORS IP_INNOROUTES IP_LOCAL_SOURCE IP_INVALID_SOURCE IP_LOCALNET
IP_INVALID_DEST PKT_TOO_BIG DUP_FRAG FRAG_REASM_TIMEOUT FRAG_TOO_FAR TCP_MINTTL IPV6_BAD_EXTHDR
IPV6_TOO_MANY_EXTHDRS IPV6_NDISC_FRAG IPV6_NDISC_HOP_LIMIT IPV6_NDISC_BAD_CODE IPV6_NDISC_BAD_OPTIONS
IPV6_NDISC_NS_OTHERHOST QUEUE_PURGE TC_COOKIE_ERROR PACKET_SOCK_ERROR TC_CHAIN_NOTFOUND TC_RECLASSIFY_LOOP
VXLAN_INVALID_HDR VXLAN_VNI_NOT_FOUND MAC_INVALID_SOURCE VXLAN_ENTRY_EXISTS NO_TX_TARGET IP_TUNNEL_ECN
TUNNEL_TXINFO LOCAL_MAC ARP_PVLAN_DISABLE MAC_IEEE_MAC_CONTROL BRIDGE_INGRESS_STP_STATE CAN_RX_INVALID_FRAME
CANFD_RX_INVALID_FRAME CANXL_RX_INVALID_FRAME PFMEMALLOC DUALPI2_STEP_DROP PSP_INPUT PSP_OUTPUT RECURSION_LIMIT
SKB_RX_HEADROOM""".split()


@pytest.mark.parametrize("proto", ["udp", "tcp", None])
def test_no_drop_reason_of_the_kernel_ends_as_no_problems_found(proto: str | None) -> None:
    """Whatever the reason, a dropped packet gives at least one finding, and its count is in one."""
    for reason in REASONS_618:
        found = diagnose(obs(row(reason, 7, proto=proto)))
        assert found, reason
        assert any(e.value == 7 and "kfree_skb" in (e.counter or "") for f in found for e in f.evidence), reason
