"""The observer effect of `netpath trace` on the per-invocation stages it reports (python -m bench --observer).

A bpftrace program times every NET_RX softirq (bench/bpftrace/netrx.bt) while closed-port UDP datagrams go
from one namespace into another, one per softirq: alone, then with `netpath trace` attached, A/B per round.
Alone vs together is what netpath's own hooks add to a softirq; netpath's net_rx_action mean vs bpftrace's
in the same run is how well the two agree on the same invocations.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time

from bench.env import topology
from bench.tools import BT_DIR, Running, Variant

DATAGRAMS = 20_000
PORT = 40999  # nothing listens there
SEND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(int(sys.argv[3])): s.sendto(b'x' * 16, (sys.argv[1], int(sys.argv[2])))\n"
)


def _bpftrace() -> Running:
    return Running(Variant("bpftrace netrx", "bpftrace", ["bpftrace", "-B", "line", str(BT_DIR / "netrx.bt")]))


def _bt_mean(run: Running) -> tuple[int, float]:
    text = "\n".join(run.lines)
    runs = re.search(r"^@runs: (\d+)", text, re.M)
    total = re.search(r"^@sum_ns: (\d+)", text, re.M)
    if not runs or not total:
        raise RuntimeError(f"bpftrace printed no totals:\n{text[-500:]}")
    return int(runs[1]), int(total[1]) / int(runs[1])


def _burst(tx_ns: str, rx_addr: str) -> None:
    subprocess.run(["ip", "netns", "exec", tx_ns, sys.executable, "-c", SEND, rx_addr, str(PORT), str(DATAGRAMS)],
                   check=True, timeout=120)
    time.sleep(0.5)


def main(rounds: int) -> int:
    alone: list[float] = []
    together: list[float] = []
    gaps: list[float] = []
    with topology(subnet=3) as topo:
        for r in range(rounds):
            bt = _bpftrace()
            bt.wait_ready()
            time.sleep(1)  # bpftrace prints "Attaching" before it has attached
            _burst(topo.tx, topo.rx_addr)
            bt.stop()
            n_alone, mean_alone = _bt_mean(bt)

            np_run = Running(Variant("netpath trace", "netpath",
                                     [sys.executable, "-m", "netpath", "trace", "--json", "--interval", "60"]))
            np_run.wait_ready()
            bt = _bpftrace()
            bt.wait_ready()
            time.sleep(1)
            _burst(topo.tx, topo.rx_addr)
            bt.stop()
            np_run.stop()
            n_both, mean_both = _bt_mean(bt)
            summary = np_run.summary()
            if summary is None:
                raise RuntimeError("netpath trace printed no summary")
            stage = next(s for s in summary["stages"] if s["stage"] == "net_rx_action")  # type: ignore[union-attr]
            np_mean = stage["mean_ns"]
            alone.append(mean_alone)
            together.append(mean_both)
            gaps.append(np_mean / mean_both - 1)
            print(f"round {r + 1}: NET_RX alone {mean_alone:,.0f} ns/run ({n_alone:,} runs); with netpath trace "
                  f"{mean_both:,.0f} ns/run ({n_both:,}); netpath's own net_rx_action {np_mean:,.0f} ns/run "
                  f"({stage['count']:,})", flush=True)
    a, t = statistics.median(alone), statistics.median(together)
    print(f"median NET_RX run: alone {a:,.0f} ns, with netpath trace {t:,.0f} ns ({t / a - 1:+.0%}); "
          f"netpath vs bpftrace on the same runs: {min(gaps):+.1%} to {max(gaps):+.1%}")
    return 0
