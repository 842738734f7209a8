"""Sessions against a fake BPF program: map decoding, deltas, samples, slow events and loss accounting."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from fake_bpf import U64, FakeProgram, loader
from test_kernel_facts import DATA, make_root

from netpath import bpf, contract
from netpath.collect import counters as counters_mod
from netpath.collect import drops as drops_mod
from netpath.collect import hist
from netpath.collect import trace as trace_mod
from netpath.kernel import irqs
from netpath.kernel.facts import KernelFacts
from netpath.kernel.reasons import from_tracepoint
from netpath.kernel.tracefs import parse_format
from netpath.links import IfaceNames
from netpath.model import DropSample, SlowPacket
from netpath.plan import make_plan
from netpath.query import Filters
from netpath.render import records
from netpath.stages import STAGE_IDS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SOURCE = bpf.ProgramSource(["where.c"], {})
OFFSETS = {name: 8 for name in trace_mod.NEEDED}
NAMES = {(1, 1): "lo", (77, 4): "veth1"}


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch):
    """No netlink, no /proc: counters and interface names come from the test."""
    readings = iter([{("snmp", "UdpNoPorts", None, None): 10}, {("snmp", "UdpNoPorts", None, None): 13},
                     {("snmp", "UdpNoPorts", None, None): 20}, {("snmp", "UdpNoPorts", None, None): 20}])
    monkeypatch.setattr(counters_mod, "read_all", lambda _ns, _ifaces, _token=None: next(readings))
    monkeypatch.setattr(IfaceNames, "name", lambda _self, ns, ifindex, cookie=0: NAMES.get((ns, ifindex)))
    monkeypatch.setattr(trace_mod, "_iface_names", lambda: lambda ns, ifindex: NAMES.get((ns, ifindex)))
    softnet = iter([{"time_squeeze": 5, "dropped": 0}, {"time_squeeze": 7, "dropped": 1},
                    {"time_squeeze": 9, "dropped": 1}, {"time_squeeze": 9, "dropped": 1}])
    monkeypatch.setattr(trace_mod, "softnet_totals", lambda: next(softnet))
    monkeypatch.setattr(irqs, "read_interrupts", lambda: "")


# ---------------------------------------------------------------- drops


@pytest.fixture
def drop_facts(tmp_path):
    return KernelFacts.load(make_root(tmp_path, "6.18.1", (DATA / "kfree_skb-6.18.format").read_text(), False))


def reasons():
    return from_tracepoint(parse_format((DATA / "kfree_skb-6.18.format").read_text()).symbols["reason"])


def short_key(reason: int, ifindex: int, ns: int, l4: int = 17, cookie: int = 0) -> bytes:
    return contract.DROP_WHERE.fmt.pack(0, reason, ifindex, ns, 0x0800, l4, 4, cookie, 1, 0)


def set_drop_stats(prog: FakeProgram, hits: int, matched: int, full: int = 0) -> None:
    """The one per-CPU value of struct drop_stats (bpf/drops.c), and an empty key cache."""
    prog.set_array("stats", 0, [b"".join(U64.pack(v) for v in (hits, matched, full, 0, 0, 0)), bytes(48)])
    if 0 not in prog.arrays.get("drop_cache", {}):
        prog.set_array("drop_cache", 0, [bytes((contract.DROP_WHERE.size + 8) * contract.DROP_CACHE_SLOTS)] * 2)


def cache_slots(*entries: tuple[int, bytes, int]) -> bytes:
    """One CPU's struct drop_cache: (slot, key, count) entries, the rest free."""
    slot = contract.DROP_WHERE.size + 8
    raw = bytearray(slot * contract.DROP_CACHE_SLOTS)
    for i, key, count in entries:
        raw[i * slot:(i + 1) * slot] = key + U64.pack(count)
    return bytes(raw)


class StormProgram(FakeProgram):
    """Drops that never pause: every read of the health counters finds one more matched."""

    def __init__(self) -> None:
        super().__init__()
        self.matched = 0

    def percpu_value(self, name: str, index: int) -> list[bytes]:
        if name == "stats":
            self.matched += 1
            set_drop_stats(self, self.matched, self.matched)
        return super().percpu_value(name, index)


def test_a_storm_that_never_pauses_is_warned_about_once_however_often_it_is_read(drop_facts, monkeypatch):
    """The exporter reads the end at every scrape: under a storm its warnings must not grow with the scrapes."""
    monkeypatch.setattr(counters_mod, "read_all", lambda _ns, _ifaces, _token=None: {})
    prog = StormProgram()
    set_drop_stats(prog, 0, 0)
    session = drops_mod.DropsSession(drops_mod.DropsQuery(), drop_facts, SOURCE, reasons(), loader=loader(prog))
    session.start()
    for second in range(1, 30):
        warnings = session.summary(second * 1_000_000_000).warnings
    assert [w.split(":")[0] for w in warnings] == ["drops never paused while the counters were read at the start",
                                                   "drops never paused while the counters were read at the end"]


class FloodProgram(StormProgram):
    """A flood: hundreds of drops land between two reads of the health counters."""

    def percpu_value(self, name: str, index: int) -> list[bytes]:
        if name == "stats":
            self.matched += 499  # and StormProgram's one: 500 a read
        return super().percpu_value(name, index)


def test_a_flood_going_on_is_read_once_a_burst_or_a_slow_storm_up_to_the_tries(drop_facts, monkeypatch):
    """Hundreds of drops in one try, when the last reading found no pause either, say none is coming: the
    counters are read once, not ALIGN_TRIES times (under a flood, the exporter's retries at every scrape
    were about half its cost). A reading's first storm (maybe a burst's tail) and a slow storm (one drop a
    try) may still pause: read again up to ALIGN_TRIES times."""
    reads: list[int] = []

    def read_all(_ns: object, _ifaces: object, _token: object = None) -> dict:
        reads.append(1)
        return {}

    monkeypatch.setattr(counters_mod, "read_all", read_all)
    for prog, at_start, later in ((FloodProgram(), drops_mod.ALIGN_TRIES, 1),
                                  (StormProgram(), drops_mod.ALIGN_TRIES, drops_mod.ALIGN_TRIES)):
        set_drop_stats(prog, 0, 0)
        session = drops_mod.DropsSession(drops_mod.DropsQuery(), drop_facts, SOURCE, reasons(), loader=loader(prog))
        reads.clear()
        session.start()
        assert len(reads) == at_start, type(prog).__name__
        session.summary(1_000_000_000)  # the end's first reading: all the tries
        reads.clear()
        warnings = session.summary(2_000_000_000).warnings  # the exporter's next scrape
        assert len(reads) == later, type(prog).__name__
        assert [w.split(":")[0] for w in warnings] == ["drops never paused while the counters were read at the "
                                                       "start", "drops never paused while the counters were "
                                                       "read at the end"]


def test_drops_counted_in_the_per_cpu_key_cache_add_to_the_hash_rows(drop_facts):
    prog = FakeProgram()
    session = drops_mod.DropsSession(drops_mod.DropsQuery(), drop_facts, SOURCE, reasons(), loader=loader(prog))
    no_socket, other = short_key(3, 1, 1), short_key(2, 1, 1, 6)
    set_drop_stats(prog, 0, 0)
    session.start()
    # CPU 0 counts no_socket in slot 5, CPU 1 in slot 9; a collision sent 7 of them to the hash
    cpu1 = cache_slots((9, no_socket, 993))
    prog.set_array("drop_cache", 0, [cache_slots((5, no_socket, 1000), (6, other, 4)), cpu1])
    prog.set_percpu_u64("drops", no_socket, [7, 0])
    set_drop_stats(prog, 2004, 2004)
    first = session.interval(1_000_000_000)
    assert sorted((r.reason, r.count) for r in first.rows) == [("NOT_SPECIFIED", 4), ("NO_SOCKET", 2000)]
    cpu1 = cache_slots((9, no_socket, 993))
    prog.set_array("drop_cache", 0, [cache_slots((5, no_socket, 1010), (6, other, 4)), cpu1])
    second = session.interval(2_000_000_000)
    assert [(r.reason, r.count) for r in second.rows] == [("NO_SOCKET", 10)]
    assert [r.count for r in session.summary(2_000_000_000).rows] == [2010, 4]


def test_drops_session_reports_interval_deltas_and_run_totals(drop_facts):
    prog = FakeProgram()
    query = drops_mod.DropsQuery(Filters(ifaces=("veth1",), iface_keys=((77, 4),)))
    session = drops_mod.DropsSession(query, drop_facts, SOURCE, reasons(), loader=loader(prog))
    no_socket, filtered = short_key(3, 1, 1), short_key(2, 4, 77, 6)
    set_drop_stats(prog, 0, 0)
    start = session.start()
    assert start.command == "drops" and start.attached[0].hook == "skb:kfree_skb"
    assert prog.maps["iface_filter"] == {struct.pack("<Q", (77 << 32) | 4): b"\x01"}
    prog.set_percpu_u64("drops", no_socket, [1000, 2000])
    prog.set_percpu_u64("drops", filtered, [5, 0])
    set_drop_stats(prog, 3010, 3005)
    first = session.interval(1_000_000_000)
    assert [(r.reason, r.iface, r.proto, r.count) for r in first.rows] == [("NO_SOCKET", "lo", "udp", 3000),
                                                                           ("NOT_SPECIFIED", "veth1", "tcp", 5)]
    assert first.total == 3005 and first.health.matched == 3005 and first.health.probe_hits == {
        "skb:kfree_skb": 3010}
    assert [(c.name, c.count) for c in first.counters] == [("UdpNoPorts", 3)]
    prog.set_percpu_u64("drops", no_socket, [1000, 2100])
    set_drop_stats(prog, 3110, 3105)
    second = session.interval(2_000_000_000)
    assert [(r.reason, r.count) for r in second.rows] == [("NO_SOCKET", 100)]
    assert (second.interval_ns, second.health.matched, second.counters[0].count) == (1_000_000_000, 100, 7)
    summary = session.summary(2_100_000_000)
    assert [r.count for r in summary.rows] == [3100, 5] and summary.total == 3105
    assert summary.counters[0].count == 10  # 10 -> 20 over the run
    session.close()
    assert prog.closed


def test_drops_live_view_ranks_by_run_total_with_this_intervals_count(drop_facts):
    prog = FakeProgram()
    session = drops_mod.DropsSession(drops_mod.DropsQuery(), drop_facts, SOURCE, reasons(), limit=1, live=True,
                                     loader=loader(prog))
    set_drop_stats(prog, 0, 0)
    session.start()
    prog.set_percpu_u64("drops", short_key(3, 1, 1), [50, 0])
    prog.set_percpu_u64("drops", short_key(2, 1, 1), [10, 0])
    set_drop_stats(prog, 60, 60)
    session.interval(10**9)
    prog.set_percpu_u64("drops", short_key(3, 1, 1), [50, 0])
    prog.set_percpu_u64("drops", short_key(2, 1, 1), [12, 0])
    set_drop_stats(prog, 62, 62)
    snap = session.interval(2 * 10**9)
    assert snap.total == 62
    assert [(r.reason, r.count, r.interval_count) for r in snap.rows] == [("NO_SOCKET", 50, 0)]
    assert (snap.other_rows, snap.other_count, snap.interval_total) == (1, 12, 2)


def test_a_full_drops_map_never_hides_drops_from_the_total_or_the_threshold(drop_facts):
    """Rows that found no room are reported (lost_rows), not subtracted: total is the exact matched count."""
    from netpath.thresholds import DropsThreshold

    prog = FakeProgram()
    session = drops_mod.DropsSession(drops_mod.DropsQuery(), drop_facts, SOURCE, reasons(), loader=loader(prog))
    set_drop_stats(prog, 0, 0)
    session.start()
    prog.set_percpu_u64("drops", short_key(3, 1, 1), [600, 300])
    set_drop_stats(prog, 3_200_000, 3_200_000, full=3_199_100)
    snap = session.interval(10**9)
    assert sum(r.count for r in snap.rows) == 900
    assert (snap.total, snap.health.lost_rows) == (3_200_000, 3_199_100)
    summary = session.summary(10**9)
    assert summary.total == 3_200_000
    assert DropsThreshold(1_500_000).check(summary) == 3_200_000


def test_no_device_in_the_map_reaches_the_snapshot_json_and_metrics(drop_facts):
    from netpath.render import records
    from netpath.render.metrics import MetricSet

    prog = FakeProgram()
    session = drops_mod.DropsSession(drops_mod.DropsQuery(), drop_facts, SOURCE, reasons(), loader=loader(prog))
    set_drop_stats(prog, 0, 0)
    session.start()
    values = dict.fromkeys(contract.DROP_STATS, 0) | {"hits": 50, "matched": 40, "no_device": 7}
    prog.set_array("stats", 0, [b"".join(U64.pack(values[n]) for n in contract.DROP_STATS),
                                bytes(8 * len(contract.DROP_STATS))])
    snap = session.summary(10**9)
    assert snap.health.no_device == 7
    assert records.summary(snap, "duration", None)["health"]["no_device"] == 7
    exported = {m.name: m.samples[0].value for m in MetricSet(10).drops(snap) if m.name.startswith("netpath_drops_no")}
    assert exported == {"netpath_drops_no_device": 7}


def test_a_namespace_deleted_mid_run_freezes_its_counters_and_says_so_once(drop_facts, monkeypatch):
    from netpath import netns

    reads = iter([{("snmp", "UdpNoPorts", None, None): 1}, FileNotFoundError(2, "No such file or directory")])

    def read_all(_ns, _ifaces, _token=None):
        item = next(reads)
        if isinstance(item, Exception):
            raise item
        return item

    monkeypatch.setattr(counters_mod, "read_all", read_all)
    prog = FakeProgram()
    query = drops_mod.DropsQuery(Filters(netns.Netns(Path("/run/netns/gone"), 4026532999, "gone")))
    session = drops_mod.DropsSession(query, drop_facts, SOURCE, reasons(), loader=loader(prog))
    set_drop_stats(prog, 0, 0)
    session.start()
    first = session.interval(10**9)
    assert len(first.warnings) == 1 and "'gone' is gone" in first.warnings[0]
    assert session.interval(2 * 10**9).warnings == []
    assert len(session.summary(2 * 10**9).warnings) == 1


def test_drop_samples_decode_with_their_flow_and_losses_are_counted(drop_facts):
    prog = FakeProgram()
    query = drops_mod.DropsQuery(samples=4, stack=True)
    session = drops_mod.DropsSession(query, drop_facts, SOURCE, reasons(), loader=loader(prog))
    set_drop_stats(prog, 0, 0)
    session.start()
    addr = ipaddress.ip_address("10.9.8.7").packed.ljust(16, b"\0")
    sample = contract.DROP_SAMPLE.fmt.pack(0, 3, 1, 1, 0x0800, 17, 4, 0, 1, 0, addr, addr, 4000, 53, 0, 0, 0, 555,
                                           80, 42, 1, -1, b"nc\0".ljust(16, b"\0"))
    prog.send("samples", sample)
    prog.lose("samples", 3)
    key = short_key(3, 1, 1)
    prog.set_percpu_u64("drops", key, [1, 0])
    prog.update("drop_stack", key, struct.pack("<i", 7))
    prog.stacks[7] = [0]
    session.wait(0.01)
    events = session.events()
    assert len(events) == 1 and isinstance(events[0], DropSample)
    s = events[0]
    assert (s.ts_ns, s.len, s.pid, s.cpu, s.comm) == (555, 80, 42, 1, "nc")
    assert (s.row.reason, s.row.saddr, s.row.sport, s.row.dport, s.row.proto) == ("NO_SOCKET", "10.9.8.7", 4000,
                                                                                  53, "udp")
    assert session.events() == []
    snap = session.interval(10**9)
    assert snap.health.lost_samples == 3
    assert snap.rows[0].stack is not None
    assert "sample_used" in prog.cleared  # the per-CPU budget starts again each interval
    assert session.interval(2 * 10**9).health.lost_samples == 0
    assert session.summary(2 * 10**9).health.lost_samples == 3


# ---------------------------------------------------------------- trace


def trace_facts(name: str) -> KernelFacts:
    return KernelFacts.load(FIXTURES / name)


def stage_hist(samples: list[int]) -> bytes:
    slots = [0] * contract.NSLOTS
    for v in samples:
        slots[hist.slot_of(v)] += 1
    slots[contract.SUM_SLOT] = sum(samples)
    return contract.STAGE_HIST.fmt.pack(*slots)


def cpu_counters(hits: dict[str, int], polls: int = 0, work: int = 0, exhausted: int = 0,
                 seen: dict[str, int] | None = None) -> bytes:
    names = (*contract.HOOK_NAMES, *contract.STAT_NAMES)
    values = [hits.get(n, 0) for n in names]
    exact = [(seen or {}).get(stage, 0) for stage in STAGE_IDS]
    return contract.CPU_COUNTERS.fmt.pack(*values, polls, work, exhausted, 64, work, 0, 0, 0, 0, *exact)


def play_trace(prog: FakeProgram, sq: list[int], hits: dict[str, int], polls: int, max_ns: int | None = None,
               seen: dict[str, int] | None = None) -> None:
    """Cumulative socket_queue samples; the maximum is this interval's, as the kernel keeps it."""
    empty = stage_hist([])
    sq_index = STAGE_IDS.index("socket_queue")
    for stage in range(len(STAGE_IDS)):
        prog.set_array("stage_hist", stage, [stage_hist(sq) if stage == sq_index else empty, empty])
        top = max(sq, default=0) if max_ns is None else max_ns
        prog.set_array_u64("stage_max", stage, [top if stage == sq_index else 0, 0])
    prog.set_array("cpustate", 0, [cpu_counters(hits, polls, 2 * polls, 1, seen), cpu_counters({}, 0)])


def test_trace_session_decodes_histograms_hits_and_napi():
    prog = FakeProgram()
    plan = make_plan(trace_facts("6.18"))  # no kprobes: ip_rcv cannot be in the plan
    session = trace_mod.TraceSession(trace_mod.TraceQuery(), plan, trace_facts("6.18"), SOURCE,
                                     loader=loader(prog))
    play_trace(prog, [], {}, 0)
    start = session.start()
    assert start.stages[0] == "hardirq" and start.attached and not prog.kprobes
    play_trace(prog, [20_000_000] * 4, {"sock:sk_data_ready": 4, "missed_enqueue": 1, "ip_rcv": 9}, 10)
    snap = session.interval(10**9)
    sq = snap.stage("socket_queue")
    assert sq is not None and sq.latency.count == 4 and sq.latency.sum_ns == 80_000_000
    assert abs(sq.latency.p50_ns - 20_000_000) < 0.07 * 20_000_000
    assert sq.latency.max_ns == 20_000_000
    assert snap.health.probe_hits["sock:sk_data_ready"] == 4
    assert "ip_rcv" not in snap.health.probe_hits  # not in this kernel's plan
    assert snap.health.missed_enqueue == 1
    napi = snap.stage("napi_poll")
    assert napi is not None and napi.napi is not None and (napi.napi.polls, napi.napi.work) == (10, 20)
    assert snap.softnet == {"time_squeeze": 2, "dropped": 1}
    assert prog.arrays["stage_max"][10] == [bytes(8), bytes(8)]  # maxima are per interval
    play_trace(prog, [20_000_000] * 4 + [1_000], {"sock:sk_data_ready": 5}, 12, max_ns=1_000)
    second = session.interval(2 * 10**9)
    sq2 = second.stage("socket_queue")
    assert sq2 is not None and (sq2.latency.count, sq2.latency.max_ns) == (1, 1_000)
    assert second.health.probe_hits["sock:sk_data_ready"] == 1
    summary = session.summary(2 * 10**9)
    total = summary.stage("socket_queue")
    assert total is not None and (total.latency.count, total.latency.max_ns) == (5, 20_000_000)
    assert summary.softnet == {"time_squeeze": 4, "dropped": 1}


def test_sampled_timing_counts_every_packet_and_says_how_many_were_timed():
    prog = FakeProgram()
    plan = make_plan(trace_facts("6.18"))
    assert plan.rx_tstamp
    session = trace_mod.TraceSession(trace_mod.TraceQuery(sample_every=16), plan, trace_facts("6.18"), SOURCE,
                                     loader=loader(prog))
    play_trace(prog, [], {}, 0)
    assert session.start().sample_every == 16
    play_trace(prog, [20_000_000] * 3, {}, 48, seen={"socket_queue": 50, "napi_poll": 48})
    snap = session.interval(10**9)
    sq = snap.stage("socket_queue")
    assert sq is not None and (sq.count, sq.latency.count, sq.sample_every) == (50, 3, 16)
    napi = snap.stage("napi_poll")
    assert napi is not None and napi.count == 48 and napi.napi is not None and napi.napi.polls == 48
    gro = snap.stage("gro")  # never sampled: its count is its histogram's
    assert gro is not None and gro.sample_every == 1 and gro.seen is None
    play_trace(prog, [20_000_000] * 4, {}, 60, seen={"socket_queue": 70, "napi_poll": 60})
    step = session.interval(2 * 10**9).stage("socket_queue")
    assert step is not None and (step.count, step.latency.count) == (20, 1)
    total = session.summary(2 * 10**9).stage("socket_queue")
    assert total is not None and (total.count, total.latency.count) == (70, 4)
    record = records.stage_row(total, False, False)
    assert (record["count"], record["timed"], record["sample_every"]) == (70, 4, 16)


def test_an_exact_build_counts_socket_queue_reads_past_the_ring_untimed():
    """--exact times every read it can; a read whose ring slot a newer datagram took (the reader more than RING
    behind) is counted in the C's seen, untimed: the row's count is seen, timed the histogram's."""
    prog = FakeProgram()
    plan = make_plan(trace_facts("6.18"))
    session = trace_mod.TraceSession(trace_mod.TraceQuery(sample_every=1), plan, trace_facts("6.18"), SOURCE,
                                     loader=loader(prog))
    play_trace(prog, [], {}, 0)
    session.start()
    play_trace(prog, [20_000_000] * 128, {"ring_overrun": 72}, 1, seen={"socket_queue": 200})
    sq = session.interval(10**9).stage("socket_queue")
    assert sq is not None and (sq.count, sq.latency.count, sq.sample_every) == (200, 128, 1)
    record = records.stage_row(sq, False, False)
    assert (record["count"], record["timed"]) == (200, 128)
    total = session.summary(10**9).stage("socket_queue")
    assert total is not None and total.count == 200
    gro = session.summary(10**9).stage("gro")  # no untimed runs: its count is its histogram's
    assert gro is not None and gro.seen is None


def test_breakdowns_and_old_kernels_time_every_packet():
    plan = make_plan(trace_facts("6.18"))
    for query in (trace_mod.TraceQuery(sample_every=16, per_iface=True), trace_mod.TraceQuery(sample_every=16,
                  per_socket=True), trace_mod.TraceQuery(sample_every=16, slower_ns=5)):
        assert query.sampled_every(plan) == 1
        assert trace_mod.program_source(query, plan, OFFSETS).defines["SAMPLE_SHIFT"] == 0
    assert trace_mod.program_source(trace_mod.TraceQuery(sample_every=16), plan, OFFSETS).defines["SAMPLE_SHIFT"] == 4
    old = make_plan(trace_facts("trace-6.1"))  # kprobe checkpoints: hand-off hooks, every skb timed
    assert trace_mod.TraceQuery(sample_every=16).sampled_every(old) == 1


def test_the_timestamp_build_loads_its_packet_hooks_as_tp_btf_and_says_so():
    plan = make_plan(trace_facts("6.18"))
    src = trace_mod.program_source(trace_mod.TraceQuery(), plan, OFFSETS)
    assert src.tp_btf == {"np_btf_netif_receive_skb": "netif_receive_skb", "np_btf_sk_data_ready": "sk_data_ready",
                          "np_btf_sock_recv_length": "sock_recv_length"}
    assert src.defines["TP_BTF"] == 1 and src.without_tp_btf().defines["TP_BTF"] == 0
    for query in (trace_mod.TraceQuery(slower_ns=5), trace_mod.TraceQuery(tp_btf=False)):
        assert trace_mod.program_source(query, plan, OFFSETS).tp_btf == {}
    old = make_plan(trace_facts("trace-6.1"))  # kprobe checkpoints: no receive timestamps, no typed hooks
    assert trace_mod.program_source(trace_mod.TraceQuery(), old, OFFSETS).defines["TP_BTF"] == 0
    prog = FakeProgram()
    prog.tp_btf = ("np_btf_sk_data_ready",)  # netif_receive_skb refused: the fallback build runs it raw
    session = trace_mod.TraceSession(trace_mod.TraceQuery(), plan, trace_facts("6.18"), SOURCE, loader=loader(prog))
    play_trace(prog, [], {}, 0)
    methods = {a.hook: a.method for a in session.start().attached}
    assert methods["sock:sk_data_ready"] == "tp_btf" and methods["net:netif_receive_skb"] == "raw_tracepoint"


def test_napi_by_device_adds_each_cpus_own_device_counters_to_the_hash_rows():
    prog = FakeProgram()
    plan = make_plan(trace_facts("6.18"), only=("napi_poll",))
    session = trace_mod.TraceSession(trace_mod.TraceQuery(napi_by_dev=True), plan, trace_facts("6.18"), SOURCE,
                                     loader=loader(prog))
    play_trace(prog, [], {}, 0)
    session.start()

    def cpu(polls: int, ifindex: int) -> bytes:  # this CPU's first device keeps its counters in cpustate
        names = (*contract.HOOK_NAMES, *contract.STAT_NAMES)
        return contract.CPU_COUNTERS.fmt.pack(*[0] * len(names), polls, 3 * polls, 0, 64, 3, ifindex, 77, 0, 0,
                                              *[0] * len(STAGE_IDS))

    prog.set_array("cpustate", 0, [cpu(10, 4), cpu(5, 4)])
    napi_row = contract.NAPI_VAL.fmt.pack(2, 6, 1, 64, 3)
    prog.percpu["napi_stats"] = {contract.NAPI_KEY.fmt.pack(4, 77, 0): [napi_row, bytes(40)],
                                 contract.NAPI_KEY.fmt.pack(9, 77, 0): [bytes(40), napi_row]}
    snap = session.interval(10**9)
    row = snap.stage("napi_poll")
    assert row is not None and row.napi is not None and (row.napi.polls, row.napi.exhausted) == (19, 2)
    assert session.forget_gone_devices({(77, 9)}) == 2  # the hash row and CPU-held counters of ifindex 4
    assert session.interval(2 * 10**9).stage("napi_poll").napi.polls == 0


def slow_event(ts: int, queued: int) -> bytes:
    addr = ipaddress.ip_address("10.0.0.2").packed.ljust(16, b"\0")
    return contract.SLOW_EVENT.fmt.pack(ts, 9000, 0, 0, 0, 15000, queued, 1, 4242, 4, 77, addr, addr, 40000, 5353,
                                        4, 17, 0, b"python".ljust(16, b"\0"))


def test_slow_events_decode_and_losses_still_pending_at_exit_are_counted():
    prog = FakeProgram()
    plan = make_plan(trace_facts("trace-6.12"))
    session = trace_mod.TraceSession(trace_mod.TraceQuery(slower_ns=1_000_000), plan, trace_facts("trace-6.12"),
                                     SOURCE, loader=loader(prog))
    play_trace(prog, [], {}, 0)
    session.start()
    prog.send("slow", slow_event(1, 5_000_000))
    session.wait(0.01)
    (pkt,) = session.events()
    assert isinstance(pkt, SlowPacket)
    assert (pkt.iface, pkt.proto, pkt.saddr, pkt.sport, pkt.dport, pkt.comm, pkt.pid) == (
        "veth1", "udp", "10.0.0.2", 40000, 5353, "python", 4242)
    assert pkt.stages_ns == {"netif_receive_skb": 9000, "stack_total": 15000, "socket_queue": 5_000_000}
    play_trace(prog, [], {}, 0)
    assert session.interval(10**9).health.lost_events == 0
    prog.lose("slow", 25)  # reported by the kernel but not yet polled when the run ends
    session.wait(0)
    assert session.summary(2 * 10**9).health.lost_events == 25


def test_a_refused_kprobe_is_reported_and_the_rest_still_attaches():
    prog = FakeProgram()
    plan = make_plan(trace_facts("trace-6.1"))
    prog.refuse.add("udp_rcv")
    session = trace_mod.TraceSession(trace_mod.TraceQuery(), plan, trace_facts("trace-6.1"), SOURCE,
                                     loader=loader(prog))
    play_trace(prog, [], {}, 0)
    start = session.start()
    assert ("tcp_v4_rcv", "kp_tcp_v4_rcv", False) in prog.kprobes
    assert ("net_rx_action", "kr_net_rx_action", True) in prog.kprobes or plan.choice(
        "net_rx_action").method != "kprobe"
    refused = [u for u in start.unavailable if u.hook == "udp_rcv"]
    assert refused and refused[0].stage == "udp_rcv" and "did not attach" in refused[0].reason
    assert all(a.hook != "udp_rcv" for a in start.attached)
