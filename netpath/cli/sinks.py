"""Where a driven session's output goes: JSON lines, or a view for people; all through one Terminal."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import replace
from types import ModuleType

from netpath.cli import pcap_out
from netpath.cli.console import Terminal
from netpath.collect.session import Sink
from netpath.errors import MissingCapability
from netpath.model import (
    CapturedPacket,
    DropSample,
    DropSnapshot,
    Event,
    SlowPacket,
    Snapshot,
    Start,
    TraceSnapshot,
    Verdict,
)
from netpath.render import pcapng, records


# the views for people import rich (~20 ms): a --json run never loads them
def _drops_view() -> ModuleType:
    from netpath.render import drops_view

    return drops_view


def _trace_view() -> ModuleType:
    from netpath.render import trace_view

    return trace_view


class JsonSink:
    """JSON Lines on stdout, the machine contract."""

    def __init__(self, term: Terminal) -> None:
        self.term = term

    def started(self, start: Start) -> None:
        self.term.emit(records.start(start))

    def events(self, events: list[Event]) -> None:
        for item in events:
            if isinstance(item, DropSample | SlowPacket):  # captured packets go to the pcapng file (PcapSink)
                self.term.emit(records.event(item))

    def interval(self, snap: Snapshot, seq: int) -> None:
        self.term.emit(records.interval(snap, seq))

    def summary(self, snap: Snapshot, stop_reason: str, verdicts: list[Verdict]) -> None:
        self.term.emit(records.summary(snap, stop_reason, verdicts or None))


class DropsView:
    """netpath drops for people: a refreshing table on a terminal, a block per interval when piped."""

    def __init__(self, term: Terminal) -> None:
        self.term = term

    def started(self, start: Start) -> None:
        how = ", ".join(f"{a.hook} attached as {a.method}" for a in start.attached) or "nothing attached"
        self.term.note(f"netpath drops: {how}; Ctrl-C for the summary")

    def events(self, events: list[Event]) -> None:
        if not self.term.interactive:
            for item in events:
                if isinstance(item, DropSample):
                    self.term.plain("\n".join(_drops_view().sample_lines(item)))

    def interval(self, snap: Snapshot, seq: int) -> None:
        assert isinstance(snap, DropSnapshot)
        title = f"netpath drops  t={snap.elapsed_ns / 1e9:.0f}s  {snap.interval_total:,} drops this interval"
        if self.term.interactive:
            self.term.show(_drops_view().drops_table(snap, title, self.term.width))
        else:
            self.term.plain("\n".join(_drops_view().plain_lines(snap, title)))

    def summary(self, snap: Snapshot, stop_reason: str, verdicts: list[Verdict]) -> None:
        assert isinstance(snap, DropSnapshot)
        self.term.close_live()
        title = f"summary ({stop_reason}, {snap.elapsed_ns / 1e9:.1f}s): {snap.total:,} drops"
        if self.term.interactive:  # the table, fitted to the terminal; piped, text as wide as it needs
            self.term.render(_drops_view().drops_table(snap, title, self.term.width))
        else:
            self.term.plain("\n".join(_drops_view().plain_lines(snap, title)))
        for line in _drops_view().verdict_lines(verdicts):
            self.term.plain(line)


class TraceView:
    """netpath trace for people: the stage table, slow packets as they come."""

    def __init__(self, term: Terminal, hist_stage: str | None) -> None:
        self.term = term
        self.hist_stage = hist_stage

    def started(self, start: Start) -> None:
        self.term.note(_trace_view().start_note(start))

    def events(self, events: list[Event]) -> None:
        for item in events:
            if isinstance(item, SlowPacket):
                for text in _trace_view().slow_lines(item, min(self.term.width, 80) if self.term.interactive else 80):
                    self.term.line(text)

    def interval(self, snap: Snapshot, seq: int) -> None:
        assert isinstance(snap, TraceSnapshot)
        title = f"netpath trace  t={snap.elapsed_ns / 1e9:.0f}s  interval {snap.interval_ns / 1e9:.1f}s"
        if self.term.interactive:
            self.term.show(_trace_view().trace_table(snap, title, self.hist_stage, self.term.width))
        else:
            self.term.plain("\n".join(_trace_view().plain_lines(snap, title, self.hist_stage)) + "\n")

    def summary(self, snap: Snapshot, stop_reason: str, verdicts: list[Verdict]) -> None:
        assert isinstance(snap, TraceSnapshot)
        self.term.close_live()
        title = f"summary ({stop_reason}, {snap.elapsed_ns / 1e9:.1f}s)"
        if self.term.interactive:  # the table, fitted to the terminal; piped, text as wide as it needs
            self.term.render(_trace_view().trace_table(snap, title, self.hist_stage, self.term.width))
        else:
            self.term.plain("\n".join(_trace_view().plain_lines(snap, title, self.hist_stage)))
        for line in _trace_view().verdict_lines(verdicts):
            self.term.plain(line)


class PcapSink:
    """drops --pcap: captured packets go to a pcapng stream, everything else to the sink it wraps.

    The stream is flushed at every interval and at the end, and blocks are written whole, so the
    file is valid whenever the run stops (--duration, --count, SIGINT, SIGTERM). When a write fails
    (a full disk, RLIMIT_FSIZE) the capture stops there and the run goes on counting: the file is cut
    back to its last whole block, one line says so, the health carries pcap_error and pcap_unwritten,
    and `stopped` makes the command exit 3 after its summary (netpath-drops(8) EXIT STATUS)."""

    def __init__(self, inner: Sink, out: pcapng.Stream, target: str, term: Terminal,
                 on_stop: Callable[[], None] | None = None) -> None:
        self.inner = inner
        self.writer = pcapng.PcapngWriter(out)
        self.out = out
        self.target = target  # for messages: the file, or "-"
        self.term = term
        self.on_stop = on_stop  # tells the session to stop capturing in the kernel
        self.stopped: str | None = None  # the write error that stopped the capture
        self._handed = 0  # captured packets this sink was given
        self._last = (0, 0)  # (written, unwritten) at the last interval
        try:  # the section header now: even a run that fails to load leaves a valid (empty) capture, and a
            self.writer.flush()  # reader of `--pcap -` sees the stream start
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise MissingCapability(f"--pcap {self.target}: write failed: {exc.strerror or exc}") from None

    def _write(self, pkt: CapturedPacket | None) -> None:
        """A packet to the writer, or (None) a flush; a failure stops the capture for the rest of the run."""
        if self.stopped is not None:
            return
        try:
            if pkt is None:
                self.writer.flush()
            else:
                self.writer.packet(pkt)
        except BrokenPipeError:
            raise
        except OSError as exc:
            self._stop(exc)

    def _stop(self, exc: OSError) -> None:
        why = exc.strerror or str(exc)
        if exc.errno is not None and exc.errno in errno.errorcode:
            why = f"{why} ({errno.errorcode[exc.errno]})"
        self.stopped = why
        cut = pcap_out.cut(self.out, self.writer.kept_bytes)
        where = "stdout" if self.target == "-" else self.target
        end = (f"cut back to its last whole block ({self.writer.kept_bytes:,} bytes)" if cut
               else "ends at its last whole block")
        self.term.warn(f"netpath drops: --pcap {where}: {why}: capture stopped after {self.writer.written:,} "
                       f"packets, counting goes on; the file is {end}")
        if self.on_stop is not None:
            self.on_stop()

    def _health(self, snap: Snapshot, whole_run: bool) -> Snapshot:
        """The file's own account: written is what reached it, unwritten what it could not take."""
        if not isinstance(snap, DropSnapshot) or snap.health.pcap is None:
            return snap
        written, unwritten = self.writer.written, self._handed - self.writer.written
        if not whole_run:
            written, unwritten = written - self._last[0], unwritten - self._last[1]
            self._last = (self.writer.written, self._handed - self.writer.written)
        pcap = replace(snap.health.pcap, written=written, unwritten=unwritten, error=self.stopped)
        return replace(snap, health=replace(snap.health, pcap=pcap))

    def started(self, start: Start) -> None:
        self.inner.started(start)

    def events(self, events: list[Event]) -> None:
        rest: list[Event] = []
        for item in events:
            if isinstance(item, CapturedPacket):
                self._handed += 1
                self._write(item)
            else:
                rest.append(item)
        self.inner.events(rest)

    def interval(self, snap: Snapshot, seq: int) -> None:
        self._write(None)
        self.inner.interval(self._health(snap, False), seq)

    def summary(self, snap: Snapshot, stop_reason: str, verdicts: list[Verdict]) -> None:
        self._write(None)
        self.inner.summary(self._health(snap, True), stop_reason, verdicts)
        where = "stdout" if self.target == "-" else self.target
        self.term.note(f"netpath drops: {self.writer.written:,} dropped packets written to {where}"
                       + (f" (capture stopped: {self.stopped})" if self.stopped else ""))
