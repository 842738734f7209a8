"""Every network namespace's SNMP, netstat and conntrack counters, each read inside its namespace.

/proc/net/snmp, netstat, snmp6, sockstat and stat/nf_conntrack belong to the
network namespace of the *reading thread*, so a host-wide reading of the
initial namespace misses a pod's counter-only drops (a SYN refused at a full
accept queue, UdpRcvbufErrors). This module visits every namespace netpath can
find (each /run/netns name, each process's namespace) in a short-lived thread
that joined it (netns.run_in), checks there that it is the namespace it meant
to join (a PID may have been reused), and labels the reading with the
namespace's inode, its cookie (the identity the kernel never reuses) and name.

`window()` turns two readings into per-namespace deltas, matched by cookie; a
namespace first seen at the end started from zero. `active()` keeps those a
window should diagnose: the named ones, the host's, those whose counters moved
and those a drop row names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from netpath import links, netns
from netpath.kernel import procnet
from netpath.kernel import settings as settings_mod
from netpath.model import NetnsCounters

# namespaces visited per reading: a host with more is read up to this many (the host's and the named ones
# first) and the rest are counted in `skipped` (each visit costs a thread and five small reads)
MAX_NAMESPACES = 512

# sysctls read inside each namespace as levels (nf_conntrack_max is global but shown in every namespace)
LEVEL_SYSCTLS = ("net.netfilter.nf_conntrack_count", "net.netfilter.nf_conntrack_max",
                 "net.netfilter.nf_conntrack_buckets")


# ------------------------------------------------- one namespace, read from inside


def read_here(base: Path | None = None, sysctl_root: Path = Path("/proc/sys"), levels: bool = True
              ) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(snmp, conntrack, levels) of the namespace this thread is in (base: a fixture's /proc/net). Without
    `levels`, the counters only: sockstat and the sysctls are not read, and conntrack's `entries` is dropped."""
    if base is None:
        # /proc/net follows the thread-group leader's namespace; thread-self follows this thread's setns
        base = Path("/proc/thread-self/net")
        if not base.exists():
            base = Path("/proc/net")
    # in an exporter's scrape, the host's files as its drop counters read them (procnet.shared_scrape)
    snmp, netstat, snmp6, conntrack = procnet.counter_files(base)  # conntrack empty: no nf_conntrack here
    snmp |= netstat
    snmp |= snmp6
    if not levels:
        conntrack.pop("entries", None)
        return snmp, conntrack, {}
    found = procnet.parse_sockstat(procnet.read_text(base / "sockstat"))
    found |= {k.replace("sockstat.", "sockstat6.", 1): v
              for k, v in procnet.parse_sockstat(procnet.read_text(base / "sockstat6")).items()}
    for name, value in settings_mod.read_sysctls(LEVEL_SYSCTLS, sysctl_root).items():
        if value.isdigit():
            found[name] = int(value)
    if "entries" in conntrack:  # the table's size now: a level, not a count
        found["conntrack.entries"] = conntrack.pop("entries")
    return snmp, conntrack, found


def _visit(ns: netns.Netns, levels: bool = True, visitor: netns.Visitor | None = None) -> NetnsCounters | None:
    """ns's counters, or None when the thread did not land in ns (its process exited and the PID was
    reused, or the namespace is gone)."""
    def inside() -> NetnsCounters | None:
        if os.stat("/proc/thread-self/ns/net").st_ino != ns.inode:
            return None
        snmp, conntrack, found = read_here(levels=levels)
        return NetnsCounters(ns.inode, netns.cookie_here(), ns.label, False, snmp, conntrack, found)

    if ns.label == "host":  # the caller's own namespace: no thread needed
        return inside()
    try:
        return netns.run_in(ns, inside, visitor)
    except OSError:
        return None


def _ordered(found: Iterable[netns.Netns]) -> list[tuple[netns.Netns, bool]]:
    """(namespace, named), the host's first, then the named ones, then those found through a process."""
    out = []
    for ns in found:
        named = ns.path.parent == netns.NETNS_RUN_DIR
        out.append((ns, named))
    return sorted(out, key=lambda p: (p[0].label != "host", not p[1]))


def read_every_namespace(found: Callable[[], list[netns.Netns]] = netns.known_namespaces,
                         limit: int = MAX_NAMESPACES,
                         visit: Callable[[netns.Netns], NetnsCounters | None] | None = None
                         ) -> tuple[list[NetnsCounters], int]:
    """Every namespace's cumulative counters now, and how many namespaces were left out (over `limit`).
    Without `visit`, each is read from inside it, all on one thread (netns.Visitor).

    Must run in the host's namespace (the caller's thread is where "host" is read)."""
    if visit is None:
        with netns.Visitor() as visitor:
            return read_every_namespace(found, limit, lambda ns: _visit(ns, visitor=visitor))
    here = os.stat("/proc/self/ns/net").st_ino
    out: list[NetnsCounters] = []
    seen: set[int] = set()
    skipped = 0
    for ns, named in _ordered(found()):
        if len(out) >= limit:
            skipped += 1
            continue
        reading = visit(netns.Netns(Path("/proc/self/ns/net"), here, "host") if ns.label == "host" else ns)
        if reading is None or reading.inode in seen:
            continue
        seen.add(reading.inode)
        out.append(replace(reading, named=named, label=links.people_label(reading.label)))
    return out, skipped


def read_every_namespace_counts(host: bool = True) -> tuple[list[NetnsCounters], int]:
    """read_every_namespace without the levels (sockstat, the conntrack sysctls): the counters alone, all a
    drops run or the exporter keeps of each namespace (collect/netns_rx.py), at each scrape. Without `host`
    the caller's own namespace is not read (a drops run reads it with its other counters)."""
    with netns.Visitor() as visitor:  # one thread for every namespace's visit, not one each
        def visit(ns: netns.Netns) -> NetnsCounters | None:
            return _visit(ns, levels=False, visitor=visitor) if host or ns.label != "host" else None

        return read_every_namespace(visit=visit)


# ------------------------------------------------- a window


def _key(c: NetnsCounters) -> tuple[int, int]:
    # the cookie when the kernel has one: an inode is reused within seconds of a namespace's deletion
    return (c.cookie, 0) if c.cookie else (0, c.inode)


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def window(before: Iterable[NetnsCounters], after: Iterable[NetnsCounters]) -> list[NetnsCounters]:
    """Per-namespace deltas over the window (only counters that rose), with the end's levels. A namespace
    absent at the start was created in the window: its counters started at zero. One gone at the end has
    nothing to report."""
    start = {_key(c): c for c in before}
    out = []
    for end in after:
        first = start.get(_key(end))
        base_snmp = first.snmp if first else {}
        base_ct = first.conntrack if first else {}
        out.append(replace(end, snmp=_diff(base_snmp, end.snmp), conntrack=_diff(base_ct, end.conntrack)))
    return out


def active(deltas: Iterable[NetnsCounters], drop_netns: Iterable[int] = ()) -> list[NetnsCounters]:
    """The namespaces a window diagnoses: the host's, the named ones, those whose counters moved, and those
    drop rows name (by inode)."""
    dropped = set(drop_netns)
    return [c for c in deltas
            if c.label == "host" or c.named or c.snmp or c.conntrack or c.inode in dropped]
