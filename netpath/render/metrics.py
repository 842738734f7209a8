"""Snapshots as Prometheus metric families: the `netpath export` contract (netpath-export(8)).

Counters come from run totals, so they only go up. Each labelled family
has a series budget: label sets past it fold into one `_other` series
(counted in netpath_series_dropped_total) and stay folded, so no counter
ever moves between series and goes backwards.

Once `started` is set (the wall-clock time the probes were attached),
counter and histogram series carry an OpenMetrics created timestamp: the
last moment the series is known to have been zero. That is `started` for a
series present at the first scrape, else the previous scrape's time (the
series did not exist then, so counted nothing). A Prometheus that ingests
created timestamps then starts a series that appears with a non-zero value
at zero, and increase()/rate() see its first count.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample

from netpath.model import DropSnapshot, Finding, Latency, Owner, Start, TraceSnapshot

OTHER = "_other"
RX_STAT_LABELS = ["source", "stat", "iface", "netns", "netns_label", "pod", "pod_namespace"]
# histogram bounds: powers of two from 128 ns to 17 s; the in-kernel slots split exactly at them
LE_NS = tuple(1 << i for i in range(7, 35))

Labels = tuple[str, ...]


class SeriesBudget:
    """At most `limit` label sets per family; the rest fold into one overflow series that never shrinks.

    Values are tuples (a family and its companions, such as NAPI polls, work
    and budget exhaustion, fold together).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.admitted: set[Labels] = set()
        self.folded: set[Labels] = set()
        self.retired: tuple[float, ...] = ()  # what folded series had counted before they went away
        self.last: dict[Labels, tuple[float, ...]] = {}

    def split(self, values: dict[Labels, tuple[float, ...]]) -> tuple[dict[Labels, tuple[float, ...]],
                                                                       tuple[float, ...] | None]:
        """(series that keep their labels, the overflow series' values or None while nothing folded)."""
        for gone in set(self.last) - set(values):
            if gone in self.folded:
                self.retired = _add(self.retired, self.last[gone])
                self.folded.discard(gone)
            self.admitted.discard(gone)
        own: dict[Labels, tuple[float, ...]] = {}
        overflow = self.retired
        # largest first decides which new label sets keep their labels; with none new (most scrapes) the
        # order matters only to the overflow's sum, so only the folded ones are sorted, in the same order
        pending: Iterable[tuple[Labels, tuple[float, ...]]] = values.items()
        if all(labels in self.admitted or labels in self.folded for labels in values):
            own = {k: v for k, v in values.items() if k in self.admitted}
            pending = [(k, v) for k, v in values.items() if k not in self.admitted]
        for labels, value in sorted(pending, key=lambda kv: (-kv[1][0], kv[0])):
            if labels not in self.admitted and labels not in self.folded:
                (self.admitted if len(self.admitted) < self.limit else self.folded).add(labels)
            if labels in self.admitted:
                own[labels] = value
            else:
                overflow = _add(overflow, value)
        self.last = dict(values)
        return own, (overflow if overflow else None)

    @property
    def dropped(self) -> int:
        return len(self.folded)


def _add(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, ...]:
    if not a:
        return b
    return tuple(x + y for x, y in zip(a, b, strict=True))


class MetricSet:
    """Builds every family of one scrape; holds the series budgets across scrapes."""

    FAMILIES = ("netpath_drops_total", "netpath_rx_stat_total", "netpath_napi_polls_total")

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self.budgets = {name: SeriesBudget(max_series) for name in self.FAMILIES}
        self.dropped_ever: dict[str, int] = dict.fromkeys(self.FAMILIES, 0)
        self.started: float | None = None  # wall-clock seconds at attach; None: no created timestamps
        self._zero_at: float | None = None  # the last time a series absent now was known to be zero
        self._created: dict[tuple[str, Labels], float] = {}
        self._seen: set[tuple[str, Labels]] = set()

    def created(self, family: str, labels: Labels) -> float | None:
        """The series' created timestamp (see the module doc), fixed at its first scrape."""
        if self.started is None:
            return None
        key = (family, labels)
        self._seen.add(key)
        if key not in self._created:
            self._created[key] = self._zero_at if self._zero_at is not None else self.started
        return self._created[key]

    def scraped(self, now: float) -> None:
        """Ends a scrape at wall-clock time now: series not in it start afresh if they come back."""
        for key in set(self._created) - self._seen:
            del self._created[key]
        self._seen = set()
        self._zero_at = now

    def _bounded(self, key: str, families: list[CounterMetricFamily], values: dict[Labels, tuple[float, ...]],
                 width: int) -> None:
        """Adds each series to the families (one per tuple position), folded past the budget."""
        budget = self.budgets[key]
        own, overflow = budget.split(values)
        if overflow is not None:
            own[(OTHER,) * width] = overflow
        for labels, vector in sorted(own.items()):
            for fam, value in zip(families, vector, strict=True):
                fam.add_metric(list(labels), value, created=self.created(fam.name, labels))
        self.dropped_ever[key] = max(self.dropped_ever[key], budget.dropped)

    def findings(self, found: list[Finding], window_s: float) -> Iterator[Metric]:
        """netpath_finding{id,severity,iface,netns_label}: each finding of the rolling window, valued by its first
        evidence number. Ids and severities are a fixed set; past the series budget the rest of a rule's
        findings fold into one iface="_other" series, so the family stays bounded."""
        fam = GaugeMetricFamily("netpath_finding", "A netpath doctor finding over the rolling window (see "
                                "netpath-doctor(8)): the value is its first evidence number (drops, packets)",
                                labels=["id", "severity", "iface", "netns_label"])
        values: dict[Labels, float] = {}
        for f in found:
            labels: Labels = (f.id, f.severity, f.where.iface or "", f.where.netns_label or "")
            if labels not in values and len(values) >= self.max_series:
                labels = (f.id, f.severity, OTHER, OTHER)
            values[labels] = values.get(labels, 0) + (f.evidence[0].value if f.evidence else 1)
        for labels, value in sorted(values.items()):
            fam.add_metric(list(labels), value)
        yield fam
        yield GaugeMetricFamily("netpath_finding_window_seconds", "The span netpath_finding looks back over",
                                value=window_s)
    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        base = name.removesuffix("_total")
        return CounterMetricFamily(base, doc, value=value, created=self.created(base, ()))

    def build_info(self, start: Start, version: str) -> Metric:
        g = GaugeMetricFamily("netpath_build_info", "netpath version, kernel release and header mode; always 1",
                              labels=["version", "kernel", "headers"])
        g.add_metric([version, start.kernel, start.headers], 1)
        return g

    def drops(self, snap: DropSnapshot) -> Iterator[Metric]:
        names = ["reason", "iface", "netns", "netns_label", "proto"]
        if snap.owner_keyed:
            names += ["cgroup", "container", "pod", "pod_namespace"]
        fam = CounterMetricFamily("netpath_drops_total", "Packets the kernel dropped (skb:kfree_skb), by its drop "
                                  "reason, interface, network namespace (inode and name) and protocol [and the "
                                  "receiving socket's cgroup, container, pod and pod namespace]", labels=names)
        values: dict[Labels, tuple[float, ...]] = {}
        for row in snap.rows:
            labels: Labels = (row.reason or "", row.iface or (str(row.ifindex) if row.ifindex else ""),
                              str(row.netns or ""), row.netns_label or "", row.proto or "")
            if snap.owner_keyed:
                who = row.owner or Owner()
                labels += (who.cgroup or "", who.container or "", who.pod or "", who.pod_namespace or "")
            values[labels] = _add(values.get(labels, ()), (row.count,))
        self._bounded("netpath_drops_total", [fam], values, len(names))
        yield fam
        counters = CounterMetricFamily("netpath_rx_stat_total", "Drop counters no skb event carries (link stats, "
                                       "qdisc drops, SNMP, conntrack), by source and counter name; SNMP and "
                                       "conntrack of every network namespace, with its inode, name and pod",
                                       labels=RX_STAT_LABELS)
        cvalues: dict[Labels, tuple[float, ...]] = {}
        for c in snap.counters + snap.netns_counters:
            if c.source == "softnet":  # node_exporter exports node_softnet_*: not twice
                continue
            if snap.netns_own and c.netns is None and c.source in ("snmp", "conntrack"):
                continue  # the run's own namespace's are among netns_counters, with their zero series
            key = (c.source, c.name, c.iface or "", str(c.netns or ""), c.netns_label or "", c.pod or "",
                   c.pod_namespace or "")
            cvalues[key] = _add(cvalues.get(key, ()), (c.count,))
        self._bounded("netpath_rx_stat_total", [counters], cvalues, len(RX_STAT_LABELS))
        yield counters
        h = snap.health
        yield self._counter("netpath_drops_matched_total", "Drops that passed netpath's filters (exact, map full or "
                            "not)", h.matched)
        yield self._counter("netpath_drops_map_full_total", "Drops counted in matched but not in a row: the drops map "
                            "was full", h.lost_rows)
        yield self._counter("netpath_drops_no_device_total", "Drops that came in on an interface but whose namespace "
                            "the kernel no longer names (no device, socket or fragment queue): --netns/--iface "
                            "cannot match them", h.no_device)

    def trace(self, snap: TraceSnapshot) -> Iterator[Metric]:
        hist = HistogramMetricFamily("netpath_stage_latency_seconds", "Receive-path stage latency, from the "
                                     "in-kernel log2 histogram of the timed packets (1 in --sample)",
                                     labels=["stage"])
        packets = CounterMetricFamily("netpath_stage_packets", "Packets (or runs) each stage saw, timed or not: "
                                      "exact", labels=["stage"])
        napi_labels = ["iface", "netns"]
        polls = CounterMetricFamily("netpath_napi_polls", "NAPI polls, by device", labels=napi_labels)
        work = CounterMetricFamily("netpath_napi_packets", "Packets NAPI polls handled (their work), by device",
                                   labels=napi_labels)
        exhausted = CounterMetricFamily("netpath_napi_budget_exhausted", "NAPI polls that used up their budget, by "
                                        "device", labels=napi_labels)
        napi: dict[Labels, tuple[float, ...]] = {}
        for row in snap.stages:
            hist.add_metric([row.stage], _buckets(row.latency), row.latency.sum_ns / 1e9)
            created = self.created(hist.name, (row.stage,))
            if created is not None:
                hist.samples.append(Sample(hist.name + "_created", {"stage": row.stage}, created))
            packets.add_metric([row.stage], row.count, created=self.created(packets.name, (row.stage,)))
            for where, n in row.napi_parts:
                labels = (where.iface or (str(where.ifindex) if where.ifindex else ""), str(where.netns or ""))
                napi[labels] = _add(napi.get(labels, ()), (n.polls, n.work, n.exhausted))
        yield hist
        yield packets
        self._bounded("netpath_napi_polls_total", [polls, work, exhausted], napi, 2)
        yield polls
        yield work
        yield exhausted
        un = GaugeMetricFamily("netpath_stage_unavailable", "Stages this kernel could not attach (1), with the reason",
                               labels=["stage", "reason"])
        for item in snap.unavailable:
            un.add_metric([item.stage or item.hook, item.reason], 1)
        yield un
        h = snap.health
        untimed = CounterMetricFamily("netpath_trace_untimed_total", "Packets a stage counted but could not time, "
                                      "by why", labels=["why"])
        for why, value in (("histogram_map_full", h.lost_samples), ("skb_map_full", h.lost_skbs),
                           ("read_before_wakeup", h.missed_enqueue), ("socket_ring_overrun", h.ring_overrun)):
            untimed.add_metric([why], value, created=self.created(untimed.name, (why,)))
        yield untimed

    def health(self, hits: dict[tuple[str, str], int], scrape_s: float,
               bpf_runs: dict[tuple[str, str], tuple[int, int]]) -> Iterable[Metric]:
        """hits: (program, hook) -> runs; bpf_runs: (program, BPF function) -> (runs, ns)."""
        fam = CounterMetricFamily("netpath_probe_hits_total", "Times each hook ran, by netpath program (drops, "
                                  "trace)", labels=["program", "hook"])
        for (prog, hook), value in sorted(hits.items()):
            fam.add_metric([prog, hook], value, created=self.created(fam.name, (prog, hook)))
        yield fam
        dropped = CounterMetricFamily("netpath_series_dropped_total", "Label sets folded into a family's _other "
                                      "series by --max-series", labels=["metric"])
        for name, value in sorted(self.dropped_ever.items()):
            dropped.add_metric([name], value, created=self.created(dropped.name, (name,)))
        yield dropped
        yield GaugeMetricFamily("netpath_scrape_duration_seconds", "Time netpath spent reading maps for this "
                                "scrape", value=scrape_s)
        if bpf_runs:
            runs = CounterMetricFamily("netpath_bpf_runs_total", "Runs of each BPF function "
                                       "(kernel.bpf_stats_enabled=1)", labels=["program", "function"])
            secs = CounterMetricFamily("netpath_bpf_run_seconds_total", "Time spent in each BPF function "
                                       "(kernel.bpf_stats_enabled=1)", labels=["program", "function"])
            for (prog, fn), (count, ns) in sorted(bpf_runs.items()):
                runs.add_metric([prog, fn], count, created=self.created(runs.name, (prog, fn)))
                secs.add_metric([prog, fn], ns / 1e9, created=self.created(secs.name, (prog, fn)))
            yield runs
            yield secs




def _buckets(lat: Latency) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for le in LE_NS:
        below = sum(b.count for b in lat.buckets if b.hi_ns <= le)
        out.append((repr(le / 1e9), below))
    out.append(("+Inf", lat.count))
    return out
