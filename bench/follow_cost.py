"""`make bench-follow`: what `netpath follow` costs the traffic it watches (issue 27), as a pps ratio.

The bench topology's UDP workload (sockperf 64 B at its highest rate into the receiver namespace) runs
beside a paced second stream to a closed port at 1/1000 of the untraced rate, alternated over
BENCH_ROUNDS rounds, with bpf_stats off:

- untraced: no netpath;
- follow, matching nothing: `netpath follow --port 9999` (no packet has that port): every hook runs on
  every packet, the entry hooks run the filters, nothing is followed;
- follow, 1 in 1000: `netpath follow --port 9004` (the paced stream): one packet in a thousand is
  followed through every hook and sent to userspace hop by hop.

The ratio is each variant's median pps over the untraced median. Each run also reports the packets the
1-in-1000 variant followed against the paced stream's count (Udp.NoPorts in the receiver). Writes
bench/follow_cost.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import env, tools, workloads
from bench.env import SENDER_CPU

OUT = Path(__file__).resolve().parent / "follow_cost.json"
PORT_FOLLOWED = 9004  # the paced stream's closed port
PORT_NOTHING = 9999  # no packet carries it
FOLLOW_COUNT = 10_000_000  # never reached: the run follows for its whole length


def paced_stream(topo: env.Topology, mps: int, seconds: int) -> subprocess.Popen[str]:
    argv = ["sockperf", "tp", "-i", topo.rx_addr, "-p", str(PORT_FOLLOWED), "-m", "64", "-t", str(seconds + 2),
            f"--mps={mps}"]
    return subprocess.Popen(topo.exec_argv(topo.tx, SENDER_CPU, *argv), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True)


def one(topo: env.Topology, name: str, argv: list[str] | None, mps: int, seconds: int) -> dict[str, Any]:
    tool = tools.Running(tools.Variant(name, "netpath", argv)) if argv else None
    try:
        if tool is not None:
            tool.wait_ready()
            time.sleep(0.3)
        before = topo.snmp(topo.rx)["UdpNoPorts"]
        stream = paced_stream(topo, mps, seconds)
        result = workloads.run(topo, workloads.WORKLOADS[0], seconds)
        stream.wait(30)
        time.sleep(0.3)
        paced = topo.snmp(topo.rx)["UdpNoPorts"] - before
    finally:
        if tool is not None:
            tool.stop()
    summary = (tool.summary() if tool is not None else None) or {}
    return {"variant": name, "pps": result["pps"], "paced": paced, "followed": summary.get("followed"),
            "health": summary.get("health")}


def main(rounds: int, seconds: int) -> int:
    console = Console()
    runs: list[dict[str, Any]] = []
    np = [sys.executable, "-m", "netpath", "follow", "--json", "--count", str(FOLLOW_COUNT)]
    cases: list[tuple[str, list[str] | None]] = [
        ("untraced", None),
        ("follow, matching nothing", [*np, "--port", str(PORT_NOTHING)]),
        ("follow, 1 in 1000", [*np, "--port", str(PORT_FOLLOWED)]),
    ]
    with env.topology(subnet=4) as topo, workloads.servers(topo):
        base = workloads.run(topo, workloads.WORKLOADS[0], seconds)["pps"]
        mps = max(1, int(base) // 1000)
        for rnd in range(rounds):
            for name, argv in (cases if rnd % 2 == 0 else cases[::-1]):
                rec = one(topo, name, argv, mps, seconds)
                rec["round"] = rnd
                runs.append(rec)
                console.print(f"[dim]{ {k: v for k, v in rec.items() if k != 'health'} }[/]")

    def med(name: str) -> float:
        return statistics.median(r["pps"] for r in runs if r["variant"] == name)

    untraced = med("untraced")
    out = {
        "kernel": env.kernel_release(), "cpu_model": env.cpu_model(), "rounds": rounds, "seconds": seconds,
        "paced_mps": mps, "untraced_pps": untraced,
        "ratio": {name: round(med(name) / untraced, 3) for name, _ in cases[1:]},
        "followed_vs_paced": [(r["followed"], r["paced"]) for r in runs if r["variant"] == "follow, 1 in 1000"],
        "runs": runs,
    }
    OUT.write_text(json.dumps(out, indent=1))
    console.print_json(json.dumps({k: v for k, v in out.items() if k != "runs"}))
    console.print(f"wrote {OUT}")
    return 0
