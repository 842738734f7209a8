"""Where a driven session's output goes: JSON lines, or a view for people; all through one Terminal."""

from __future__ import annotations

from netpath.cli.console import Terminal
from netpath.collect.session import Sink
from netpath.errors import MissingCapability
from netpath.model import (
    CapturedPacket,
    DropSample,
    DropSnapshot,
    Event,
    FollowedPacket,
    FollowSnapshot,
    SlowPacket,
    Snapshot,
    Start,
    TraceSnapshot,
    Verdict,
)
from netpath.render import drops_view, follow_view, pcapng, records, trace_view


class JsonSink:
    """JSON Lines on stdout, the machine contract."""

    def __init__(self, term: Terminal) -> None:
        self.term = term

    def started(self, start: Start) -> None:
        self.term.emit(records.start(start))

    def events(self, events: list[Event]) -> None:
        for item in events:
            # captured packets go to the pcapng file (PcapSink)
            if isinstance(item, DropSample | SlowPacket | FollowedPacket):
                self.term.emit(records.event(item))

    def interval(self, snap: Snapshot, seq: int) -> None:
        self.term.emit(records.interval(snap, seq))

    def summary(self, snap: Snapshot, stop_reason: str, verdicts: list[Verdict]) -> None:
        if isinstance(snap, FollowSnapshot):  # packets still going: each a record of its own, before the summary
            for packet in (*snap.late, *snap.in_flight):
                self.term.emit(records.packet(packet))
        self.term.emit(records.summary(snap, stop_reason, verdicts or None))


class DropsView:
    """netpath drops for people: a refreshing table on a terminal, a block per interval when piped."""

    def __init__(self, term: Terminal) -> None:
        self.term = term

    def started(self, start: Start) -> None:
        self.term.note("netpath drops: skb:kfree_skb attached; Ctrl-C for the summary")

    def events(self, events: list[Event]) -> None:
        if not self.term.interactive:
            for item in events:
                if isinstance(item, DropSample):
                    self.term.plain(drops_view.sample_line(item))

    def interval(self, snap: Snapshot, seq: int) -> None:
        assert isinstance(snap, DropSnapshot)
        title = f"netpath drops  t={snap.elapsed_ns / 1e9:.0f}s  {snap.interval_total:,} drops this interval"
        if self.term.interactive:
            self.term.show(drops_view.drops_table(snap, title, self.term.width))
        else:
            self.term.plain("\n".join(drops_view.plain_lines(snap, title)))

    def summary(self, snap: Snapshot, stop_reason: str, verdicts: list[Verdict]) -> None:
        assert isinstance(snap, DropSnapshot)
        self.term.close_live()
        title = f"summary ({stop_reason}, {snap.elapsed_ns / 1e9:.1f}s): {snap.total:,} drops"
        self.term.plain("\n".join(drops_view.plain_lines(snap, title)))
        for line in drops_view.verdict_lines(verdicts):
            self.term.plain(line)


class TraceView:
    """netpath trace for people: the stage table, slow packets as they come."""

    def __init__(self, term: Terminal, hist_stage: str | None) -> None:
        self.term = term
        self.hist_stage = hist_stage

    def started(self, start: Start) -> None:
        self.term.note(f"netpath trace: {len(start.attached)} hooks attached, "
                       f"{len(start.unavailable)} stages unavailable; Ctrl-C for the summary")

    def events(self, events: list[Event]) -> None:
        for item in events:
            if isinstance(item, SlowPacket):
                self.term.line(trace_view.slow_line(item))

    def interval(self, snap: Snapshot, seq: int) -> None:
        assert isinstance(snap, TraceSnapshot)
        title = f"netpath trace  t={snap.elapsed_ns / 1e9:.0f}s  interval {snap.interval_ns / 1e9:.1f}s"
        if self.term.interactive:
            self.term.show(trace_view.trace_table(snap, title, self.hist_stage, self.term.width))
        else:
            self.term.plain("\n".join(trace_view.plain_lines(snap, title, self.hist_stage)) + "\n")

    def summary(self, snap: Snapshot, stop_reason: str, verdicts: list[Verdict]) -> None:
        assert isinstance(snap, TraceSnapshot)
        self.term.close_live()
        title = f"summary ({stop_reason}, {snap.elapsed_ns / 1e9:.1f}s)"
        self.term.plain("\n".join(trace_view.plain_lines(snap, title, self.hist_stage)))
        for line in trace_view.verdict_lines(verdicts):
            self.term.plain(line)


class PcapSink:
    """drops --pcap: captured packets go to a pcapng stream, everything else to the sink it wraps.

    The stream is flushed at every interval and at the end, and blocks are written whole, so the
    file is valid whenever the run stops (--duration, --count, SIGINT, SIGTERM)."""

    def __init__(self, inner: Sink, out: pcapng.Stream, target: str, term: Terminal) -> None:
        self.inner = inner
        self.writer = pcapng.PcapngWriter(out)
        self.out = out
        self.target = target  # for messages: the file, or "-"
        self.term = term
        self._io("write", self.writer.flush)  # the section header now: even a run that fails to load leaves a
        # valid (empty) capture, and a reader of `--pcap -` sees the stream start

    def _io(self, action: str, fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise MissingCapability(f"--pcap {self.target}: {action} failed: {exc.strerror or exc}") from None

    def started(self, start: Start) -> None:
        self.inner.started(start)

    def events(self, events: list[Event]) -> None:
        rest: list[Event] = []
        for item in events:
            if isinstance(item, CapturedPacket):
                self._io("write", lambda item=item: self.writer.packet(item))
            else:
                rest.append(item)
        self.inner.events(rest)

    def interval(self, snap: Snapshot, seq: int) -> None:
        self._io("flush", self.writer.flush)
        self.inner.interval(snap, seq)

    def summary(self, snap: Snapshot, stop_reason: str, verdicts: list[Verdict]) -> None:
        self._io("flush", self.writer.flush)
        self.inner.summary(snap, stop_reason, verdicts)
        where = "stdout" if self.target == "-" else self.target
        self.term.note(f"netpath drops: {self.writer.written:,} dropped packets written to {where}")


class FollowView:
    """netpath follow for people: a block per packet as it ends; intervals print nothing."""

    def __init__(self, term: Terminal) -> None:
        self.term = term

    def started(self, start: Start) -> None:
        self.term.note(f"netpath follow: {len(start.attached)} tracepoints attached; following up to "
                       f"{getattr(start, 'count', 0)} packets, Ctrl-C to stop")

    def events(self, events: list[Event]) -> None:
        for item in events:
            if isinstance(item, FollowedPacket):
                self.term.plain("\n".join(follow_view.packet_lines(item)) + "\n")

    def interval(self, snap: Snapshot, seq: int) -> None:
        pass

    def summary(self, snap: Snapshot, stop_reason: str, verdicts: list[Verdict]) -> None:
        assert isinstance(snap, FollowSnapshot)
        for packet in (*snap.late, *snap.in_flight):
            self.term.plain("\n".join(follow_view.packet_lines(packet)) + "\n")
        self.term.plain("\n".join(follow_view.summary_lines(snap, stop_reason)))
