from netpath.collect import counters
from netpath.kernel import procnet, softnet
from netpath.model import Counter
from netpath.render import records

SNMP = """Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards
Ip: 1 64 100 2 3 0 4 5
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 10 3000 7 1 6 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 99 0 0 0 0 0 0 0
"""
NETSTAT = """TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPBacklogDrop
TcpExt: 0 11 12 13
"""
SNMP6 = "Ip6InReceives  5\nUdp6RcvbufErrors  9\nUdp6NoPorts  1\n"
SOFTNET = (
    "00000010 00000001 00000002 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000003 "
    "00000000 00000000\n"
    "00000020 00000000 00000005 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 "
    "00000000 00000001\n"
)


def test_snmp_picks_drop_counters_with_nstat_names():
    got = counters.parse_snmp(SNMP) | counters.parse_snmp(NETSTAT)
    assert got["UdpNoPorts"] == 3000
    assert got["UdpRcvbufErrors"] == 6
    assert got["IpInDiscards"] == 5
    assert got["TcpExtListenDrops"] == 12 and got["TcpExtListenOverflows"] == 11
    assert "UdpLiteNoPorts" not in got and "IpInReceives" not in got


def test_snmp6():
    assert counters.parse_snmp6(SNMP6) == {"Udp6RcvbufErrors": 9, "Udp6NoPorts": 1}


def test_softnet_per_cpu_hex_columns():
    got = procnet.parse_softnet(SOFTNET)
    assert softnet.parse_softnet is procnet.parse_softnet  # one parser
    assert {k: got[0][k] for k in ("dropped", "time_squeeze", "flow_limit")} == {"dropped": 1, "time_squeeze": 2,
                                                                                 "flow_limit": 3}
    assert {k: got[1][k] for k in ("dropped", "time_squeeze", "flow_limit")} == {"dropped": 0, "time_squeeze": 5,
                                                                                 "flow_limit": 0}
    assert set(got[0]) == {"processed", "dropped", "time_squeeze", "received_rps", "flow_limit"}


def test_the_readers_keep_their_fields_of_the_one_parse():
    full = procnet.parse_snmp(SNMP) | procnet.parse_netstat(NETSTAT)
    kept = counters.parse_snmp(SNMP) | counters.parse_snmp(NETSTAT)
    assert kept and all(full[k] == v for k, v in kept.items()) and len(full) > len(kept)
    assert counters.parse_conntrack(CONNTRACK).items() <= procnet.parse_conntrack_stats(CONNTRACK).items()
    assert counters.parse_snmp6(SNMP6).items() <= procnet.parse_snmp6(SNMP6).items()


def test_deltas_per_interval_and_totals():
    key = ("snmp", "UdpNoPorts", None, None)
    cpu = ("softnet", "dropped", None, 1)
    d = counters.CounterDeltas({key: 100, cpu: 5})
    assert d.step({key: 130, cpu: 5}) == [Counter("snmp", "UdpNoPorts", 30)]
    assert d.step({key: 130, cpu: 9}) == [Counter("softnet", "dropped", 4, None, 1)]
    assert d.totals() == [Counter("softnet", "dropped", 4, None, 1), Counter("snmp", "UdpNoPorts", 30)]
    assert records.counter(Counter("link", "rx_missed", 2, iface="eth0")) == {
        "source": "link", "name": "rx_missed", "iface": "eth0", "count": 2}


# /proc/net/stat/nf_conntrack as 6.18 prints it, cut to the first 13 columns
CONNTRACK = """entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop x
00000003  00000000 00000000 00000000 0000000a 00000000 00000000 00000000 00000000 00000001 00000002 00000003 0
00000003  00000000 00000000 00000000 00000010 00000000 00000000 00000000 00000000 00000000 00000100 00000000 0
"""


def test_conntrack_sums_its_per_cpu_hex_rows_by_the_header_names():
    # the "chainlength" column is st->chaintoolong (ct_cpu_seq_show): read under that name
    assert counters.parse_conntrack(CONNTRACK) == {"invalid": 26, "insert_failed": 1, "drop": 258, "early_drop": 3,
                                                   "chaintoolong": 0}
    assert counters.parse_conntrack("") == {}


def test_counter_only_when_counters_rose_and_no_event_matched():
    rose = [Counter("snmp", "TcpExtListenOverflows", 12), Counter("softnet", "time_squeeze", 4, cpu=0),
            Counter("conntrack", "drop", 3)]
    assert [c.name for c in counters.counter_only(rose, 0)] == ["TcpExtListenOverflows", "drop"]
    assert counters.counter_only(rose, 1) == []


def test_counter_only_is_said_in_json_table_and_text():
    from netpath.model import DropHealth, DropSnapshot
    from netpath.render import drops_view

    rose = [Counter("snmp", "TcpExtListenOverflows", 12), Counter("snmp", "TcpExtListenDrops", 12)]
    snap = DropSnapshot([], rose, DropHealth(), 0, 10**9, counter_only=counters.counter_only(rose, 0))
    assert records.interval(snap, 1)["counter_only"] == ["snmp:TcpExtListenOverflows", "snmp:TcpExtListenDrops"]
    text = "\n".join(drops_view.plain_lines(snap, "t"))
    assert "no drop event, but kernel drop counters rose: TcpExtListenOverflows +12" in text
    assert "--fail-on-drops count drop events only" in text.replace("\n    ", " ")
    quiet = DropSnapshot([], [], DropHealth(), 0, 10**9)
    assert "counter_only" not in records.interval(quiet, 1)


def test_the_man_page_says_what_total_and_fail_on_drops_count():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "man/man8/netpath-drops.8").read_text()
    assert "counter_only" in page and "conntrack" in page
    assert "count drop events" in page
