"""Names other users choose: one representation, and every renderer keeps it inert (issue 22, class 1)."""

from __future__ import annotations

import io
import json
import os
import sys
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from netpath import untrusted
from netpath.cli import console as console_mod
from netpath.collect import owners
from netpath.kernel.cgroups import CgroupTree
from netpath.model import (
    Counter,
    DropHealth,
    DropRow,
    DropSample,
    DropSnapshot,
    Latency,
    Owner,
    SlowPacket,
    SockInfo,
    StageRow,
    TraceHealth,
    TraceSnapshot,
)
from netpath.render import drops_view, records, trace_view
from netpath.render.metrics import MetricSet

# the hostile corpus: terminal escapes, rich markup, non-UTF-8, newlines, quotes, backslashes, 15 bytes
CORPUS: list[bytes] = [
    b"\x1b]0;title\x07",
    b"\x1b[2J",
    b"\x1b]8;;http://x\x1b\\y\x1b]8;;\x1b\\",
    b"[/x]",
    b"[link=http://x]y[/link]",
    b"[bold red]boom",
    b"\xff\xfe",
    b"a\nb\rc",
    b"q\"u'o`te",
    b"back\\slash",
    b"\\x1b",
    b"abcdefghijklmno",  # 15 bytes, comm's most
    b"\xc2\x9b2J",  # C1 CSI as UTF-8
    b"\xe2\x80\xaeevil",  # right-to-left override
    b":smile: \x7f\x00",
    "caf\u00e9".encode(),
]
CONTROL = {chr(c) for c in range(0x20)} | {chr(0x7F)} | {chr(c) for c in range(0x80, 0xA0)}


def inert(text: str) -> bool:
    return not (set(text) & CONTROL) and "\u202e" not in text


@pytest.mark.parametrize("raw", CORPUS)
def test_every_corpus_name_becomes_printable_text(raw: bytes):
    shown = untrusted.name(raw)
    assert inert(shown)
    assert json.loads(json.dumps(shown)) == shown
    assert shown == untrusted.name(os.fsdecode(raw))  # str from os.listdir says the same


def test_the_representation_is_exact_and_one_to_one():
    assert untrusted.name(b"\x1b]0;title\x07") == "\\x1b]0;title\\x07"
    assert untrusted.name(b"\xff\xfe") == "\\xff\\xfe"
    assert untrusted.name(b"back\\slash") == "back\\\\slash"
    assert untrusted.name(b"\xe2\x80\xae") == "\\u202e"
    assert untrusted.name("caf\u00e9".encode()) == "caf\u00e9"  # printable UTF-8 stays
    assert untrusted.name(b"[/x]") == "[/x]"  # printable: markup safety is the renderers' job
    assert untrusted.name(b"eth0") == "eth0"
    shown = [untrusted.name(raw) for raw in CORPUS]
    assert len(set(shown)) == len(CORPUS)
    assert untrusted.name(b"\\x1b") != untrusted.name(b"\x1b")  # a spelt escape is not the byte


def test_comm_from_bpf_and_from_proc(tmp_path):
    assert untrusted.comm(b"\x1b[2J\0\0\0garbage") == "\\x1b[2J"
    assert untrusted.proc_comm(b" sp ace \n") == " sp ace "
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "comm").write_bytes(b"\xff\xfe\x1b]0;t\x07\n")
    assert owners.process_comm(42, tmp_path) == "\\xff\\xfe\\x1b]0;t\\x07"


def test_cgroup_directories_with_hostile_names(tmp_path):
    bad = os.fsdecode(b"\xff\x1b[2J")
    (tmp_path / bad).mkdir()
    tree = CgroupTree(tmp_path)
    assert tree.path(os.stat(tmp_path / bad).st_ino) == "/\\xff\\x1b[2J"


def names() -> list[str]:
    return [untrusted.name(raw) for raw in CORPUS]


def owner(text: str) -> Owner:
    return Owner(SockInfo(7, "udp", 4, "10.0.0.1", 53), 4242, text, f"/user.slice/{text}", None)


def drop_snapshot() -> DropSnapshot:
    rows = [DropRow("NO_SOCKET", 2, "udp_rcv+0x1", text, 3, 4026532000 + i, "udp", 5, owner=owner(text),
                    netns_label=text, interval_count=1) for i, text in enumerate(names())]
    counters = [Counter("link", "rx_dropped", 1, iface=text) for text in names()]
    health = DropHealth(probe_hits={"skb:kfree_skb": 9}, matched=9)
    snap = DropSnapshot(rows, counters, health, 9, 10**9, owner_keyed=True)
    snap.interval_ns = 10**9
    return snap


def trace_snapshot() -> TraceSnapshot:
    lat = Latency(3, 10, 20, 30, 40, 60, 20)
    row = StageRow("socket_queue", "sk_data_ready", "tp", lat, owners=tuple((owner(t), lat) for t in names()))
    return TraceSnapshot((row,), (), {}, TraceHealth(), 10**9, interval_ns=10**9)


def on_terminal(renderable) -> str:
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True, color_system="truecolor").print(renderable)
    return out.getvalue()


def test_tables_on_a_terminal_show_markup_as_text_and_no_hostile_escape():
    drops = on_terminal(drops_view.drops_table(drop_snapshot(), "t", 200))
    trace = on_terminal(trace_view.trace_table(trace_snapshot(), "t", None, 200))
    assert "[link=http://x]y[/link]" in drops and "[/x][4242]" in trace  # readers: comm[pid], 18 columns
    for text in (drops, trace):
        assert "[/x]" in text
        assert "\x1b]" not in text  # no OSC: no title, no hyperlink
        assert "\x1b[2J" not in text and "\x07" not in text
    assert "\\x1b]0;title\\x07" in drops


def test_plain_lines_samples_and_slow_lines_are_inert():
    snap = drop_snapshot()
    lines = drops_view.plain_lines(snap, "t") + trace_view.plain_lines(trace_snapshot(), "t", None)
    for text in names():
        row = snap.rows[0]
        lines.extend(drops_view.sample_lines(DropSample(1, 0, 1, text, 60, replace(row, iface=text))))
        lines.append(trace_view.slow_line(SlowPacket(1, 0, 1, text, text, 3, 1, 4, "udp", "1.1.1.1", "2.2.2.2",
                                                     1, 2, {"stack_total": 5})))
    for line in lines:
        assert inert(line), line


def test_json_records_carry_the_names_as_shown():
    obj = records.interval(drop_snapshot(), 1)
    line = json.dumps(obj, separators=(",", ":"))
    assert "\x1b" not in line and "\\u001b" not in line
    back = json.loads(line)
    assert {r["iface"] for r in back["rows"]} == set(names())


def test_exposition_escapes_and_parses():
    metrics = MetricSet(1000)

    class Collector:
        def collect(self):
            return list(metrics.drops(drop_snapshot()))

    registry = CollectorRegistry()
    registry.register(Collector())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert "\x1b" not in text
    seen = {s.labels.get("iface") for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert set(names()) <= seen


def test_a_strict_stdout_encoding_shows_escapes_instead_of_crashing(monkeypatch):
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", stream)
    term = console_mod.Terminal(json_mode=False)
    term.plain("cgroup /caf\u00e9.slice")
    stream.flush()
    assert raw.getvalue() == b"cgroup /caf\\xe9.slice\n"
