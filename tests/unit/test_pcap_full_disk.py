"""drops --pcap when the file stops taking bytes (no root): whole blocks kept, the rest accounted for."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from test_pcapng import ETH_UDP, blocks, packet

from netpath.cli import pcap_out
from netpath.cli.console import Terminal
from netpath.cli.sinks import PcapSink
from netpath.model import DropHealth, DropSnapshot, PcapHealth, Snapshot
from netpath.render import pcapng


class FillingFile:
    """A real file that takes `room` bytes in all, a short write at the edge, then ENOSPC (as a full tmpfs)."""

    def __init__(self, path: Path, room: int) -> None:
        self.f = open(path, "wb", buffering=0)
        self.room = room

    def write(self, data: bytes | memoryview) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self.f.write(bytes(data[:self.room])) or 0
        self.room -= n
        return n

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.f.fileno()


class Recorder:
    def __init__(self) -> None:
        self.snaps: list[Snapshot] = []

    def started(self, start: object) -> None: ...

    def events(self, events: list) -> None: ...

    def interval(self, snap: Snapshot, seq: int) -> None:
        self.snaps.append(snap)

    def summary(self, snap: Snapshot, stop_reason: str, verdicts: list) -> None:
        self.snaps.append(snap)


def snap(written: int) -> DropSnapshot:
    return DropSnapshot([], [], DropHealth(matched=written, pcap=PcapHealth(written=written)), written, 10**9)


def test_a_write_cut_inside_a_block_counts_only_the_whole_blocks_before_it(tmp_path):
    out = FillingFile(tmp_path / "x.pcapng", 1000)
    w = pcapng.PcapngWriter(out)
    for _ in range(10):
        w.packet(packet(ETH_UDP))
    try:
        w.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    else:
        raise AssertionError("the flush should have failed")
    assert 0 < w.written < 10 and w.kept_bytes < 1000
    assert pcap_out.cut(out, w.kept_bytes)
    raw = (tmp_path / "x.pcapng").read_bytes()
    assert len(raw) == w.kept_bytes
    assert sum(1 for kind, _ in blocks(raw) if kind == pcapng.EPB) == w.written  # whole blocks to the end


def test_the_sink_stops_capturing_keeps_passing_snapshots_and_accounts_for_every_packet(tmp_path, capsys):
    out = FillingFile(tmp_path / "y.pcapng", 1500)
    stopped: list[bool] = []
    inner = Recorder()
    sink = PcapSink(inner, out, str(tmp_path / "y.pcapng"), Terminal(json_mode=True), lambda: stopped.append(True))
    sink.events([packet(ETH_UDP) for _ in range(3)])
    sink.interval(snap(3), 1)
    assert sink.stopped is None
    sink.events([packet(ETH_UDP) for _ in range(20)])
    sink.interval(snap(20), 2)
    assert sink.stopped is not None and "ENOSPC" in sink.stopped and stopped == [True]
    sink.events([packet(ETH_UDP) for _ in range(5)])  # still in the ring when it stopped: never written
    sink.interval(snap(5), 3)
    sink.summary(snap(28), "duration", [])
    h = [s.health.pcap for s in inner.snaps if isinstance(s, DropSnapshot)]
    assert h[0] is not None and (h[0].written, h[0].unwritten, h[0].error) == (3, 0, None)
    first, second, third, total = h
    assert total is not None and total.written + total.unwritten == 28
    assert sum(x.written for x in (first, second, third) if x) == total.written
    assert sum(x.unwritten for x in (first, second, third) if x) == total.unwritten
    assert third is not None and third.written == 0 and third.unwritten == 5
    raw = (tmp_path / "y.pcapng").read_bytes()
    assert sum(1 for kind, _ in blocks(raw) if kind == pcapng.EPB) == total.written
    err = capsys.readouterr().err
    assert err.count("capture stopped after") == 1 and "counting goes on" in err
