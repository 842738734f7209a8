"""Output that must not mislead (issue 30): no field is cut without a marker, one name per attach method,
stacks that start where the packet was dropped, doctor advice only where it applies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from netpath.diagnose.rules import diagnose
from netpath.kernel.kallsyms import Kallsyms
from netpath.model import (
    Attached,
    DropHealth,
    DropRow,
    DropSample,
    DropSnapshot,
    Latency,
    NicSettings,
    Owner,
    PcapHealth,
    SlowPacket,
    SockInfo,
    StageRow,
    TraceHealth,
    TraceSnapshot,
    TraceStart,
    Window,
)
from netpath.query import Filters
from netpath.render import drops_view, trace_view

ELLIPSIS = "…"
LONG_ROWS = [
    DropRow("SOCKET_RCVBUFF", 9, "udp_queue_rcv_one_skb+0x437", "veth-with-a-long-name", 7, 4026532001, "udp",
            2317, netns_label="a-namespace-with-a-long-name", interval_count=231),
    DropRow("TCP_LISTEN_OVERFLOW_AND_THEN_SOME", 77, "tcp_conn_request.constprop.0+0x1a2b", "nn3c11e7", 8,
            4026532002, "tcp", 12, netns_label="ux4web", interval_count=1,
            owner=Owner(SockInfo(1, "tcp", 4, "10.201.60.2", 5353), 4242, "a-process-name",
                        "/kubepods.slice/kubepods-burstable.slice/a-very-long-cgroup-path.scope", "pod/container")),
]
FIELDS = [(r.reason, r.location, f"{r.iface}@{r.netns_label}") for r in LONG_ROWS]


def snap(rows: list[DropRow] = LONG_ROWS, pcap: bool = True, owner_keyed: bool = False) -> DropSnapshot:
    health = DropHealth(probe_hits={"skb:kfree_skb": 123456789}, matched=123456789, lost_rows=12, samples=3456,
                        lost_samples=7, pcap=PcapHealth(1234567, 89012, 345) if pcap else None)
    s = DropSnapshot(rows, [], health, sum(r.count for r in rows), 10**9, owner_keyed=owner_keyed)
    s.interval_ns = 10**9
    return s


def rendered(renderable: object, width: int) -> list[str]:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


def shown_whole_or_marked(value: str, text: str) -> bool:
    """The value is in the text whole, or a prefix of it is, ended by an ellipsis: never a silent cut."""
    if value in text:
        return True
    return any(value[:n] + ELLIPSIS in text for n in range(1, len(value)))


def test_plain_drops_keep_every_field_whole_and_columns_aligned() -> None:
    lines = drops_view.plain_lines(snap(), "t")
    text = "\n".join(lines)
    for fields in FIELDS:
        for value in fields:
            assert value in text, value
    rows = [line for line in lines if line.lstrip().split(" ", 1)[0].replace(",", "").isdigit()]
    assert len({row.index(" udp") if " udp" in row else row.index(" tcp") for row in rows}) == 1  # aligned


def test_plain_drops_without_locations_keep_the_interface_whole() -> None:
    rows = [replace(r, location=None) for r in LONG_ROWS]
    text = "\n".join(drops_view.plain_lines(snap(rows), "t"))
    assert "veth-with-a-long-name@a-namespace-with-a-long-name" in text


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_drops_table_on_a_terminal_fits_and_marks_every_cut(width: int) -> None:
    lines = rendered(drops_view.drops_table(snap(owner_keyed=True), "t", width), width)
    assert max(map(len, lines)) <= width
    text = "\n".join(lines)
    for reason, location, iface in FIELDS:
        assert shown_whole_or_marked(reason, text)
        assert shown_whole_or_marked(iface, text)
        if "LOCATION" in text:  # a location is whole or its column is not shown
            assert location in text
    for field in ("probe_hits=123456789", "pcap_written=1234567", "pcap_skipped=89012", "pcap_lost=345"):
        assert field in text


def test_health_lines_use_the_json_names_and_wrap_between_fields() -> None:
    lines = drops_view.health_lines(snap())
    assert max(map(len, lines)) <= 80
    words = " ".join(lines).split()
    for name in ("probe_hits", "matched", "lost_rows", "samples", "lost_samples", "pcap_written", "pcap_skipped",
                 "pcap_lost"):
        assert any(w.startswith(name + "=") for w in words), name


def test_sample_and_slow_lines_fit_80_columns_and_keep_every_field() -> None:
    sample = DropSample(1, 1, 1272, "a-process-name", 40, replace(LONG_ROWS[0], family=4, saddr="10.201.60.1",
                                                                   daddr="10.201.60.2", sport=59177, dport=5353))
    lines = drops_view.sample_lines(sample)
    assert max(map(len, lines)) <= 80
    joined = " ".join(" ".join(lines).split())  # wrapped between words: each value is whole once rejoined
    for value in ("udp_queue_rcv_one_skb+0x437", "veth-with-a-long-name@a-namespace-with-a-long-name",
                  "10.201.60.1:59177 > 10.201.60.2:5353", "len=40"):
        assert value in joined
    slow = SlowPacket(1, 1, 1404, "python3", "nn3c11e7", 9, 1, 4, "udp", "10.201.60.1", "10.201.60.2", 44619, 5353,
                      {"netif_receive_skb": 2400, "stack_total": 5700, "socket_queue": 8_100_000},
                      {"netif_receive_skb": "rx", "stack_total": "stack", "socket_queue": "queue"})
    lines = trace_view.slow_lines(slow)
    assert max(map(len, lines)) <= 80 and " ".join(lines).split() == trace_view.slow_line(slow).split()


def test_long_stacks_say_how_many_frames_follow() -> None:
    rows = [replace(LONG_ROWS[0], stack=[f"f{i}+0x1" for i in range(20)])]
    text = "\n".join(drops_view.plain_lines(snap(rows), "t"))
    assert "f7+0x1" in text and "f8+0x1" not in text and "12 more frames" in text


def trace_snap(method: str = "tp_btf+raw_tracepoint", comm: str = "python3") -> TraceSnapshot:
    lat = Latency(40, 5_000_000, 7_000_000, 8_000_000, 9_000_000, 200_000_000, 40)
    owner = Owner(None, 4242, comm, "/x", None)
    rows = (StageRow("netif_receive_skb", "net:netif_receive_skb", "tp_btf", lat),
            StageRow("socket_queue", "sock:sk_data_ready+skb:skb_copy_datagram_iovec", method, lat,
                     owners=((owner, lat),)))
    return TraceSnapshot(rows, (), {}, TraceHealth(), 10**9, interval_ns=10**9)


def test_trace_says_each_method_by_its_one_name_within_80_columns() -> None:
    lines = trace_view.plain_lines(trace_snap(), "t", None)
    assert max(map(len, lines)) <= 80
    text = "\n".join(lines)
    assert "via tp_btf: netif_receive_skb; tp_btf+raw_tracepoint: socket_queue" in text
    assert "rawtp" not in text and "python3[4242]" in text
    long = trace_view.plain_lines(trace_snap(comm="a-reader-with-a-long-name"), "t", None)
    assert any("a-reader-with-a-long-name[4242]" in line for line in long)  # piped: as wide as it needs
    table = "\n".join(rendered(trace_view.trace_table(trace_snap(), "t", None, 80), 80))
    assert "tp_btf+raw_tracepoint: socket_queue" in table


def test_the_start_note_counts_hooks_by_method_with_plurals() -> None:
    one = TraceStart(kernel="k", headers="shim", attached=(Attached("net:netif_receive_skb", "tp_btf"),),
                     unavailable=(), filters=Filters())
    assert trace_view.start_note(one).startswith("netpath trace: 1 hook attached (tp_btf 1), 0 stages")


def test_a_stage_reports_the_methods_its_hooks_were_attached_with() -> None:
    from netpath.kernel.facts import KernelFacts
    from netpath.plan import make_plan
    plan = make_plan(KernelFacts.load(Path(__file__).resolve().parents[1] / "fixtures" / "6.18"))
    by_id = {c.stage.id: c for c in plan.available}
    typed = frozenset({"net:netif_receive_skb", "sock:sk_data_ready"})
    assert by_id["netif_receive_skb"].attached_method(typed) == "tp_btf"
    assert by_id["socket_queue"].attached_method(typed) == "tp_btf+raw_tracepoint"
    assert by_id["socket_queue"].attached_method() == "raw_tracepoint"


def test_stacks_start_at_the_frame_that_dropped_and_name_jit_code_bpf() -> None:
    from netpath.collect.drops import dropping_frames

    syms = Kallsyms.parse("ffffffff81000000 T _stext\n"
                          "ffffffff81100000 t bpf_trace_run4\n"
                          "ffffffff81100400 T sk_skb_reason_drop\n"
                          "ffffffff81100800 T udp_queue_rcv_one_skb\n"
                          "ffffffff81101000 T ip_protocol_deliver_rcu\n"
                          "ffffffff835ec7b0 T _einittext\n"
                          "ffffffffc0010000 t bpf_prog_fc3afc244d65b068_kfree_skb\t[bpf]\n"
                          "ffffffffc0400000 t nft_do_chain\t[nf_tables]\n")
    assert syms.frame(0xFFFFFFFFC0010040).startswith("BPF bpf_prog_")
    assert syms.frame(0xFFFFFFFFC0A3AF62) == "BPF 0xffffffffc0a3af62"  # no symbol of its own: not nft_do_chain+...
    assert syms.frame(0xFFFFFFFFC0400010) == "nft_do_chain+0x10"
    frames = [syms.frame(a) for a in (0xFFFFFFFFC0A3AF62, 0xFFFFFFFF81100010, 0xFFFFFFFF81100420,
                                      0xFFFFFFFF81100c37, 0xFFFFFFFF811010d8)]
    assert dropping_frames(frames) == ["udp_queue_rcv_one_skb+0x437", "ip_protocol_deliver_rcu+0xd8"]


def test_rx_imbalance_on_a_virtual_device_gives_no_nic_advice() -> None:
    import test_doctor_rules as t

    veth = replace(t.SETTINGS, nics=(NicSettings("nn0"),))
    win = Window(softnet={0: {"processed": 120_000, "dropped": 0, "time_squeeze": 0},
                          1: {"processed": 800, "dropped": 0, "time_squeeze": 0}}, rx_packets={"nn0": 120_500})
    found = next(f for f in diagnose(t.obs(window=win, settings=veth)) if f.id == "rx-imbalance")
    assert all(k.value is not None for k in found.knobs)  # nothing "unreadable"
    assert not any("irq" in k.name for k in found.knobs)  # a veth has no IRQ lines
    rps = replace(veth, nics=(NicSettings("nn0", rps_cpus=(("rx-0", "0"),)),))
    found = next(f for f in diagnose(t.obs(window=win, settings=rps)) if f.id == "rx-imbalance")
    assert [k.name for k in found.knobs] == ["/sys/class/net/nn0/queues/rx-*/rps_cpus"]  # RPS applies to veth


def test_the_export_start_line_is_a_usable_url() -> None:
    from netpath.cli.export import metrics_url

    assert metrics_url("http", "127.0.0.1", 9872) == "http://127.0.0.1:9872/metrics"
    assert metrics_url("https", "::1", 9872) == "https://[::1]:9872/metrics"
    wildcard = metrics_url("http", "0.0.0.0", 9872)
    assert "://:" not in wildcard and wildcard.endswith(":9872/metrics (every address)")
