"""Benchmark environment: namespaces, veth, netfilter rule, counters, bpf_stats, process accounting."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from netpath.kernel import procnet

REPO = Path(__file__).resolve().parent.parent
SENDER_CPU = 0
RECEIVER_CPU = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")

PORT_UDP = 9000
PORT_TCP = 9001
PORT_NFDROP = 9002
PORT_NOPORT = 9003


def sh(*argv: str, check: bool = True, timeout: float | None = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=timeout)


@dataclass
class Topology:
    """Sender namespace `tx` (10.202.N.1) <-veth-> receiver namespace `rx` (10.202.N.2)."""

    tx: str
    rx: str
    tx_addr: str
    rx_addr: str
    rx_if: str

    def exec_argv(self, ns: str, cpu: int, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, "taskset", "-c", str(cpu), *argv]

    def netns_inode(self, ns: str) -> int:
        return os.stat(f"/run/netns/{ns}").st_ino

    def snmp(self, ns: str) -> dict[str, int]:
        """/proc/net/snmp inside `ns`, with nstat's names ({"UdpNoPorts": n, ...}: kernel/procnet.py)."""
        text = sh("ip", "netns", "exec", ns, "cat", "/proc/net/snmp").stdout
        return procnet.parse_snmp(text)

    def nf_drop_packets(self) -> int:
        """Packet counter of the netfilter DROP rule in the receiver namespace."""
        out = sh("ip", "netns", "exec", self.rx, "iptables", "-w", "-L", "INPUT", "-n", "-v", "-x").stdout
        for line in out.splitlines():
            if "DROP" in line and f"dpt:{PORT_NFDROP}" in line:
                return int(line.split()[0])
        raise RuntimeError(f"netfilter rule not found:\n{out}")


@contextmanager
def topology(subnet: int = 1) -> Iterator[Topology]:
    tag = uuid.uuid4().hex[:6]
    tx, rx = f"npbtx{tag}", f"npbrx{tag}"
    tx_if, rx_if = f"bt{tag}", f"br{tag}"
    tx_addr, rx_addr = f"10.202.{subnet}.1", f"10.202.{subnet}.2"
    sh("ip", "netns", "add", tx)
    sh("ip", "netns", "add", rx)
    try:
        sh("ip", "-n", tx, "link", "add", tx_if, "type", "veth", "peer", "name", rx_if, "netns", rx)
        sh("ip", "-n", tx, "addr", "add", f"{tx_addr}/30", "dev", tx_if)
        sh("ip", "-n", rx, "addr", "add", f"{rx_addr}/30", "dev", rx_if)
        for ns, dev in ((tx, tx_if), (rx, rx_if), (tx, "lo"), (rx, "lo")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "netns", "exec", rx, "iptables", "-w", "-A", "INPUT", "-p", "udp", "--dport", str(PORT_NFDROP),
           "-j", "DROP")
        yield Topology(tx, rx, tx_addr, rx_addr, rx_if)
    finally:
        sh("ip", "netns", "del", tx, check=False)
        sh("ip", "netns", "del", rx, check=False)


# ---------------------------------------------------------------- bpf_stats


def _enable_stats_fd() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): a reference on the stats key that lasts while the fd is open.

    The sysctl is a single shared switch: another process writing 0 to it (a concurrent measurement script
    did, during a run here) would zero every later figure. The fd keeps stats on whatever the sysctl says.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    nr_bpf, bpf_enable_stats = 321, 32  # x86_64 __NR_bpf; enum bpf_cmd BPF_ENABLE_STATS
    attr = ctypes.create_string_buffer(128)  # union bpf_attr, enable_stats.type = BPF_STATS_RUN_TIME (0)
    return int(libc.syscall(nr_bpf, bpf_enable_stats, attr, ctypes.c_uint(len(attr))))


STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


@contextmanager
def bpf_stats(on: bool) -> Iterator[None]:
    """kernel.bpf_stats_enabled set to `on` for one run, its previous value restored after.

    On: the sysctl at 1 and a BPF_ENABLE_STATS fd held for the block. Off: the sysctl at 0 and no fd; stats
    cost two clock reads per program run, which is most of an empty program's cost on this VM, so the pps
    runs are done this way. The kernel's stats key is a count, so another process's fd would keep stats on
    whatever the sysctl says: callers check that the tool's run_cnt did not move (it only moves with stats on).
    """
    old = STATS_SYSCTL.read_text().strip()
    want = "1" if on else "0"
    if old != want:
        sh("sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={want}")
    fd = _enable_stats_fd() if on and os.uname().machine == "x86_64" else -1
    try:
        yield
    finally:
        if fd >= 0:
            os.close(fd)
        # restore only what this block changed, and not over a value another process has written since
        if old != want and STATS_SYSCTL.read_text().strip() == want:
            sh("sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={old}", check=False)


def bpf_stats_enabled() -> AbstractContextManager[None]:
    """bpf_stats on for the whole block (bench-storm, the profiles)."""
    return bpf_stats(True)


@dataclass
class ProgStat:
    id: int
    name: str
    type: str
    run_cnt: int
    run_time_ns: int


def bpf_progs() -> dict[int, ProgStat]:
    out = sh("bpftool", "prog", "show", "--json").stdout
    progs = {}
    for p in json.loads(out or "[]"):
        progs[p["id"]] = ProgStat(p["id"], p.get("name", "?"), p.get("type", "?"), p.get("run_cnt", 0),
                                  p.get("run_time_ns", 0))
    return progs


def prog_deltas(before: dict[int, ProgStat], after: dict[int, ProgStat], ids: set[int]) -> list[dict[str, object]]:
    rows = []
    for pid in sorted(ids):
        if pid not in after:
            continue
        a = after[pid]
        b = before.get(pid)
        cnt = a.run_cnt - (b.run_cnt if b else 0)
        ns = a.run_time_ns - (b.run_time_ns if b else 0)
        rows.append({"id": pid, "name": a.name, "type": a.type, "run_cnt": cnt, "run_time_ns": ns,
                     "ns_per_run": round(ns / cnt, 1) if cnt else None})
    return rows


# ---------------------------------------------------------------- process accounting


def wait_serving(proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Read an exporter's stderr until its "serving http://" line (or its end, or `timeout`)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line or "serving http://" in line:
            return


def proc_cpu_s(pid: int) -> float:
    """utime+stime of `pid` and its reaped children, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is state (field 3); utime=14, stime=15, cutime=16, cstime=17
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def _status_kb(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"{field}:\s+(\d+) kB", text)
    return int(m.group(1)) if m else 0


def proc_hwm_kb(pid: int) -> int:
    return _status_kb(pid, "VmHWM")


def proc_rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS")


def kernel_release() -> str:
    return os.uname().release


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def monotonic() -> float:
    return time.monotonic()


def busy_processes(min_pct: float = 20.0) -> list[str]:
    """Processes using >= min_pct CPU right now (top's 1 s sample): concurrent load skews every figure."""
    out = sh("top", "-b", "-n", "2", "-d", "1", "-o", "%CPU", "-w", "200", check=False).stdout
    block = out[out.rfind("PID USER"):] if "PID USER" in out else ""
    rows = []
    for line in block.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 12:
            try:
                pct = float(cols[8])
            except ValueError:
                continue
            if pct >= min_pct:
                rows.append(f"{cols[11]}({cols[0]}) {pct:.0f}%")
    return rows


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[0]
