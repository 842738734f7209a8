"""Every other network namespace's drop counters beside a host-wide drops run: deltas and run totals.

A host-wide `netpath drops` or `netpath export` reads the SNMP, netstat and conntrack counters of its own
namespace (collect/counters.py); a pod's UdpRcvbufErrors or ListenOverflows are counted in the pod's.
collect/netns_counters.py (shared with doctor) reads every namespace from inside it; this module keeps the
drop counters netpath knows (counters.SNMP_WANTED, SNMP6_WANTED, CONNTRACK_WANTED) of every namespace but
the run's own, from the run's start, by cookie, and names each namespace's pod from a process in it
(the runtime's container that joined it, else a process in it and its cgroup: netpath/runtimes.py).

`step()` gives the counters that rose since the last reading (the drops table and JSON); `totals(zeros=True)`
every known counter of every namespace seen, 0 where it has not moved, so an exporter's series exist from
the first scrape and increase() sees the first drops. A namespace first seen mid-run was made mid-run: its
counters count from zero (netns_counters.window's rule).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from netpath.collect import counters as counters_mod
from netpath.collect import netns_counters
from netpath.model import Counter, NetnsCounters
from netpath.runtimes import RuntimeNames, Workload

# every SNMP drop counter netpath knows, in its order (made once: read for every namespace at every scrape)
_SNMP_WANTED = (*(f"{proto}{name}" for proto, names in counters_mod.SNMP_WANTED.items() for name in names),
                *counters_mod.SNMP6_WANTED)


def known_names(snmp: dict[str, int], conntrack: dict[str, int]) -> list[tuple[str, str]]:
    """(source, name) of every drop counter netpath knows that this namespace's kernel has."""
    out = [("snmp", n) for n in _SNMP_WANTED if n in snmp]
    out += [("conntrack", n) for n in counters_mod.CONNTRACK_WANTED if n in conntrack]
    return out


def netns_pids(proc: Path = Path("/proc")) -> dict[int, int]:
    """Network namespace inode -> the lowest pid in it."""
    out: dict[int, int] = {}
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return out
    for pid in pids:
        try:
            out.setdefault(os.stat(proc / str(pid) / "ns" / "net").st_ino, pid)
        except OSError:
            continue
    return out


def cgroup_of(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The process's cgroup v2 path ("0::" line of /proc/PID/cgroup)."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or None
    return None


@dataclass
class _Seen:
    reading: NetnsCounters  # the last
    base: dict[tuple[str, str], int]  # at the run's start (or 0: made mid-run)
    last: dict[tuple[str, str], int] = field(default_factory=dict)
    workload: Workload | None = None


class NamespaceCounters:
    """The other namespaces' drop counters over a run (the run's own are in collect/counters.py)."""

    def __init__(self, read: Callable[[], tuple[list[NetnsCounters], int]] | None = None,
                 runtimes: RuntimeNames | None = None, own: bool = False) -> None:
        # the run's own namespace is read here only when it is reported here (own)
        self._read = read or (lambda: netns_counters.read_every_namespace_counts(host=own))
        self.own = own
        self._runtimes = runtimes if runtimes is not None else RuntimeNames()
        self._seen: dict[tuple[int, int], _Seen] = {}
        self.skipped = 0
        self._started = False

    @staticmethod
    def _values(c: NetnsCounters) -> dict[tuple[str, str], int]:
        names = known_names(c.snmp, c.conntrack)
        out = {("snmp", n): c.snmp[n] for s, n in names if s == "snmp"}
        out |= {("conntrack", n): c.conntrack[n] for s, n in names if s == "conntrack"}
        return out

    def read(self) -> None:
        readings, self.skipped = self._read()
        pids: dict[int, int] | None = None
        here: set[tuple[int, int]] = set()
        for c in readings:
            if c.label == "host" and not self.own:
                continue  # the run's own namespace: collect/counters.py reads it
            key = (c.cookie, 0) if c.cookie else (0, c.inode)
            here.add(key)
            values = self._values(c)
            seen = self._seen.get(key)
            if seen is None:
                workload = self._runtimes.of_netns(c.inode)
                if workload is None:  # a namespace the runtime made without a path: a process in it says
                    if pids is None:
                        pids = netns_pids()
                    pid = pids.get(c.inode)
                    workload = self._runtimes.of_cgroup(cgroup_of(pid)) if pid else None
                base = dict(values) if not self._started else dict.fromkeys(values, 0)
                seen = self._seen[key] = _Seen(c, base, dict(values), workload)
            seen.reading, seen.last = c, values
        for gone in set(self._seen) - here:  # a deleted namespace: its series end (memory stays bounded)
            del self._seen[gone]
        self._started = True

    def _counter(self, seen: _Seen, source: str, name: str, count: int) -> Counter:
        w = seen.workload or Workload()
        return Counter(source, name, count, netns=seen.reading.inode, netns_label=seen.reading.label,
                       pod=w.pod, pod_namespace=w.pod_namespace)

    def step(self) -> list[Counter]:
        """Read now; the counters that rose since the previous reading."""
        before = {key: dict(seen.last) for key, seen in self._seen.items()}
        self.read()
        out = []
        for key, seen in self._seen.items():
            prev = before.get(key, seen.base)
            for (source, name), value in seen.last.items():
                if value - prev.get((source, name), 0) > 0:
                    out.append(self._counter(seen, source, name, value - prev.get((source, name), 0)))
        return sorted(out, key=_order)

    def totals(self, zeros: bool = False) -> list[Counter]:
        """Since the run's start, every namespace seen (one gone keeps its last values); with zeros also the
        known counters that have not moved."""
        out = []
        for seen in self._seen.values():
            for (source, name), value in seen.last.items():
                delta = max(0, value - seen.base.get((source, name), 0))
                if delta or zeros:
                    out.append(self._counter(seen, source, name, delta))
        return sorted(out, key=_order)


def _order(c: Counter) -> tuple[str, int, str, str]:
    return c.netns_label or "", c.netns or 0, c.source, c.name
