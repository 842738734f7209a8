"""/proc/net/softnet_stat: the per-CPU backlog and NET_RX budget counters."""

from __future__ import annotations

from pathlib import Path

SOFTNET_COLUMNS = {1: "dropped", 2: "time_squeeze", 10: "flow_limit"}
SOFTNET_STAT = Path("/proc/net/softnet_stat")


def parse_softnet(text: str) -> dict[int, dict[str, int]]:
    """One hex row per online CPU; the CPU id is column 12 when present."""
    out: dict[int, dict[str, int]] = {}
    for row, line in enumerate(text.splitlines()):
        cols = [int(c, 16) for c in line.split()]
        if not cols:
            continue
        cpu = cols[12] if len(cols) > 12 else row
        out[cpu] = {name: cols[i] for i, name in SOFTNET_COLUMNS.items() if i < len(cols)}
    return out


def softnet_totals(path: Path = SOFTNET_STAT) -> dict[str, int]:
    """time_squeeze and dropped summed over CPUs (empty when the file cannot be read)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for cols in parse_softnet(text).values():
        for name in ("time_squeeze", "dropped"):
            out[name] = out.get(name, 0) + cols.get(name, 0)
    return out
