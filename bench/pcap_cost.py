"""`make bench-pcap`: what `netpath drops --pcap` costs per dropped packet (issue 20), by bpf_stats.

The kfree_skb program's ns/run with bpf_stats on, in the bench topology, for `netpath drops` and
`netpath drops --pcap` under the same closed-port traffic, alternated over BENCH_ROUNDS rounds:

- paced: sockperf at PACED_MPS (below the in-kernel rate limit, so with --pcap every drop is captured):
  the difference is the cost of capturing one packet (clock read, token, ring reserve, header and packet
  reads, submit);
- storm, --pcap-max 100000000: past the first burst every drop meets an empty token bucket: the cost of a
  drop the rate limit skips;
- storm, --pcap-max 100: the cap is reached within a millisecond: the cost of a drop past the cap.

Each run also reports what netpath counted against the receiver's Udp.NoPorts and the pcap health fields.
Medians are over the clean runs: those where the program ran at most 5% more often than the topology
dropped (other drops on the machine run the same program, and are filtered out early and cheaply).
Writes bench/pcap_cost.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import env, tools, workloads
from bench.env import PORT_NOPORT, SENDER_CPU

OUT = Path(__file__).resolve().parent / "pcap_cost.json"
PACED_MPS = 1000  # one CPU's rate limit is contract.PCAP_RATE_PER_CPU (2000/s)


def paced(topo: env.Topology, seconds: int) -> dict[str, object]:
    """sockperf at PACED_MPS to the closed port; the receiver's Udp.NoPorts is the truth."""
    before = topo.snmp(topo.rx)["UdpNoPorts"]
    env.sh(*topo.exec_argv(topo.tx, SENDER_CPU, "sockperf", "tp", "-i", topo.rx_addr, "-p", str(PORT_NOPORT), "-m",
                           "64", "-t", str(seconds), f"--mps={PACED_MPS}"), timeout=seconds + 30)
    time.sleep(0.3)
    count = topo.snmp(topo.rx)["UdpNoPorts"] - before
    return {"pps": round(count / seconds), "rx_count": count}


def one(topo: env.Topology, name: str, argv: list[str], load: str, seconds: int) -> dict[str, Any]:
    ids_before = set(env.bpf_progs())
    tool = tools.Running(tools.Variant(name, "netpath", argv, "start line"))
    try:
        tool.wait_ready()
        time.sleep(0.3)
        p0 = env.bpf_progs()
        ids = set(p0) - ids_before
        result = paced(topo, seconds) if load == "paced" else workloads.run(topo, workloads.WORKLOADS[2], seconds)
        p1 = env.bpf_progs()
    finally:
        tool.stop()
    prog = next((d for d in env.prog_deltas(p0, p1, ids) if "kfree" in str(d["name"])), None)
    summary = tool.summary() or {}
    health = summary.get("health") or {}
    seen = tools.netpath_drop_count(summary, topo.netns_inode(topo.rx), "NO_SOCKET")
    return {"variant": name, "load": load, "pps": result.get("pps"), "truth": result.get("rx_count"), "seen": seen,
            "exact": seen == result.get("rx_count"), "ns_per_run": prog and prog["ns_per_run"],
            "run_cnt": prog and prog["run_cnt"],
            **{k: v for k, v in health.items() if k.startswith("pcap_")}}


def main(rounds: int, seconds: int) -> int:
    console = Console()
    runs: list[dict[str, Any]] = []
    with env.bpf_stats_enabled(), env.topology(subnet=3) as topo:
        # only this topology's drops: other work on the machine must not take the capture's places
        np = [sys.executable, "-m", "netpath", "drops", "--json", "--interval", "1", "--netns", topo.rx]
        pcap = [*np, "--pcap", str(tools.PCAP_FILE), "--force"]
        uncapped = [*pcap, "--pcap-max", "100000000"]
        cases = [
            ("netpath drops", np, "paced"), ("netpath drops --pcap", uncapped, "paced"),
            ("netpath drops", np, "storm"), ("netpath drops --pcap --pcap-max 100000000", uncapped, "storm"),
            ("netpath drops --pcap --pcap-max 100", [*pcap, "--pcap-max", "100"], "storm"),
        ]
        for rnd in range(rounds):
            for name, argv, load in (cases if rnd % 2 == 0 else cases[::-1]):
                rec = one(topo, name, argv, load, seconds)
                rec["round"] = rnd
                runs.append(rec)
                console.print(f"[dim]{rec}[/]")
    tools.PCAP_FILE.unlink(missing_ok=True)

    for r in runs:
        # the program runs for every kfree_skb on the machine; the filter drops others' early, but at 1000
        # drops/s a busy neighbour's drops would be most of the runs: such a run says nothing of ours
        r["clean"] = bool(r["run_cnt"] and r["truth"] and r["run_cnt"] <= 1.05 * r["truth"])

    def med(name: str, load: str, key: str) -> float | None:
        xs = [r[key] for r in runs if r["variant"] == name and r["load"] == load and r[key] is not None
              and r["clean"]]
        return statistics.median(xs) if xs else None

    base_paced, base_storm = med("netpath drops", "paced", "ns_per_run"), med("netpath drops", "storm", "ns_per_run")
    out = {
        "kernel": env.kernel_release(), "cpu_model": env.cpu_model(), "rounds": rounds, "seconds": seconds,
        "paced_mps": PACED_MPS, "runs": runs,
        "ns_per_drop": {
            "drops": {"paced": base_paced, "storm": base_storm},
            "pcap_captured_paced": med("netpath drops --pcap", "paced", "ns_per_run"),
            "pcap_rate_limited_storm": med("netpath drops --pcap --pcap-max 100000000", "storm", "ns_per_run"),
            "pcap_past_cap_storm": med("netpath drops --pcap --pcap-max 100", "storm", "ns_per_run"),
        },
        "storm_pps": {name: med(name, "storm", "pps") for name in
                      ("netpath drops", "netpath drops --pcap --pcap-max 100000000",
                       "netpath drops --pcap --pcap-max 100")},
        "all_exact": all(r["exact"] for r in runs),
        "clean_runs": sum(r["clean"] for r in runs), "total_runs": len(runs),
    }
    OUT.write_text(json.dumps(out, indent=1))
    console.print_json(json.dumps({k: v for k, v in out.items() if k != "runs"}))
    console.print(f"wrote {OUT}")
    return 0
