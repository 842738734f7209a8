from dataclasses import replace

import pytest
from rich.console import Console

from netpath.model import Counter, DropHealth, DropRow, DropSnapshot
from netpath.render import drops_view

ROW = DropRow("NETFILTER_DROP", 12, "nft_do_chain+0x3e8", "veth-with-a-long-name", 7, 4026532000, "udp", 12800,
              4, "10.201.7.1", "10.201.7.2", 40000, 5353, ["nf_hook_slow+0x44", "ip_local_deliver+0x7a"])


def snapshot(rows):
    return DropSnapshot(rows, [Counter("snmp", "UdpNoPorts", 5), Counter("softnet", "dropped", 1, cpu=1)],
                        DropHealth(probe_hits={"skb:kfree_skb": 13000}, matched=12800), sum(r.count for r in rows),
                        1_000_000_000,
                        other_rows=3, other_count=9)


def render(renderable) -> list[str]:
    console = Console(width=80, record=True, force_terminal=False, color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


def test_live_table_fits_80_columns_and_shows_rate_total_flow_stack():
    snap = snapshot([replace(ROW, interval_count=400)])
    snap.interval_ns = 2_000_000_000
    lines = render(drops_view.drops_table(snap, "t"))
    text = "\n".join(lines)
    assert max(len(line) for line in lines) <= 80
    assert "NETFILTER_DROP" in text and "12,800" in text and "200" in text  # 400 in 2 s
    assert "#1 10.201.7.1:40000 > 10.201.7.2:5353" in text
    assert "nf_hook_slow+0x44" in text
    assert "(3 more rows)" in text and "UdpNoPorts" in text and "cpu1" in text


def test_plain_lines_fit_80_columns_without_flow():
    row = DropRow("NO_SOCKET", 3, "__udp4_lib_rcv+0x4bc", "lo", 1, 1, "udp", 3000)
    lines = drops_view.plain_lines(snapshot([row]), "title")
    assert lines[0] == "title"
    assert any("NO_SOCKET" in line and "3,000" in line for line in lines)
    assert max(len(line) for line in lines) <= 80
    assert drops_view.plain_lines(snapshot([]), "t")[1] == "  no drops"


@pytest.mark.parametrize("width", [40, 50, 60, 70, 80, 120])
def test_counts_stay_whole_at_any_width_down_to_40(width):
    big = replace(ROW, count=1_234_567, interval_count=400)
    snap = snapshot([big])
    snap.interval_ns = 10**9
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(drops_view.drops_table(snap, "t", width))
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    assert any("1,234,567" in line and "NETF" in line for line in lines)
