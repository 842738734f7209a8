"""The /proc/net counter files, parsed once for everyone: snmp, netstat, snmp6, sockstat, softnet_stat
and stat/nf_conntrack. Every field is returned; each reader keeps the ones it reports.

Names follow nstat (`IpInDiscards`, `TcpExtListenDrops`, `Udp6NoPorts`), the names operators know from
`nstat` and node_exporter. The texts come from whichever namespace the caller read them in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# a value line's numbers as snmp_seq_show prints them: decimal, some negative (Ip's MaxConn is -1)
_PLAIN_NUMBERS = re.compile(r"(?:[ \t]+-?[0-9]+)*[ \t]*", re.ASCII)


def parse_snmp(text: str) -> dict[str, int]:
    """/proc/net/snmp: header and value lines in pairs (`Ip: Forwarding ...` / `Ip: 1 ...`), every field
    as prefix+name (IpReasmFails)."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        prefix, _, names = header.partition(":")
        vprefix, _, nums = values.partition(":")
        if prefix != vprefix:
            continue
        if _PLAIN_NUMBERS.fullmatch(nums):  # what the kernel prints: every field at once (the exporter
            out.update(zip([prefix + n for n in names.split()], map(int, nums.split()), strict=False))
            continue                        # parses these files at every scrape, in every namespace)
        for name, num in zip(names.split(), nums.split(), strict=False):
            if num.lstrip("-").isdigit():
                out[prefix + name] = int(num)
    return out


def parse_netstat(text: str) -> dict[str, int]:
    """/proc/net/netstat: the same layout as snmp (TcpExt, IpExt, MPTcpExt): TcpExtListenOverflows."""
    return parse_snmp(text)


def parse_snmp6(text: str) -> dict[str, int]:
    """/proc/net/snmp6: one `Name value` per line (Udp6NoPorts)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_sockstat(text: str) -> dict[str, int]:
    """/proc/net/sockstat (and sockstat6): "UDP: inuse 3 mem 2" -> {"sockstat.UDP.inuse": 3,
    "sockstat.UDP.mem": 2}. inuse is this namespace's; mem (pages) is the protocol's, host-wide, the
    number tcp_mem / udp_mem are compared with (sk_memory_allocated, __sk_mem_raise_allocated)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        proto, sep, rest = line.partition(":")
        words = rest.split()
        if not sep or len(words) % 2:
            continue
        for key, value in zip(words[::2], words[1::2], strict=True):
            if value.isdigit():
                out[f"sockstat.{proto.strip()}.{key}"] = int(value)
    return out


# softnet_stat's columns (net/core/net-procfs.c, softnet_seq_show): 0 processed, 1 dropped, 2 time_squeeze,
# 9 received_rps, 10 flow_limit_count, 11 backlog length (6.x), 12 the CPU's index
SOFTNET_COLUMNS = {0: "processed", 1: "dropped", 2: "time_squeeze", 9: "received_rps", 10: "flow_limit"}


def parse_softnet(text: str) -> dict[int, dict[str, int]]:
    """/proc/net/softnet_stat: one hex row per online CPU -> cpu -> the named columns it has. The CPU is
    column 12 where the kernel prints it (4.18+), else the row's position."""
    out: dict[int, dict[str, int]] = {}
    for row, line in enumerate(text.splitlines()):
        try:
            cols = [int(c, 16) for c in line.split()]
        except ValueError:
            continue
        if not cols:
            continue
        cpu = cols[12] if len(cols) > 12 else row
        out[cpu] = {name: cols[i] for i, name in SOFTNET_COLUMNS.items() if i < len(cols)}
    return out


# ct_cpu_seq_show (net/netfilter/nf_conntrack_standalone.c, 5.15 on) prints two counters under older
# columns' names: st->clash_resolve under "clashres" and st->chaintoolong under "chainlength". Read by what
# they count, the names the kernel's struct ip_conntrack_stat and conntrack -S use.
CONNTRACK_COLUMNS = {"clashres": "clash_resolve", "chainlength": "chaintoolong"}


def parse_conntrack_stats(text: str) -> dict[str, int]:
    """/proc/net/stat/nf_conntrack: a header of names, then one hex row per CPU -> each column summed
    (`entries` is the same global number on every row, so it is taken once)."""
    lines = text.splitlines()
    if not lines:
        return {}
    names = [CONNTRACK_COLUMNS.get(n, n) for n in lines[0].split()]
    out: dict[str, int] = {}
    for line in lines[1:]:
        for name, value in zip(names, line.split(), strict=False):
            try:
                n = int(value, 16)
            except ValueError:
                continue
            out[name] = n if name == "entries" else out.get(name, 0) + n
    return out


# ---------------------------------------------------------------- one reading per scrape

# A namespace's counter files as one reader of a scrape parsed them: snmp, netstat, snmp6 and
# stat/nf_conntrack, each parsed whole. The exporter's scrape has three readers of the same files in the
# same namespace (the drop counters read between two drop-count readings, collect/counters.py; every
# namespace's zero series, collect/netns_rx.py; the finding window, kernel/settings.py). Within a
# scrape (shared_scrape) the first reads and the later ones take its parse: a few milliseconds apart, the
# same instant for every reader, and for the same kernel state the same numbers (the aligned reading
# itself always reads afresh: each of its tries is a new instant). Outside a scrape every read is fresh.
Parsed = tuple[dict[str, int], dict[str, int], dict[str, int], dict[str, int]]
_SHARED: list[dict[int, Parsed]] = []  # the open scrape's readings, by the reading thread's netns inode


@contextmanager
def shared_scrape() -> Iterator[None]:
    """Readings of the counter files taken inside share one parse per namespace (see above). Scrapes
    never overlap (the exporter's SharedScrape holds a lock around collect)."""
    _SHARED.append({})
    try:
        yield
    finally:
        _SHARED.pop()


def _netns_here() -> int:
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return 0


def read_text(path: Path) -> str:
    """A /proc file's text; empty when it cannot be read (absent where its module is not loaded)."""
    try:
        return path.read_text()
    except OSError:
        return ""


def counter_files(base: Path, fresh: bool = False) -> Parsed:
    """(snmp, netstat, snmp6, nf_conntrack) of the namespace `base` (this thread's /proc/net) belongs to,
    each parsed whole; copies, so a reader may change them. `fresh`: read now even inside a scrape (and
    hand this reading to the readers after it)."""
    scope = _SHARED[-1] if _SHARED else None
    ino = _netns_here() if scope is not None else 0
    got = scope.get(ino) if scope is not None and not fresh else None
    if got is None:
        got = (parse_snmp(read_text(base / "snmp")), parse_snmp(read_text(base / "netstat")),
               parse_snmp6(read_text(base / "snmp6")),
               parse_conntrack_stats(read_text(base / "stat" / "nf_conntrack")))  # empty: no nf_conntrack
        if scope is not None:
            scope[ino] = got
    return dict(got[0]), dict(got[1]), dict(got[2]), dict(got[3])
