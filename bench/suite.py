"""`make bench`: interleaved A/B rounds of every workload under every variant; figures to terminal and JSON."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import env, tools, workloads
from bench.workloads import WORKLOADS, Workload

OUT = Path(__file__).resolve().parent / "results.json"
TARGETS = {"trace_ratio": 0.90, "drops_ratio": 0.97, "export_ratio": 0.97, "ns_per_hook": 60,
           "ns_per_invocation_hook": 80, "trace_ns_per_datagram": 400, "start_s": 0.5, "rss_mb": 100}
PER_INVOCATION_PROGS = ("softirq_raise", "softirq_entry", "softirq_exit", "napi_poll")
console = Console(width=None if sys.stdout.isatty() else 160)


def one_run(topo: env.Topology, w: Workload, v: tools.Variant, seconds: float, names: dict[int, str],
            rnd: int) -> dict[str, Any]:
    rec: dict[str, Any] = {"round": rnd, "workload": w.name, "variant": v.name, "seconds": seconds}
    if v.kind == "untraced":
        rec.update(workloads.run(topo, w, seconds))
        return rec
    ids_before = set(env.bpf_progs())
    tool = tools.Running(v)
    try:
        rec["start_s"] = round(tool.wait_ready(), 3)
        time.sleep(0.3)
        progs0 = env.bpf_progs()
        ids = set(progs0) - ids_before
        cpu0, t0 = tool.cpu_s(), time.monotonic()
        rec.update(workloads.run(topo, w, seconds))
        cpu1, t1 = tool.cpu_s(), time.monotonic()
        progs1 = env.bpf_progs()
        rec["cpu_pct"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 2)
        rec["cpu_s"] = round(cpu1 - cpu0, 3)
        rec["cpu_total_s"] = round(cpu1, 2)
        rec["rss_hwm_mb"] = round(tool.hwm_mb(), 1)
        rec["progs"] = env.prog_deltas(progs0, progs1, ids)
    finally:
        err = tool.stop()
    if w.drop_reason:
        rec["truth"] = rec["rx_count"]
        if v.kind == "netpath" and v.name.endswith(" drops"):
            rec["seen"] = tools.netpath_drop_count(tool.summary(), topo.netns_inode(topo.rx), w.drop_reason)
        elif v.name == "bpftrace drops":
            rec["seen"] = tool.bt_drops(names).get(w.drop_reason, 0)
    if v.kind == "netpath":
        rec["lost"] = tools.netpath_lost(tool.summary())
        if tool.summary() is None:
            rec["error"] = err.strip()[-300:]
    return rec


def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs: list[float]) -> list[float] | None:
    xs = [x for x in xs if x is not None]
    return [min(xs), max(xs)] if xs else None


def aggregate(runs: list[dict[str, Any]], active: list[tools.Variant]) -> dict[str, Any]:
    agg: dict[str, Any] = {"throughput": [], "hooks": [], "cost": [], "drops": []}
    base = {(r["round"], r["workload"]): r["pps"] for r in runs if r["variant"] == "untraced"}
    for w in WORKLOADS:
        for v in active:
            rs = [r for r in runs if r["workload"] == w.name and r["variant"] == v.name]
            if not rs:
                continue
            pps = [r["pps"] for r in rs]
            sent = [r["sent_pps"] for r in rs if r.get("sent_pps")]
            ratios = [r["pps"] / base[(r["round"], w.name)] for r in rs if base.get((r["round"], w.name))]
            # all of the tool's BPF time over the workload, per packet the receiver counted
            per_pkt = [sum(p["run_time_ns"] for p in r["progs"]) / r["rx_count"]
                       for r in rs if r.get("progs") and r.get("rx_count")]
            agg["throughput"].append({
                "workload": w.name, "variant": v.name, "rounds": len(rs), "pps_median": med(pps),
                "pps_min_max": spread(pps), "sent_pps_median": med(sent),
                "pps_spread_pct": round(100 * (max(pps) - min(pps)) / med(pps), 1) if med(pps) else None,
                "ratio_median": round(med(ratios), 3) if ratios else None,
                "ratio_min_max": [round(x, 3) for x in spread(ratios) or []],
                "bpf_ns_per_rx_pkt_median": round(med(per_pkt), 1) if per_pkt else None,
                "bpf_ns_per_rx_pkt_min_max": [round(x, 1) for x in spread(per_pkt) or []],
            })
            if v.kind == "untraced":
                continue
            by_prog: dict[str, list[dict[str, Any]]] = {}
            for r in rs:
                for p in r.get("progs", []):
                    by_prog.setdefault(p["name"], []).append(p)
            for name, ps in sorted(by_prog.items()):
                agg["hooks"].append({
                    "workload": w.name, "variant": v.name, "program": name,
                    "ns_per_run_median": med([p["ns_per_run"] for p in ps]),
                    "ns_per_run_min_max": spread([p["ns_per_run"] for p in ps]),
                    "runs_per_s_median": round(med([p["run_cnt"] for p in ps]) / rs[0]["seconds"]),
                })
            agg["cost"].append({
                "workload": w.name, "variant": v.name,
                "start_s_median": med([r.get("start_s") for r in rs]),
                "start_s_min_max": spread([r.get("start_s") for r in rs]),
                "cpu_pct_median": med([r.get("cpu_pct") for r in rs]),
                "rss_hwm_mb_max": max((r.get("rss_hwm_mb") or 0) for r in rs),
            })
            if w.drop_reason and any("seen" in r for r in rs):
                pairs = [(r.get("seen"), r["truth"]) for r in rs if "seen" in r]
                lost = [r.get("lost") for r in rs if r.get("lost") is not None]
                agg["drops"].append({
                    "workload": w.name, "variant": v.name, "reason": w.drop_reason,
                    "exact_runs": sum(1 for s, t in pairs if s == t), "runs": len(pairs),
                    "seen_truth": pairs,
                    "lost_total": {k: sum(d.get(k, 0) for d in lost) for k in (lost[0] if lost else {})},
                })
    return agg


def fmt(x: Any, nd: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and nd:
        return f"{x:,.{nd}f}"
    if isinstance(x, (int, float)):
        return f"{x:,.0f}"
    return str(x)


def render(agg: dict[str, Any], meta: dict[str, Any]) -> None:
    console.print(f"[bold]netpath bench[/] kernel {meta['kernel']}, {meta['cpu_model']}, "
                  f"{meta['rounds']} rounds x {meta['seconds']} s")
    t = Table(title="Message rate (receiver-side pps) and ratio to untraced, same round")
    for c in ("workload", "variant", "pps median", "pps min-max", "spread %", "ratio median", "ratio min-max",
              "sender pps", "BPF ns/pkt"):
        t.add_column(c, justify="right" if c not in ("workload", "variant") else "left")
    for r in agg["throughput"]:
        mm = r["pps_min_max"] or [None, None]
        rm = r["ratio_min_max"] or [None, None]
        t.add_row(r["workload"], r["variant"], fmt(r["pps_median"]), f"{fmt(mm[0])}-{fmt(mm[1])}",
                  fmt(r["pps_spread_pct"], 1), fmt(r["ratio_median"], 3), f"{fmt(rm[0], 3)}-{fmt(rm[1], 3)}",
                  fmt(r.get("sent_pps_median")), fmt(r.get("bpf_ns_per_rx_pkt_median"), 0))
    console.print(t)
    t = Table(title="bpf_stats: ns per run of every program (kernel.bpf_stats_enabled=1)")
    for c in ("workload", "variant", "program", "ns/run median", "ns/run min-max", "runs/s"):
        t.add_column(c)
    for r in agg["hooks"]:
        mm = r["ns_per_run_min_max"] or [None, None]
        t.add_row(r["workload"], r["variant"], r["program"], fmt(r["ns_per_run_median"], 1),
                  f"{fmt(mm[0], 1)}-{fmt(mm[1], 1)}", fmt(r["runs_per_s_median"]))
    console.print(t)
    t = Table(title="Tool cost: start-up (launch -> ready line), CPU during the workload, RSS high-water mark")
    for c in ("workload", "variant", "start s median", "start s min-max", "CPU % median", "RSS HWM MB max"):
        t.add_column(c)
    for r in agg["cost"]:
        mm = r["start_s_min_max"] or [None, None]
        t.add_row(r["workload"], r["variant"], fmt(r["start_s_median"], 3), f"{fmt(mm[0], 3)}-{fmt(mm[1], 3)}",
                  fmt(r["cpu_pct_median"], 2), fmt(r["rss_hwm_mb_max"], 1))
    console.print(t)
    t = Table(title="Drop counts under the storm vs ground truth (UdpNoPorts / netfilter rule counter)")
    for c in ("workload", "variant", "reason", "exact runs", "seen / truth per round", "lost (netpath health)"):
        t.add_column(c)
    for r in agg["drops"]:
        t.add_row(r["workload"], r["variant"], r["reason"], f"{r['exact_runs']}/{r['runs']}",
                  ", ".join(f"{fmt(s)}/{fmt(tr)}" for s, tr in r["seen_truth"]), json.dumps(r["lost_total"]))
    console.print(t)
    if meta.get("targets"):
        t = Table(title="Targets (reported, not asserted)")
        for c in ("target", "measured", "met"):
            t.add_column(c)
        for r in meta["targets"]:
            t.add_row(r["target"], r["measured"], {True: "yes", False: "NO", None: "n/a"}[r["met"]])
        console.print(t)
    if meta.get("hook_breakdown"):
        t = Table(title="Hook cost breakdown under the closed-port storm (bpf_stats, kfree_skb)")
        for c in ("program", "ns/run", "runs", "pps"):
            t.add_column(c)
        for r in meta["hook_breakdown"]:
            t.add_row(r["program"], fmt(r.get("ns_per_run"), 1), fmt(r.get("run_cnt")), fmt(r.get("pps")))
        console.print(t)
    for n in meta.get("noise", []):
        console.print(f"round {n['round'] + 1}: load {n['loadavg_1m']}, busy before the round: "
                      f"{', '.join(n['busy_before_round']) or 'nothing'}")
    for v in meta["variants"]:
        if not v["available"]:
            console.print(f"[yellow]skipped[/] {v['name']}: {v['why_not']}")


def targets(agg: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def ratio(variant: str) -> list[tuple[str, float]]:
        return [(r["workload"], r["ratio_median"]) for r in agg["throughput"]
                if r["variant"] == variant and r["ratio_median"] is not None]

    for variant, goal in (("netpath drops", TARGETS["drops_ratio"]), ("netpath trace", TARGETS["trace_ratio"]),
                          ("netpath export", TARGETS["export_ratio"])):
        for wname, x in ratio(variant):
            out.append({"target": f"{variant} pps ratio >= {goal} ({wname})", "measured": f"{x:.3f}",
                        "met": x >= goal})
    trace = dict(ratio("netpath trace"))
    peer = dict(ratio("bpftrace stages"))
    for wname, x in trace.items():
        if wname in peer:
            out.append({"target": f"trace ahead of bpftrace stages ({wname})",
                        "measured": f"{x:.3f} vs {peer[wname]:.3f}", "met": x > peer[wname]})
    for r in agg["throughput"]:
        if r["variant"] == "netpath trace" and r["workload"] == "udp" and r.get("bpf_ns_per_rx_pkt_median"):
            x = r["bpf_ns_per_rx_pkt_median"]
            out.append({"target": f"netpath trace BPF ns per delivered datagram <= {TARGETS['trace_ns_per_datagram']}",
                        "measured": f"{x:.0f}", "met": x <= TARGETS["trace_ns_per_datagram"]})
    for r in agg["hooks"]:
        if (r["variant"] in ("netpath trace", "netpath export") and r["program"].removeprefix("raw_tracepoint__")
                in PER_INVOCATION_PROGS and r["ns_per_run_median"] is not None):
            out.append({"target": f"<= {TARGETS['ns_per_invocation_hook']} ns/run {r['program']} ({r['variant']}, "
                                  f"{r['workload']})", "measured": f"{r['ns_per_run_median']:.1f}",
                        "met": r["ns_per_run_median"] <= TARGETS["ns_per_invocation_hook"]})
    for r in agg["hooks"]:
        if r["variant"].startswith("netpath") and r["ns_per_run_median"] is not None:
            out.append({"target": f"<= {TARGETS['ns_per_hook']} ns/run {r['program']} ({r['workload']})",
                        "measured": f"{r['ns_per_run_median']:.1f}",
                        "met": r["ns_per_run_median"] <= TARGETS["ns_per_hook"]})
    for variant in ("netpath drops", "netpath trace"):
        cs = [r for r in agg["cost"] if r["variant"] == variant]
        if not cs:
            continue
        st = med([r["start_s_median"] for r in cs])
        rss = max(r["rss_hwm_mb_max"] for r in cs)
        out.append({"target": f"{variant} start <= {TARGETS['start_s']} s", "measured": f"{st:.3f} s",
                    "met": st is not None and st <= TARGETS["start_s"]})
        out.append({"target": f"{variant} RSS <= {TARGETS['rss_mb']} MB", "measured": f"{rss:.1f} MB",
                    "met": rss <= TARGETS["rss_mb"]})
    for r in agg["drops"]:
        if r["variant"].startswith("netpath"):
            out.append({"target": f"exact drop counts ({r['workload']})",
                        "measured": f"{r['exact_runs']}/{r['runs']} runs exact", "met": r["exact_runs"] == r["runs"]})
    return out


def profile(topo: env.Topology, v: tools.Variant, seconds: float) -> dict[str, Any]:
    """py-spy on a netpath variant while the closed-port storm runs; bpf_stats of the same window."""
    import threading

    ids_before = set(env.bpf_progs())
    tool = tools.Running(v)
    try:
        tool.wait_ready()
        ids = set(env.bpf_progs()) - ids_before
        result: dict[str, Any] = {}
        th = threading.Thread(target=lambda: result.update(
            workloads.run(topo, WORKLOADS[2], seconds)), daemon=True)
        p0 = env.bpf_progs()
        th.start()
        frames = tools.py_spy(tool.proc.pid, int(seconds), Path(f"/tmp/netpath-bench-pyspy-{os.getpid()}.txt"))
        th.join()
        p1 = env.bpf_progs()
    finally:
        tool.stop()
    startup = tools.startup_profile([*v.argv[:-2], "--count", "1", "--interval", "0.1"],
                                    Path(f"/tmp/netpath-bench-startup-{os.getpid()}.txt"))
    return {"variant": v.name, "workload": "noport", "pps": result.get("pps"),
            "py_spy_top_own_frames": frames, "py_spy_startup_inclusive": startup,
            "bpf_stats": env.prog_deltas(p0, p1, ids)}


def hook_breakdown(topo: env.Topology, names: dict[int, str], seconds: float) -> list[dict[str, Any]]:
    """ns/run of kfree_skb programs of growing work under the closed-port storm: where the hook cost goes."""
    np = [sys.executable, "-m", "netpath", "drops", "--json", "--interval", "1"]
    steps = [
        tools.Variant("bpftrace: count only (tracepoint floor)", "bpftrace",
                      ["bpftrace", "-B", "line", "-e", "tracepoint:skb:kfree_skb { @n = count(); }"]),
        tools.Variant("bpftrace drops.bt: @drops(reason, location) = count()", "bpftrace",
                      ["bpftrace", "-B", "line", str(tools.BT_DIR / "drops.bt")]),
        tools.Variant("netpath drops --by reason", "netpath", [*np, "--by", "reason"]),
        tools.Variant("netpath drops (default: reason,location,iface,proto)", "netpath", np),
        tools.Variant("netpath drops --by reason,location,iface,proto,flow", "netpath",
                      [*np, "--by", "reason,location,iface,proto,flow"]),
    ]
    out = []
    for v in steps:
        try:
            rec = one_run(topo, WORKLOADS[2], v, seconds, names, -1)
        except Exception as exc:
            out.append({"program": v.name, "error": str(exc)[-200:]})
            continue
        p = next((x for x in rec.get("progs", []) if "kfree" in str(x["name"])), None)
        out.append({"program": v.name, "ns_per_run": p["ns_per_run"] if p else None,
                    "run_cnt": p["run_cnt"] if p else None, "pps": rec.get("pps")})
        console.print(f"[dim]hook breakdown: {v.name}: {out[-1]}[/]")
    return out


def main(rounds: int, seconds: float, variants: list[str] | None = None, only_workloads: list[str] | None = None,
         profile: bool = True, out: str = "") -> int:
    if os.geteuid() != 0:
        print("bench: run as root (namespaces, BPF, sysctl)", file=sys.stderr)
        return 3
    bt_ok, bt_why = tools.bpftrace_check()
    all_variants = tools.variants(tools.netpath_has("trace"), bt_ok, bt_why)
    active = [v for v in all_variants if v.available and (not variants or v.kind == "untraced" or v.name in variants)]
    wls = [w for w in WORKLOADS if not only_workloads or w.name in only_workloads]
    names = tools.drop_reason_names()
    meta: dict[str, Any] = {
        "kernel": env.kernel_release(), "cpu_model": env.cpu_model(), "ncpu": os.cpu_count(),
        "rounds": rounds, "seconds": seconds, "sender_cpu": env.SENDER_CPU, "receiver_cpu": env.RECEIVER_CPU,
        "bpftrace": {"works": bt_ok, "detail": bt_why},
        "variants": [{"name": v.name, "available": v.available, "why_not": v.why_not, "argv": v.argv,
                      "ready": v.ready} for v in all_variants],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    runs: list[dict[str, Any]] = []
    profiles: list[dict[str, Any]] = []
    t_start = time.monotonic()
    with env.bpf_stats_enabled(), env.topology() as topo, workloads.servers(topo):
        for rnd in range(rounds):
            noise = {"round": rnd, "loadavg_1m": env.loadavg(), "busy_before_round": env.busy_processes()}
            meta.setdefault("noise", []).append(noise)
            console.print(f"[dim]round {rnd + 1}: load {noise['loadavg_1m']}, busy: {noise['busy_before_round']}[/]")
            for w in wls:
                order = active if rnd % 2 == 0 else [active[0], *reversed(active[1:])]
                for v in order:
                    try:
                        rec = one_run(topo, w, v, seconds, names, rnd)
                    except Exception as exc:  # keep the suite going; the record says what failed
                        rec = {"round": rnd, "workload": w.name, "variant": v.name, "pps": None,
                               "error": str(exc)[-300:]}
                    runs.append(rec)
                    console.print(f"[dim]round {rnd + 1}/{rounds} {w.name:7} {v.name:16} "
                                  f"pps={fmt(rec.get('pps'))} start={rec.get('start_s', '-')} "
                                  f"cpu%={rec.get('cpu_pct', '-')} seen/truth={rec.get('seen', '-')}/"
                                  f"{rec.get('truth', '-')}{' ERROR ' + rec['error'] if 'error' in rec else ''}[/]")
        for v in active if profile else []:
            if v.kind == "netpath":
                try:
                    profiles.append(profile(topo, v, max(5.0, seconds)))
                except Exception as exc:  # the figures above still get written
                    profiles.append({"variant": v.name, "error": str(exc)[-300:], "pps": None, "bpf_stats": [],
                                     "py_spy_top_own_frames": [], "py_spy_startup_inclusive": []})
        if profile:
            meta["hook_breakdown"] = hook_breakdown(topo, names, max(3.0, seconds))
    meta["wall_s"] = round(time.monotonic() - t_start, 1)
    report(meta, runs, profiles, Path(out) if out else OUT)
    return 0


def reprofile() -> int:
    """Redo only the profiles and the hook breakdown, into an existing results.json (python -m bench --profile)."""
    data = json.loads(OUT.read_text())
    meta = {k: v for k, v in data.items() if k not in ("aggregate", "profiles", "runs")}
    active = [v for v in tools.variants(tools.netpath_has("trace"), True, "") if v.kind == "netpath" and v.available]
    names = tools.drop_reason_names()
    profiles = []
    with env.bpf_stats_enabled(), env.topology(subnet=3) as topo, workloads.servers(topo):
        for v in active:
            profiles.append(profile(topo, v, max(5.0, float(meta["seconds"]))))
        meta["hook_breakdown"] = hook_breakdown(topo, names, max(3.0, float(meta["seconds"])))
    meta["profiled"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report(meta, data["runs"], profiles)
    return 0


def rerender() -> int:
    """Re-aggregate and print an existing results.json (python -m bench --render)."""
    data = json.loads(OUT.read_text())
    meta = {k: v for k, v in data.items() if k not in ("aggregate", "profiles", "runs")}
    report(meta, data["runs"], data["profiles"])
    return 0


def report(meta: dict[str, Any], runs: list[dict[str, Any]], profiles: list[dict[str, Any]],
           out: Path = OUT) -> None:
    active = [tools.Variant(v["name"], "untraced" if v["name"] == "untraced" else v["name"].split()[0],
                            v["argv"], v["ready"]) for v in meta["variants"] if v["available"]]
    ok_runs = [r for r in runs if r.get("pps") is not None]
    agg = aggregate(ok_runs, active)
    meta["targets"] = targets(agg)
    render(agg, meta)
    for p in profiles:
        console.print(f"[bold]profile[/] {p['variant']} under the closed-port storm ({fmt(p['pps'])} pps): "
                      f"bpf_stats {[(b['name'], b['ns_per_run']) for b in p['bpf_stats']]}")
        console.print("  py-spy, steady state (own samples at 200 Hz):")
        for frame, n in p["py_spy_top_own_frames"]:
            console.print(f"    {n:6}  {frame}")
        console.print("  py-spy, start-up to first interval (inclusive samples at 500 Hz):")
        for frame, n in p["py_spy_startup_inclusive"]:
            console.print(f"    {n:6}  {frame}")
    out.write_text(json.dumps({**meta, "aggregate": agg, "profiles": profiles, "runs": runs}, indent=1))
    console.print(f"wrote {out}")
