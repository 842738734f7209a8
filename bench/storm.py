"""`make bench-storm`: a UDP flood to a closed port for 30 s with `netpath drops` running (issue 2 figures)."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import env, tools, workloads

OUT = Path(__file__).resolve().parent / "storm.json"


def main(seconds: float) -> int:
    console = Console()
    variant = tools.variants(False, False, "")[1]  # netpath drops
    noport = workloads.WORKLOADS[2]
    with env.bpf_stats_enabled(), env.topology(subnet=2) as topo, workloads.servers(topo):
        inode = topo.netns_inode(topo.rx)
        ids_before = set(env.bpf_progs())
        tool = tools.Running(variant)
        try:
            start_s = tool.wait_ready()
            time.sleep(0.3)
            p0 = env.bpf_progs()
            ids = set(p0) - ids_before
            cpu0, t0 = tool.cpu_s(), time.monotonic()
            result: dict[str, Any] = {}
            th = threading.Thread(target=lambda: result.update(workloads.run(topo, noport, seconds)), daemon=True)
            th.start()
            frames = tools.py_spy(tool.proc.pid, int(seconds) - 2,
                                  Path(f"/tmp/netpath-storm-pyspy-{os.getpid()}.txt"))
            th.join()
            cpu1, t1 = tool.cpu_s(), time.monotonic()
            p1 = env.bpf_progs()
            hwm = tool.hwm_mb()
        finally:
            tool.stop()
    summary = tool.summary()
    per_s = []
    for rec in tool.records():
        if rec.get("type") == "interval":
            n = sum(int(r["count"]) for r in rec.get("rows", [])  # type: ignore[union-attr]
                    if r.get("reason") == "NO_SOCKET" and r.get("netns") == inode)
            per_s.append(round(n * 1e9 / int(rec.get("interval_ns") or 1e9)))
    busy = [x for x in per_s if x > 0]
    seen = tools.netpath_drop_count(summary, inode, "NO_SOCKET")
    out = {
        "kernel": env.kernel_release(), "cpu_model": env.cpu_model(), "seconds": seconds,
        "start_s": round(start_s, 3),
        "udp_noports_truth": result.get("rx_count"), "netpath_no_socket_seen": seen,
        "exact": seen == result.get("rx_count"),
        "flood_pps": result.get("pps"), "sender_pps": result.get("sent_pps"),
        "drops_per_s_intervals": per_s, "drops_per_s_median": statistics.median(busy) if busy else 0,
        "lost": tools.netpath_lost(summary), "health": (summary or {}).get("health"),
        "cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 2), "rss_hwm_mb": round(hwm, 1),
        "bpf_stats": env.prog_deltas(p0, p1, ids), "py_spy_top_own_frames": frames,
    }
    OUT.write_text(json.dumps(out, indent=1))
    console.print_json(json.dumps({k: v for k, v in out.items() if k != "drops_per_s_intervals"}))
    console.print(f"drops/s per interval: {per_s}")
    console.print(f"wrote {OUT}")
    return 0
