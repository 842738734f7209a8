"""The kernel's own measure of BPF program cost: kernel.bpf_stats_enabled and each program fd's fdinfo."""

from __future__ import annotations

from pathlib import Path

SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def enabled(sysctl: Path = SYSCTL) -> bool:
    try:
        return sysctl.read_text().strip() == "1"
    except OSError:
        return False


def parse_fdinfo(text: str) -> tuple[int, int] | None:
    """(run_cnt, run_time_ns) from /proc/PID/fdinfo/FD of a BPF program, None when it has neither."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("run_cnt", "run_time_ns"):
            try:
                fields[name] = int(value.strip())
            except ValueError:
                return None
    if len(fields) != 2:
        return None
    return fields["run_cnt"], fields["run_time_ns"]
