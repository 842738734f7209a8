"""The doctor's settings readers on fixtures, its JSON records, its text report and its command line."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from click.testing import CliRunner

from netpath.cli.main import cli, main
from netpath.diagnose.rules import RULE_IDS, Observation, diagnose
from netpath.kernel import procnet, settings
from netpath.model import Diagnosis, DropHealth, DropRow, DropSnapshot, Owner, SockInfo, Window
from netpath.render import doctor_view, records

ETHTOOL_G = """Ring parameters for eth0:
Pre-set maximums:
RX:\t\t4096
RX Mini:\tn/a
RX Jumbo:\tn/a
TX:\t\t4096
Current hardware settings:
RX:\t\t256
RX Mini:\tn/a
RX Jumbo:\tn/a
TX:\t\t256
"""
ETHTOOL_K = """Features for eth0:
rx-checksumming: on [fixed]
tx-checksumming: on
generic-receive-offload: on
large-receive-offload: off [fixed]
rx-gro-hw: off
"""
CONNTRACK = """entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop
00000008  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 0000000c 00000001
00000008  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000006 00000000
"""
SNMP = """Ip: Forwarding DefaultTTL InReceives ReasmTimeout ReasmReqds ReasmOKs ReasmFails
Ip: 2 64 100 25 25 0 25
Udp: InDatagrams NoPorts InErrors RcvbufErrors InCsumErrors
Udp: 10 40 33 0 33
"""


def test_ethtool_rings_and_features() -> None:
    assert settings.parse_ethtool_rings(ETHTOOL_G) == (256, 4096)
    assert settings.parse_ethtool_rings("") == (None, None)
    assert dict(settings.parse_ethtool_features(ETHTOOL_K)) == {
        "rx-checksumming": "on", "generic-receive-offload": "on", "large-receive-offload": "off", "rx-gro-hw": "off"}


def test_conntrack_stat_sums_cpus_and_keeps_entries_once() -> None:
    got = procnet.parse_conntrack_stats(CONNTRACK)
    assert got["entries"] == 8 and got["drop"] == 18 and got["early_drop"] == 1


def test_snmp_all_fields_with_nstat_names() -> None:
    got = procnet.parse_snmp(SNMP)
    assert got["IpReasmFails"] == 25 and got["UdpInCsumErrors"] == 33 and got["UdpNoPorts"] == 40


def test_sysctls_from_a_fixture_root_with_a_dotted_interface_name(tmp_path: Path) -> None:
    (tmp_path / "net/core").mkdir(parents=True)
    (tmp_path / "net/core/rmem_max").write_text("212992\n")
    (tmp_path / "net/ipv4/conf/eth0.100").mkdir(parents=True)
    (tmp_path / "net/ipv4/conf/eth0.100/rp_filter").write_text("2\n")
    (tmp_path / "net/ipv4").joinpath("tcp_rmem").write_text("4096\t131072\t6291456\n")
    got = settings.read_sysctls(["net.core.rmem_max", "net.ipv4.conf.eth0.100.rp_filter", "net.ipv4.tcp_rmem",
                                 "net.core.somaxconn"], tmp_path)
    assert got == {"net.core.rmem_max": "212992", "net.ipv4.conf.eth0.100.rp_filter": "2",
                   "net.ipv4.tcp_rmem": "4096 131072 6291456"}


def test_rps_and_irq_affinity_from_fixture_roots(tmp_path: Path) -> None:
    q = tmp_path / "eth0/queues"
    for name, mask in (("rx-0", "3\n"), ("rx-1", "0\n")):
        (q / name).mkdir(parents=True)
        (q / name / "rps_cpus").write_text(mask)
    (q / "tx-0").mkdir()
    assert settings.read_rps("eth0", tmp_path) == (("rx-0", "3"), ("rx-1", "0"))
    (tmp_path / "irq/38").mkdir(parents=True)
    (tmp_path / "irq/38/smp_affinity_list").write_text("0-1\n")
    assert settings.read_irq_affinity([38, 39], tmp_path) == ((38, "0-1"),)


def _diag_reply(port: int, inode: int, rcvbuf: int, listening: bool) -> bytes:
    msg = settings.DIAG_MSG.pack(socket.AF_INET, 10 if listening else 7, 0, 0, port.to_bytes(2, "big"), b"\0\0",
                                 socket.inet_aton("10.0.0.2") + bytes(12), bytes(16), 0, bytes(8), 0, 3, 1, 0, inode)
    mem = struct.pack("=9I", 768, rcvbuf, 0, 0, 0, 0, 0, 0, 17)
    attr = settings.NLA.pack(4 + len(mem), settings.INET_DIAG_SKMEMINFO) + mem
    body = msg + attr
    return settings.NLMSG.pack(16 + len(body), settings.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def test_sock_diag_replies_decode_to_socket_state() -> None:
    data = _diag_reply(5301, 9001, 2304, False) + settings.NLMSG.pack(16, settings.NLMSG_DONE, 2, 1, 0)
    got, done = settings.parse_diag(data, "udp")
    assert done
    s = got[0]
    assert (s.laddr, s.lport, s.inode, s.rcvbuf, s.rmem_alloc, s.drops, s.listening) == (
        "10.0.0.2", 5301, 9001, 2304, 768, 17, False)
    listen, _ = settings.parse_diag(_diag_reply(80, 7, 0, True), "tcp")
    assert listen[0].listening and (listen[0].rqueue, listen[0].wqueue) == (3, 1)


def test_rule_and_filter_counts() -> None:
    save = "*filter\n-A INPUT -p udp --dport 53 -j DROP\n-A INPUT -j ACCEPT\n-A FORWARD -j REJECT\nCOMMIT\n"
    assert settings.count_drop_rules(save) == 2
    assert settings.count_drop_rules("table inet f {\n chain in {\n  tcp dport 22 drop\n }\n}\n") == 1
    tc = ("filter protocol ip pref 49152 u32 chain 0 \n"
          "filter protocol ip pref 49152 u32 chain 0 fh 800: ht divisor 1 \n"
          "filter protocol ip pref 49152 u32 chain 0 fh 800::800 order 2048 key ht 800 bkt 0 terminal flowid \n"
          "  match 00000000/00000000 at 0\n\taction order 1: mirred (Egress Redirect to device d0) stolen\n")
    assert settings.count_tc_filters(tc) == 1


# ---------------------------------------------------------------- records and the text report

OWNER = Owner(SockInfo(9001, "udp", 4, "10.201.7.2", 5301), 4211, "python3", "/user.slice/dns.scope", "dns")
ROW = DropRow("SOCKET_RCVBUFF", 2, "udp_queue_rcv_one_skb+0x1f4", "nn0", 2, 4026532500, "udp", 283, owner=OWNER,
              netns_label="npdr1")


def _diagnosis() -> Diagnosis:
    from tests.unit.test_doctor_rules import SETTINGS

    snap = DropSnapshot([ROW], [], DropHealth(), 283, 6_000_000_000)
    found = diagnose(Observation(snap, None, Window(snmp={"UdpRcvbufErrors": 283}), SETTINGS, 6_000_000_000))
    return Diagnosis(tuple(found), RULE_IDS, 6_000_000_000, 283)


def test_finding_record_has_the_contract_fields() -> None:
    rec = records.finding(_diagnosis().findings[0])
    assert list(rec)[:2] == ["schema", "type"] and rec["schema"] == "netpath/1" and rec["type"] == "finding"
    assert {"id", "severity", "title", "evidence", "where", "knobs", "why"} <= set(rec)
    assert set(rec["where"]) >= {"iface", "netns", "netns_label", "pid", "comm", "cgroup", "container", "laddr",
                                 "lport"}
    assert rec["where"]["container"] == "dns" and rec["evidence"][0] == {
        "name": "dropped at the socket's receive buffer", "value": 283, "unit": "packets",
        "counter": "kfree_skb reason SOCKET_RCVBUFF"}
    assert all(set(k) == {"name", "value", "advice"} for k in rec["knobs"])
    summary = records.doctor_summary(_diagnosis(), "duration", {"info": 0, "warn": 1, "crit": 0}, "warn", True)
    assert summary["type"] == "summary" and summary["findings"] == {"info": 0, "warn": 1, "crit": 0}
    assert summary["threshold"] == {"fail_on": "warn", "crossed": True}


def test_text_report_fits_80_columns_and_names_evidence_why_and_knob() -> None:
    diag = _diagnosis()
    lines = doctor_view.report_lines(diag, {"info": 0, "warn": 1, "crit": 0})
    assert max(map(len, lines)) <= 80
    text = " ".join(" ".join(lines).split())
    assert "WARN socket-rcvbuf-overflow: python3[4211] drops datagrams" in text
    assert "283 dropped at the socket's receive buffer (= kfree_skb reason SOCKET_RCVBUFF)" in text
    assert "net.core.rmem_max = 212992" in text and "why" in text
    healthy = doctor_view.report_lines(Diagnosis((), RULE_IDS, 10_000_000_000, 0), {"info": 0, "warn": 0,
                                                                                   "crit": 0})
    assert healthy[0].startswith("netpath doctor: no problems found in 10.0 s")
    assert any("checked: socket-rcvbuf-overflow" in line for line in healthy)


def test_bad_options_exit_2_before_anything_loads(capsys) -> None:  # type: ignore[no-untyped-def]
    for args in (["--fail-on", "bad"], ["--duration", "0"], ["--duration", "nan"], ["--port", "0"],
                 ["--netns", "no-such-ns-xyz"]):
        assert main(["doctor", *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("netpath: error:"), err


def test_help_lists_every_rule() -> None:
    out = CliRunner().invoke(cli, ["doctor", "--help"]).output
    assert "--fail-on" in out and "--duration" in out
    flat = " ".join(out.split()).replace("- ", "-")  # click wraps after a hyphen
    for rid in RULE_IDS:
        assert rid in flat, rid


def test_syn_queues_group_half_open_requests_by_the_listener_they_were_sent_to() -> None:
    from netpath.model import SocketState

    reqs = [SocketState("tcp", 4, "10.1.0.2", 443, 0, False, 0, 0) for _ in range(9)]
    reqs += [SocketState("tcp", 6, "fd00::2", 443, 0, False, 0, 0),
             SocketState("tcp", 4, "10.1.0.2", 80, 0, False, 0, 0)]
    assert settings.syn_queues(reqs) == (("10.1.0.2", 443, 9), ("10.1.0.2", 80, 1), ("fd00::2", 443, 1))
