"""`netpath export`: the drops and trace sessions behind one Prometheus collector, read at scrape time.

Nothing runs per packet in Python: every scrape reads the in-kernel maps
once (each session's whole-run `summary()`), turns them into metric
families (netpath/render/metrics.py) and forgets rows of interfaces that
no longer exist, so their series go away.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from netpath import __version__, bpf, links
from netpath.collect.drops import DropsSession
from netpath.collect.session import Beside
from netpath.collect.trace import TraceSession
from netpath.diagnose import rules
from netpath.diagnose.window import RollingWindow
from netpath.kernel import procnet
from netpath.kernel import settings as settings_mod
from netpath.model import DropHealth, DropSnapshot, Finding, Settings, Start

if TYPE_CHECKING:  # imported at the first scrape: prometheus_client is not needed to attach and answer /healthz
    from prometheus_client.core import Metric

    from netpath.render.metrics import MetricSet

# how stale the list of existing interfaces may be before a deleted one's series are dropped
LIVE_EVERY_S = 10.0
# netpath_finding: the doctor's rules over the last five minutes of drops and counters (netpath-doctor(8))
FINDINGS_WINDOW_S = 300.0


class ExportCollector:
    """A prometheus_client collector: collect() is called once per scrape, never two at a time
    (netpath.cli.http_server.SharedScrape holds a lock around it)."""

    def __init__(self, drops: DropsSession, trace: TraceSession | None, max_series: int) -> None:
        self.drops = drops
        drops.zero_series = True  # every known counter of every namespace from the first scrape, at 0
        self.trace = trace
        self.max_series = max_series
        self._metrics: MetricSet | None = None
        self._started_wall: float | None = None
        self.starts: list[Start] = []
        self._t0 = 0
        self.scrapes = 0
        self._live_at = 0.0
        self.window_ns = 0  # what netpath_finding covers: since the start, FINDINGS_WINDOW_S once rolled
        ns = drops.query.filters.netns
        self.window = RollingWindow(int(FINDINGS_WINDOW_S * 1e9), lambda: settings_mod.read_window_raw(ns))

    @property
    def metrics(self) -> MetricSet:
        """The families' builder, made at the first scrape (render.metrics brings prometheus_client, which
        no start needs)."""
        if self._metrics is None:
            from netpath.render.metrics import MetricSet

            self._metrics = MetricSet(self.max_series)
            self._metrics.started = self._started_wall
        return self._metrics

    def start(self) -> list[Start]:
        # the finding window's first base is the instant the drops start counting (its counters are read
        # with theirs), not after the trace program loads: netpath_finding then covers the drops that
        # netpath_drops_total does, until the window has rolled once. The trace program loads meanwhile
        # (collect.session.Beside: the two verify at once)
        ns = self.drops.query.filters.netns
        self.drops.at_start = lambda: settings_mod.read_window_raw(ns)
        pending = Beside(self.trace.start) if self.trace is not None else None
        try:
            self.starts = [self.drops.start()]
        except BaseException:
            if pending is not None:
                pending.wait()  # what it attached is detached by close(), with the rest
            raise
        self._t0 = time.monotonic_ns()
        self._started_wall = time.time()  # counting began now: the counters' created timestamp
        if self._metrics is not None:
            self._metrics.started = self._started_wall
        raw = self.drops.at_start_value
        assert isinstance(raw, tuple)
        self.window.add(0, DropSnapshot([], [], DropHealth(), 0, 0), raw)
        if pending is not None:
            self.starts.append(pending.result())
        return self.starts

    def collect(self) -> Iterator[Metric]:
        began = time.perf_counter()
        # one reading of each namespace's counter files for the scrape's three readers of them (the drop
        # counters, every namespace's series, the finding window): procnet.shared_scrape
        with procnet.shared_scrape():
            families, hits, runs = self._read()
        self.scrapes += 1
        yield from families
        yield from self.metrics.health(hits, time.perf_counter() - began, runs)
        self.metrics.scraped(time.time())

    def _read(self) -> tuple[list[Metric], dict[tuple[str, str], int], dict[tuple[str, str], tuple[int, int]]]:
        both = self._fresh_live_devices()
        live = both[0] if both is not None else None
        if both is not None:  # only a new look can find an interface gone; forgetting re-reads the maps
            # drop rows carry their namespace's cookie: a namespace gone is gone even if its inode is reused
            self.drops.forget_gone_devices(*both)
        elapsed = time.monotonic_ns() - self._t0
        drops = self.drops.summary(elapsed)
        families = list(self.metrics.drops(drops))
        hits = {("drops", hook): n for hook, n in drops.health.probe_hits.items()}
        runs = _runs("drops", self.drops.prog)
        if self.trace is not None:
            if live is not None:
                self.trace.forget_gone_devices(live)
            trace = self.trace.summary(elapsed)
            families.extend(self.metrics.trace(trace))
            hits.update({("trace", hook): n for hook, n in trace.health.probe_hits.items()})
            runs.update(_runs("trace", self.trace.prog))
        found = self.findings(drops, elapsed)
        families.extend(self.metrics.findings(found, self.window_ns / 1e9))
        families.append(self.metrics.build_info(self.starts[0], __version__))
        return families, hits, runs

    def findings(self, drops: DropSnapshot, elapsed_ns: int) -> list[Finding]:
        """The doctor's rules over the rolling window. Knob values are not exported, so no settings are read
        (no ethtool or sock_diag per scrape), and the latency rules (slow-reader, softirq-wait) are left to
        `netpath doctor`: trace histograms here are run totals, not the window's."""
        delta, window, span = self.window.add(elapsed_ns, drops)
        self.window_ns = span
        if span <= 0:
            return []
        ns = self.drops.query.filters.netns
        settings = Settings(ns.inode if ns else None, ns.label if ns else "host")
        f = self.drops.query.filters
        scoped = f.netns is not None or bool(f.ifaces) or f.proto is not None or f.narrows_flow
        return rules.diagnose(rules.Observation(delta, None, window, settings, span, scoped=scoped))

    def _fresh_live_devices(self) -> tuple[set[tuple[int, int]], set[tuple[int, int]]] | None:
        """Every (netns, ifindex) on the host when LIVE_EVERY_S has passed since the last look (it enters
        each namespace), else None."""
        now = time.monotonic()
        if self._live_at and now - self._live_at < LIVE_EVERY_S:
            return None
        self._live_at = now
        return links.live_devices_both()

    def close(self) -> None:
        self.drops.close()
        if self.trace is not None:
            self.trace.close()


def _runs(name: str, prog: bpf.Program | None) -> dict[tuple[str, str], tuple[int, int]]:
    return {(name, fn): v for fn, v in prog.run_stats().items()} if prog is not None else {}
