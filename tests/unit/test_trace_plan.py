"""The attach plan is a pure function of kernel facts: fixture kernel trees, no root."""

from __future__ import annotations

from pathlib import Path

import pytest

from netpath.collect import trace as trace_mod
from netpath.kernel import irqs
from netpath.kernel.facts import KernelFacts
from netpath.plan import make_plan, probe_rows
from netpath.query import Filters
from netpath.render import records
from netpath.stages import STAGE_IDS, STAGES, UNFILTERED

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KPROBE_STAGES = {"ip_rcv", "ip_local_deliver", "tcp_v4_rcv", "udp_rcv"}


def facts(name: str) -> KernelFacts:
    root = FIXTURES / name
    if not root.is_dir():
        pytest.skip(f"fixture {name} not present")
    return KernelFacts.load(root)


def test_stage_order_is_the_receive_path() -> None:
    assert STAGE_IDS == ("hardirq", "softirq_wait", "net_rx_action", "napi_poll", "gro", "netif_receive_skb",
                         "ip_rcv", "ip_local_deliver", "tcp_v4_rcv", "udp_rcv", "socket_queue", "stack_total")
    assert [s.index for s in STAGES] == list(range(len(STAGES)))
    assert set(UNFILTERED) == {"hardirq", "softirq_wait", "net_rx_action", "napi_poll"}


def test_618_tracepoint_stages_attach_and_kprobe_stages_say_why_not() -> None:
    rows = {r.stage: r for r in probe_rows(facts("6.18"))}
    assert list(rows) == list(STAGE_IDS)
    for stage, row in rows.items():
        assert set(records.probe_row(row)) == {"command", "stage", "hook", "method", "available", "reason"}
        if stage in KPROBE_STAGES:
            assert row.available is False and row.method is None
            assert "CONFIG_KPROBES" in str(row.reason)
        else:
            assert row.available is True, row
            assert row.method == "raw_tracepoint"
    assert "sock:sock_recv_length" in str(rows["socket_queue"].hook)


def test_61_uses_kprobes_and_clone_symbols() -> None:
    plan = make_plan(facts("trace-6.1"))
    for stage in KPROBE_STAGES:
        assert plan.choice(stage).method == "kprobe", plan.choice(stage).reason
    tcp = plan.choice("tcp_v4_rcv")
    assert tcp.symbols == {"tcp_v4_rcv": "tcp_v4_rcv", "tcp_v6_rcv": "tcp_v6_rcv.isra.0"}
    assert "tcp_v6_rcv as tcp_v6_rcv.isra.0" in tcp.reason
    # no sock:sk_data_ready on 6.1: socket_queue and stack_total fall back to a kprobe on sock_def_readable
    sq = plan.choice("socket_queue")
    assert sq.method == "kprobe" and sq.symbols == {"sock_def_readable": "sock_def_readable"}
    assert "skb:consume_skb" in sq.hooks
    assert dict(plan.kprobes())["tcp_v6_rcv"] == "tcp_v6_rcv.isra.0"
    defines = plan.defines()
    assert defines["USE_KP_DATA_READY"] == 1 and defines["USE_SOCKQ"] == 1
    assert "HAS_SOCK_SOCK_RECV_LENGTH" not in defines
    # net_rx_action keeps the softirq tracepoints even where kprobes exist
    assert plan.choice("net_rx_action").method == "raw_tracepoint"


def test_612_prefers_tracepoints_for_the_socket() -> None:
    plan = make_plan(facts("trace-6.12"))
    assert plan.choice("socket_queue").method == "raw_tracepoint"
    assert plan.defines()["HAS_SOCK_SOCK_RECV_LENGTH"] == 1
    assert plan.choice("ip_rcv").method == "kprobe"
    assert plan.choice("udp_rcv").symbols == {"udp_rcv": "udp_rcv"}  # udpv6_rcv absent: optional


def test_no_tracepoints_no_kprobes_everything_has_a_reason() -> None:
    rows = probe_rows(facts("trace-notp"))
    assert all(r.available is False and r.reason for r in rows)
    assert "not on this kernel" in str(rows[1].reason)


def test_program_source_takes_numbers_only() -> None:
    import ipaddress

    plan = make_plan(facts("trace-6.1"))
    offsets = {name: 8 for name in trace_mod.NEEDED}
    filters = Filters(proto="udp", port=5353, host=ipaddress.ip_address("10.201.1.2"))
    query = trace_mod.TraceQuery(filters, per_iface=True, slower_ns=5_000_000)
    src = trace_mod.program_source(query, plan, offsets)
    assert src.files == ["where.c", "trace_common.c", "trace_irq.c", "trace_skb.c", "trace_kprobe.c",
                         "trace_watch.c", "trace_fifo.c", "trace_sock.c", "trace_read.c"]
    assert all(isinstance(v, int) for v in src.defines.values())
    assert src.defines["FILTER_PORT"] == 5353 and src.defines["FILTER_PROTO"] == 17
    assert src.defines["FILTER_HOST_W0"] == int.from_bytes(bytes([10, 201, 1, 2]), "little")
    assert src.defines["SLOWER_NS"] == 5_000_000 and src.defines["TRACK_SKBS"] == 1
    assert all(flag.startswith(("-I", "-D")) for flag in src.cflags())


def test_udp_socket_queue_is_watched_only_in_the_always_on_build() -> None:
    """bpf/trace_watch.c replaces the per-socket FIFO only where nothing needs every datagram's state: sampled,
    no breakdown, no filter finer than the namespace."""
    import ipaddress

    from netpath.netns import Netns

    plan = make_plan(facts("6.18"), only=("socket_queue",))
    offsets = {name: 8 for name in trace_mod.NEEDED}

    def watch(plan_: object = plan, **kw: object) -> int:
        return trace_mod.program_source(trace_mod.TraceQuery(**kw), plan_, offsets).defines["SOCKQ_WATCH"]

    assert watch(sample_every=16) == 1
    assert watch(sample_every=16, filters=Filters(netns=Netns(4026532000, "/run/netns/x", "x"))) == 1
    assert watch(sample_every=1) == 0  # every datagram timed: the FIFO pairs each with its read
    assert watch(sample_every=16, per_socket=True) == 0
    assert watch(sample_every=16, slower_ns=5) == 0
    for narrowed in (Filters(proto="udp"), Filters(port=53), Filters(host=ipaddress.ip_address("10.0.0.1")),
                     Filters(ifaces=("eth0",), iface_keys=((1, 2),))):
        assert watch(sample_every=16, filters=narrowed) == 0, narrowed
    assert watch(make_plan(facts("6.18")), sample_every=16) == 1  # trace's default: picked at netif_receive_skb
    assert watch(make_plan(facts("trace-6.1"), only=("socket_queue",)), sample_every=16) == 0  # no recv_length


def test_udp_socket_queue_is_counted_at_the_wakeup_where_no_read_tells() -> None:
    """Without sock:sock_recv_length (6.1) the always-on build counts a UDP datagram at its wakeup (a read
    there cannot be told; bpf/trace_sock.c np_wakeup_count); only where netif_receive_skb's per-CPU follow is
    not in the build either."""
    offsets = {name: 8 for name in trace_mod.NEEDED}

    def at_wakeup(name: str, only: tuple[str, ...] | None = ("socket_queue",), **kw: object) -> int:
        plan = make_plan(facts(name), only=only) if only else make_plan(facts(name))
        return trace_mod.program_source(trace_mod.TraceQuery(**kw), plan, offsets).defines["SOCKQ_AT_WAKEUP"]

    assert at_wakeup("trace-6.1", sample_every=16) == 1
    assert at_wakeup("trace-6.1", sample_every=1) == 0  # every datagram timed: counted at its read
    assert at_wakeup("trace-6.1", sample_every=16, filters=Filters(port=53)) == 0
    assert at_wakeup("trace-6.1", None, sample_every=16) == 0  # netif_receive_skb follows each datagram
    assert at_wakeup("6.18", sample_every=16) == 0  # sock_recv_length: the watched build


def test_netns_is_checked_by_its_cookie_as_drops_checks_it() -> None:
    from netpath.netns import Netns

    plan = make_plan(facts("trace-6.12"))
    offsets = {name: 8 for name in trace_mod.NEEDED}
    ns = Netns(Path("/run/netns/x"), 4026532999, "x", cookie=77)
    src = trace_mod.program_source(trace_mod.TraceQuery(Filters(netns=ns)), plan, {**offsets, "OFF_NET_COOKIE": 120})
    assert (src.defines["FILTER_NETNS"], src.defines["FILTER_NETNS_COOKIE"], src.defines["OFF_NET_COOKIE"]) == (
        4026532999, 77, 120)
    no_cookie = trace_mod.program_source(trace_mod.TraceQuery(Filters(netns=ns)), plan, offsets)  # before 5.12
    assert "FILTER_NETNS_COOKIE" not in no_cookie.defines and no_cookie.defines["FILTER_NETNS"] == 4026532999


def test_program_source_includes_only_the_units_the_plan_needs() -> None:
    def units(name: str, only: tuple[str, ...]) -> list[str]:
        return trace_mod.c_units(make_plan(facts(name), only=only))

    common = ["where.c", "trace_common.c"]
    assert units("6.18", ("napi_poll",)) == [*common, "trace_irq.c"]
    assert units("6.18", ("gro",)) == [*common, "trace_skb.c"]
    # the read side builds on the enqueue, and every per-packet stage on the skb path
    assert units("6.18", ("socket_queue",)) == [*common, "trace_skb.c", "trace_watch.c", "trace_fifo.c",
                                                "trace_sock.c", "trace_read.c"]
    assert units("6.18", ("stack_total",)) == [*common, "trace_skb.c", "trace_fifo.c", "trace_sock.c"]
    assert units("trace-6.1", ("ip_rcv",)) == [*common, "trace_skb.c", "trace_kprobe.c"]
    for stage in STAGES:  # every stage names a unit that exists
        assert (trace_mod.bpf.BPF_DIR / stage.c_unit).is_file(), stage.id
    assert all((trace_mod.bpf.BPF_DIR / u).is_file() for u in trace_mod.TRACE_UNITS)


def test_program_source_names_missing_btf_fields() -> None:
    from netpath.errors import MissingCapability

    with pytest.raises(MissingCapability, match="OFF_SK_RCVQ_PREV"):
        trace_mod.program_source(trace_mod.TraceQuery(), make_plan(facts("trace-6.1")),
                                 {n: 8 for n in trace_mod.NEEDED if n != "OFF_SK_RCVQ_PREV"})


def test_program_source_takes_per_skb_and_checkpoint_switches_from_the_stage_table() -> None:
    offsets = {n: 8 for n in trace_mod.NEEDED}
    on_61 = trace_mod.program_source(trace_mod.TraceQuery(), make_plan(facts("trace-6.1")), offsets).defines
    assert (on_61["TRACK_SKBS"], on_61["KP_CHECKPOINTS"]) == (1, 1)
    on_618 = trace_mod.program_source(trace_mod.TraceQuery(), make_plan(facts("6.18")), offsets).defines
    assert (on_618["TRACK_SKBS"], on_618["KP_CHECKPOINTS"]) == (1, 0)
    hw_only = trace_mod.program_source(trace_mod.TraceQuery(), make_plan(facts("6.18"), only=("napi_poll",)),
                                       offsets).defines
    assert (hw_only["TRACK_SKBS"], hw_only["KP_CHECKPOINTS"]) == (0, 0)


def test_nic_irqs_from_proc_interrupts() -> None:
    text = (" 38:          0       6303 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n"
            " 39:       4780          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0\n"
            " 50:          1          2 IR-PCI-MSI 524288-edge      ens5-TxRx-0\n"
            " 51:          1          2 IR-PCI-MSI 524289-edge      ens55-TxRx-0\n"
            "LOC:      76078      84336   Local timer interrupts\n")
    devices = {"eth0": (2, "virtio2"), "ens5": (3, "0000:00:05.0")}
    assert irqs.nic_irqs(text, devices) == {38: 2, 50: 3}


def test_trace_spans_merge_neighbouring_fields_into_one_read() -> None:
    # sk_buff and sock offsets of the 6.18 development kernel
    offsets = {"OFF_SKB_PROTOCOL": 176, "SIZE_SKB_PROTOCOL": 2, "OFF_SKB_HEAD": 192, "SIZE_SKB_HEAD": 8,
               "OFF_SKB_DATA": 200, "SIZE_SKB_DATA": 8, "OFF_SK_FAMILY": 16, "SIZE_SK_FAMILY": 2,
               "OFF_SK_NET": 48, "SIZE_SK_NET": 8, "OFF_SK_RCVQ_PREV": 176, "SIZE_SK_RCVQ_PREV": 8}
    assert trace_mod.trace_spans(offsets) == {"SKB_RX_SPAN_OFF": 176, "SKB_RX_SPAN_LEN": 32,
                                              "SK_SPAN_OFF": 16, "SK_SPAN_LEN": 168}
    far = trace_mod.trace_spans({**offsets, "OFF_SK_RCVQ_PREV": 900})
    assert "SK_SPAN_OFF" not in far and "SKB_RX_SPAN_OFF" in far
    no_sizes = {k: v for k, v in offsets.items() if not k.startswith("SIZE_")}
    assert trace_mod.trace_spans(no_sizes) == {}


def test_hand_off_time_comes_from_skb_tstamp_unless_exact_or_kprobe_checkpoints() -> None:
    fast = make_plan(facts("6.18"))
    assert fast.rx_tstamp and fast.handoff == "skb_tstamp"
    hooks = set(fast.tracepoints())
    # nothing stamps the hand-off or forgets a freed skb: those hooks are not attached
    assert not hooks & {"net:netif_rx", "net:netif_receive_skb_entry", "net:netif_receive_skb_list_entry",
                        "skb:consume_skb", "skb:kfree_skb"}
    assert {"net:netif_receive_skb", "sock:sk_data_ready", "sock:sock_recv_length"} <= hooks
    assert "skb->tstamp" in fast.choice("netif_receive_skb").reason
    exact = make_plan(facts("6.18"), exact=True)
    assert not exact.rx_tstamp and exact.handoff == "hooks" and "--exact" in exact.handoff_reason
    assert {"net:netif_rx", "skb:consume_skb", "skb:kfree_skb"} <= set(exact.tracepoints())
    offsets = {n: 8 for n in trace_mod.NEEDED}
    source = trace_mod.program_source(trace_mod.TraceQuery(tai_offset_ns=37_000_000_000), fast, offsets)
    assert source.defines["RX_TSTAMP"] == 1 and source.defines["TAI_OFFSET_NS"] == 37_000_000_000
    assert trace_mod.program_source(trace_mod.TraceQuery(), exact, offsets).defines["RX_TSTAMP"] == 0


def test_kprobe_checkpoints_keep_the_hand_off_hooks() -> None:
    plan = make_plan(facts("trace-6.1"))
    if not any(c.stage.checkpoint for c in plan.available):
        pytest.skip("fixture without kprobe checkpoint stages")
    assert not plan.rx_tstamp and "kprobe checkpoint" in plan.handoff_reason


def test_no_tp_btf_beside_a_kprobe_on_sock_def_readable() -> None:
    """Found by tests/live/test_build_matrix.py: --stages stack_total on a kernel with kprobes but no
    sock:sk_data_ready is a receive-timestamp plan whose stack_total hooks kprobe sock_def_readable, and
    bpf/trace.c refuses TP_BTF beside that kprobe (#error): the typed build never compiled."""
    plan = make_plan(facts("trace-6.1"), only=("stack_total",))
    assert plan.rx_tstamp and "USE_KP_DATA_READY" in plan.defines()
    source = trace_mod.program_source(trace_mod.TraceQuery(), plan, {n: 8 for n in trace_mod.NEEDED})
    assert source.tp_btf == {} and source.defines["TP_BTF"] == 0
    typed = trace_mod.program_source(trace_mod.TraceQuery(), make_plan(facts("6.18"), only=("stack_total",)),
                                     {n: 8 for n in trace_mod.NEEDED})
    assert typed.defines["TP_BTF"] == 1
