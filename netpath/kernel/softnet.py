"""/proc/net/softnet_stat: the per-CPU backlog and NET_RX budget counters."""

from __future__ import annotations

from pathlib import Path

from netpath.kernel import procnet

SOFTNET_STAT = Path("/proc/net/softnet_stat")
parse_softnet = procnet.parse_softnet  # the parser is kernel/procnet.py's


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
