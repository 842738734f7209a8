"""`make bench`: interleaved A/B rounds of every workload under every variant; figures to terminal and JSON."""

from __future__ import annotations

import json
import math
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
            rnd: int, stats: bool = False) -> dict[str, Any]:
    """One launch of `v` around one run of `w`, with bpf_stats on or off for all of it (env.bpf_stats).

    Stats off (the pps pass): the tool's programs are still snapshotted before and after the workload; their
    run_cnt must not move (it counts only with stats on), and `stats_off_run_cnt` says whether it did.
    Stats on (the stats pass, the profiles): `progs` holds every program's run_cnt / run_time_ns deltas.
    """
    with env.bpf_stats(stats):
        rec = _one_run(topo, w, v, seconds, names, rnd, stats)
    rec["bpf_stats"] = "on" if stats else "off"
    return rec


def _one_run(topo: env.Topology, w: Workload, v: tools.Variant, seconds: float, names: dict[int, str],
             rnd: int, stats: bool) -> dict[str, Any]:
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
        if tools.scraped(v):
            with tools.Scraper(tools.EXPORT_PORT) as scraper:
                rec.update(workloads.run(topo, w, seconds))
            rec["scrapes"], rec["scrapes_failed"] = scraper.ok, scraper.failed
        else:
            rec.update(workloads.run(topo, w, seconds))
        cpu1, t1 = tool.cpu_s(), time.monotonic()
        progs1 = env.bpf_progs()
        rec["cpu_pct"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 2)
        rec["cpu_s"] = round(cpu1 - cpu0, 3)
        rec["cpu_total_s"] = round(cpu1, 2)
        rec["rss_hwm_mb"] = round(tool.hwm_mb(), 1)
        deltas = env.prog_deltas(progs0, progs1, ids)
        if stats:
            rec["progs"] = deltas
        else:
            rec["stats_off_run_cnt"] = sum(int(d["run_cnt"]) for d in deltas)  # type: ignore[call-overload]
    finally:
        err = tool.stop()
    if w.drop_reason:
        rec["truth"] = rec["rx_count"]
        if v.kind == "netpath" and (v.name.endswith(" drops") or v.name.startswith("netpath drops --pcap")):
            rec["seen"] = tools.netpath_drop_count(tool.summary(), topo.netns_inode(topo.rx), w.drop_reason)
        elif v.name == "bpftrace drops":
            rec["seen"] = tool.bt_drops(names).get(w.drop_reason, 0)
    if v.kind == "netpath":
        rec["lost"] = tools.netpath_lost(tool.summary())
        if tool.summary() is None:
            rec["error"] = err.strip()[-300:]
    return rec


def stats_seconds_for(seconds: float) -> float:
    """The stats pass's length: BENCH_STATS_SECONDS, else half the pps run's (rounded up), at least 2 s."""
    given = os.environ.get("BENCH_STATS_SECONDS", "").strip()
    return max(1.0, float(given)) if given else float(max(2, math.ceil(seconds / 2)))


def paired_run(topo: env.Topology, w: Workload, v: tools.Variant, seconds: float, stats_seconds: float,
               names: dict[int, str], rnd: int) -> dict[str, Any]:
    """A variant's place in one round: the pps pass (bpf_stats off) and, for a traced variant, next to it the
    stats pass (bpf_stats on, `stats_on`), each a fresh launch on the same workload.

    The record's top level is the pps pass, as before the split; `stats_on` is the whole stats-pass record
    (its pps, rx_count, seconds, progs, seen/truth, lost). Even rounds run the pps pass first, odd rounds the
    stats pass first, like the variants' A/B order.
    """

    def attempt(stats: bool) -> dict[str, Any]:
        try:
            return one_run(topo, w, v, stats_seconds if stats else seconds, names, rnd, stats=stats)
        except Exception as exc:  # keep the suite going; the record says what failed
            return {"round": rnd, "workload": w.name, "variant": v.name, "bpf_stats": "on" if stats else "off",
                    "pps": None, "error": str(exc)[-300:]}

    if v.kind == "untraced":
        return attempt(False)
    stats_first = rnd % 2 == 1
    on = attempt(True) if stats_first else None
    rec = attempt(False)
    if rec.get("stats_off_run_cnt"):  # another process had stats on (a test writing the sysctl, an fd): again
        console.print(f"[yellow]round {rnd + 1} {w.name} {v.name}: bpf_stats were on during the pps pass "
                      f"(run_cnt moved by {rec['stats_off_run_cnt']:,}); running it again[/]")
        rec = {**attempt(False), "stats_on_retried": rec["stats_off_run_cnt"]}
    if on is None:
        on = attempt(True)
    rec["pass_order"] = "stats first" if stats_first else "pps first"
    rec["stats_on"] = {k: x for k, x in on.items() if k not in ("round", "workload", "variant")}
    rec["pps_stats_on"] = on.get("pps")
    return rec


def untraced_base(recs: list[dict[str, Any]]) -> float | None:
    """A round's untraced pps for one workload: the mean of its opening and closing untraced runs (one, in a
    results.json from before the closing run), so a drift of the machine's speed over the round lands on
    the variants run early and late alike instead of on whichever ran last."""
    pps = [r["pps"] for r in recs if r["variant"] == "untraced" and r.get("pps")]
    return sum(pps) / len(pps) if pps else None


def bracket_ratios(recs: list[dict[str, Any]]) -> None:
    """Every traced run of one round and workload, its ratios now against untraced_base."""
    base = untraced_base(recs)
    for r in recs:
        if r["variant"] != "untraced":
            r["ratio"] = ratio_to(r.get("pps"), base)
            r["ratio_stats_on"] = ratio_to(r.get("pps_stats_on"), base)


def stats_pass(r: dict[str, Any]) -> dict[str, Any] | None:
    """A run's bpf_stats-on figures: its stats pass, or, in a results.json from before the split (no
    `bpf_stats` key; stats were on for every run then), the run itself."""
    return r if "bpf_stats" not in r else r.get("stats_on")


def ratio_to(x: float | None, base: float | None) -> float | None:
    return round(x / base, 4) if x is not None and base else None


def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs: list[float]) -> list[float] | None:
    xs = [x for x in xs if x is not None]
    return [min(xs), max(xs)] if xs else None


def aggregate(runs: list[dict[str, Any]], active: list[tools.Variant]) -> dict[str, Any]:
    """Medians per workload and variant. pps and ratios from the pps pass (bpf_stats off); ns/run, runs/s and
    BPF ns/pkt from the stats pass; drop exactness from both."""
    agg: dict[str, Any] = {"throughput": [], "hooks": [], "cost": [], "drops": []}
    base = {(rnd, w.name): b for rnd in {r["round"] for r in runs} for w in WORKLOADS
            if (b := untraced_base([r for r in runs if r["round"] == rnd and r["workload"] == w.name]))}
    for w in WORKLOADS:
        for v in active:
            # the untraced row: its opening runs, one a round like every variant's (the closing ones only
            # enter the base)
            rs = [r for r in runs if r["workload"] == w.name and r["variant"] == v.name and not r.get("bracket")]
            ok = [r for r in rs if r.get("pps") is not None]
            st = [s for r in rs if (s := stats_pass(r)) is not None and s.get("pps") is not None]
            if not ok and not st:
                continue
            # a pps pass during which the tool's run_cnt moved had stats on after all: not a stats-off figure
            leaked = [r for r in ok if r.get("stats_off_run_cnt")]
            clean = [r for r in ok if not r.get("stats_off_run_cnt")]
            pps = [r["pps"] for r in clean]
            sent = [r["sent_pps"] for r in clean if r.get("sent_pps")]
            ratios = [r["pps"] / base[(r["round"], w.name)] for r in clean if base.get((r["round"], w.name))]
            on = [r for r in rs if (r.get("stats_on") or {}).get("pps") is not None]
            pps_on = [r["stats_on"]["pps"] for r in on]
            ratios_on = [r["stats_on"]["pps"] / base[(r["round"], w.name)] for r in on
                         if base.get((r["round"], w.name))]
            # all of the tool's BPF time over the stats pass's workload, per packet the receiver counted
            per_pkt = [sum(p["run_time_ns"] for p in s["progs"]) / s["rx_count"]
                       for s in st if s.get("progs") and s.get("rx_count")]
            agg["throughput"].append({
                "workload": w.name, "variant": v.name, "rounds": len(clean),
                "bpf_stats": "off" if all(r.get("bpf_stats") == "off" for r in clean) else "on",
                "pps_median": med(pps), "pps_min_max": spread(pps), "sent_pps_median": med(sent),
                "pps_spread_pct": round(100 * (max(pps) - min(pps)) / med(pps), 1) if med(pps) else None,
                "ratio_median": round(med(ratios), 3) if ratios else None,
                "ratio_min_max": [round(x, 3) for x in spread(ratios) or []],
                "stats_rounds": len(on),
                "pps_stats_on_median": med(pps_on), "pps_stats_on_min_max": spread(pps_on),
                "ratio_stats_on_median": round(med(ratios_on), 3) if ratios_on else None,
                "ratio_stats_on_min_max": [round(x, 3) for x in spread(ratios_on) or []],
                "bpf_ns_per_rx_pkt_median": round(med(per_pkt), 1) if per_pkt else None,
                "bpf_ns_per_rx_pkt_min_max": [round(x, 1) for x in spread(per_pkt) or []],
                # pps passes left out above (stats were on after all, even when run again)
                "stats_on_in_pps_runs": len(leaked),
            })
            if v.kind == "untraced":
                continue
            by_prog: dict[str, list[tuple[dict[str, Any], float]]] = {}
            for s in st:
                for p in s.get("progs", []):
                    by_prog.setdefault(p["name"], []).append((p, float(s["seconds"])))
            for name, ps in sorted(by_prog.items()):
                agg["hooks"].append({
                    "workload": w.name, "variant": v.name, "program": name, "bpf_stats": "on",
                    "ns_per_run_median": med([p["ns_per_run"] for p, _ in ps]),
                    "ns_per_run_min_max": spread([p["ns_per_run"] for p, _ in ps]),
                    "runs_per_s_median": round(med([p["run_cnt"] / sec for p, sec in ps])),
                })
            if ok:
                agg["cost"].append({
                    "workload": w.name, "variant": v.name,
                    "start_s_median": med([r.get("start_s") for r in ok]),
                    "start_s_min_max": spread([r.get("start_s") for r in ok]),
                    "cpu_pct_median": med([r.get("cpu_pct") for r in ok]),
                    "rss_hwm_mb_max": max((r.get("rss_hwm_mb") or 0) for r in ok),
                })
            off_d = [r for r in rs if "seen" in r]
            on_d = [r["stats_on"] for r in rs if "seen" in (r.get("stats_on") or {})]
            if w.drop_reason and (off_d or on_d):
                agg["drops"].append({"workload": w.name, "variant": v.name, "reason": w.drop_reason,
                                     **exactness(off_d), **exactness(on_d, "_stats_on")})
    return agg


def exactness(recs: list[dict[str, Any]], suffix: str = "") -> dict[str, Any]:
    """Drops seen vs ground truth over some runs: exact runs, runs, the pairs, netpath's lost/skipped totals."""
    pairs = [(r.get("seen"), r["truth"]) for r in recs]
    lost = [r.get("lost") for r in recs if r.get("lost") is not None]
    return {f"exact_runs{suffix}": sum(1 for s, t in pairs if s == t), f"runs{suffix}": len(pairs),
            f"seen_truth{suffix}": pairs,
            f"lost_total{suffix}": {k: sum(d.get(k, 0) for d in lost) for k in (lost[0] if lost else {})}}


def fmt(x: Any, nd: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and nd:
        return f"{x:,.{nd}f}"
    if isinstance(x, (int, float)):
        return f"{x:,.0f}"
    return str(x)


def passes_note(meta: dict[str, Any]) -> str:
    """Which bpf_stats setting each figure comes from, for the tables' titles and the header."""
    sp = meta.get("bpf_stats_passes")
    if not sp:
        return ("[yellow]this results.json is from before the two passes: every run, pps included, had "
                "kernel.bpf_stats_enabled=1[/]")
    return (f"pps and ratios: bpf_stats OFF (as users run); ns/run, runs/s, BPF ns/pkt: a separate bpf_stats-ON "
            f"pass of {fmt(sp['stats_seconds'], 1)} s per traced variant in the same round "
            f"(its pps ratio shows what stats cost)")


def render(agg: dict[str, Any], meta: dict[str, Any]) -> None:
    split = bool(meta.get("bpf_stats_passes"))
    off = "bpf_stats OFF" if split else "bpf_stats ON (file from before the two passes)"
    ns_src = "the bpf_stats-on pass" if split else "the same runs"
    console.print(f"[bold]netpath bench[/] kernel {meta['kernel']}, {meta['cpu_model']}, "
                  f"{meta['rounds']} rounds x {meta['seconds']} s")
    console.print(passes_note(meta))
    t = Table(title=f"Message rate (receiver-side pps) and ratio to untraced, same round; pps and ratio with {off}, "
                    f"BPF ns/pkt from {ns_src}")
    for c in ("workload", "variant", "pps median", "pps min-max", "spread %", "ratio median", "ratio min-max",
              "sender pps", "ratio, stats on", "BPF ns/pkt (stats on)"):
        t.add_column(c, justify="right" if c not in ("workload", "variant") else "left")
    for r in agg["throughput"]:
        mm = r["pps_min_max"] or [None, None]
        rm = r["ratio_min_max"] or [None, None]
        leak = (f" [red](left out {r['stats_on_in_pps_runs']}: stats were on)[/]"
                if r.get("stats_on_in_pps_runs") else "")
        t.add_row(r["workload"], r["variant"], fmt(r["pps_median"]), f"{fmt(mm[0])}-{fmt(mm[1])}",
                  fmt(r["pps_spread_pct"], 1), fmt(r["ratio_median"], 3) + leak, f"{fmt(rm[0], 3)}-{fmt(rm[1], 3)}",
                  fmt(r.get("sent_pps_median")), fmt(r.get("ratio_stats_on_median"), 3),
                  fmt(r.get("bpf_ns_per_rx_pkt_median"), 0))
    console.print(t)
    t = Table(title=f"bpf_stats: ns per run of every program, from {ns_src} (kernel.bpf_stats_enabled=1"
                    + ("; the pps ratios above are from the stats-off pass)" if split else ")"))
    for c in ("workload", "variant", "program", "ns/run median", "ns/run min-max", "runs/s"):
        t.add_column(c)
    for r in agg["hooks"]:
        mm = r["ns_per_run_min_max"] or [None, None]
        t.add_row(r["workload"], r["variant"], r["program"], fmt(r["ns_per_run_median"], 1),
                  f"{fmt(mm[0], 1)}-{fmt(mm[1], 1)}", fmt(r["runs_per_s_median"]))
    console.print(t)
    t = Table(title=f"Tool cost ({off} pass): start-up (launch -> ready line), CPU during the workload, "
                    "RSS high-water mark")
    for c in ("workload", "variant", "start s median", "start s min-max", "CPU % median", "RSS HWM MB max"):
        t.add_column(c)
    for r in agg["cost"]:
        mm = r["start_s_min_max"] or [None, None]
        t.add_row(r["workload"], r["variant"], fmt(r["start_s_median"], 3), f"{fmt(mm[0], 3)}-{fmt(mm[1], 3)}",
                  fmt(r["cpu_pct_median"], 2), fmt(r["rss_hwm_mb_max"], 1))
    console.print(t)
    t = Table(title="Drop counts under the storm vs ground truth (UdpNoPorts / netfilter rule counter), both passes")
    for c in ("workload", "variant", "reason", "pass", "exact runs", "seen / truth per round",
              "lost (netpath health)"):
        t.add_column(c)
    for r in agg["drops"]:
        for label, sfx in ((off, ""), ("bpf_stats ON", "_stats_on")):
            if not r.get(f"runs{sfx}"):
                continue
            t.add_row(r["workload"], r["variant"], r["reason"], label, f"{r[f'exact_runs{sfx}']}/{r[f'runs{sfx}']}",
                      ", ".join(f"{fmt(s)}/{fmt(tr)}" for s, tr in r[f"seen_truth{sfx}"]),
                      json.dumps(r[f"lost_total{sfx}"]))
    console.print(t)
    if meta.get("targets"):
        t = Table(title=f"Targets (reported, not asserted; pps ratios with {off}, ns figures from {ns_src})")
        for c in ("target", "measured", "met"):
            t.add_column(c)
        for r in meta["targets"]:
            t.add_row(r["target"], r["measured"], {True: "yes", False: "NO", None: "n/a"}[r["met"]])
        console.print(t)
    if meta.get("hook_breakdown"):
        t = Table(title="Hook cost breakdown under the closed-port storm (bpf_stats on, kfree_skb)")
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


TRACE_VARIANTS = ("netpath trace", "netpath trace --stages all", "netpath export")  # per-invocation hooks run here
RATIO_TARGETS = (  # variant, goal, workloads (None: every workload)
    ("netpath drops", TARGETS["drops_ratio"], ("noport", "nfdrop")),
    ("netpath drops --pcap", TARGETS["drops_ratio"], ("noport", "nfdrop")),
    ("netpath trace", TARGETS["trace_ratio"], ("udp", "noport", "nfdrop")),
    ("netpath export", TARGETS["export_ratio"], None),
)


def targets(agg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target from the pass that measures it: pps ratios from the stats-off pass (the stats-on ratio
    shown beside), ns/run and BPF ns per datagram from the stats-on pass, drop exactness from both."""
    out: list[dict[str, Any]] = []

    def ratio(variant: str) -> list[tuple[str, float, float | None, str]]:
        return [(r["workload"], r["ratio_median"], r.get("ratio_stats_on_median"), r.get("bpf_stats", "on"))
                for r in agg["throughput"] if r["variant"] == variant and r["ratio_median"] is not None]

    def with_on(x: float, x_on: float | None) -> str:
        return f"{x:.3f}" + (f" (stats on: {x_on:.3f})" if x_on is not None else "")

    for variant, goal, wls in RATIO_TARGETS:
        for wname, x, x_on, state in ratio(variant):
            if wls is None or wname in wls:
                out.append({"target": f"{variant} pps ratio >= {goal} ({wname}, bpf_stats {state})",
                            "measured": with_on(x, x_on), "met": x >= goal})
    trace = {wname: (x, state) for wname, x, _, state in ratio("netpath trace")}
    peer = {wname: x for wname, x, _, _ in ratio("bpftrace stages")}
    for wname, (x, state) in trace.items():
        if wname in peer:
            out.append({"target": f"trace ahead of bpftrace stages ({wname}, bpf_stats {state})",
                        "measured": f"{x:.3f} vs {peer[wname]:.3f}", "met": x > peer[wname]})
    for r in agg["throughput"]:
        if r["variant"] == "netpath trace" and r["workload"] == "udp" and r.get("bpf_ns_per_rx_pkt_median"):
            x = r["bpf_ns_per_rx_pkt_median"]
            out.append({"target": f"netpath trace BPF ns per delivered datagram <= {TARGETS['trace_ns_per_datagram']}"
                                  " (stats-on pass)",
                        "measured": f"{x:.0f}", "met": x <= TARGETS["trace_ns_per_datagram"]})
    for r in agg["hooks"]:
        if (r["variant"] in TRACE_VARIANTS and r["program"].removeprefix("raw_tracepoint__")
                in PER_INVOCATION_PROGS and r["ns_per_run_median"] is not None):
            out.append({"target": f"<= {TARGETS['ns_per_invocation_hook']} ns/run {r['program']} ({r['variant']}, "
                                  f"{r['workload']}, stats-on pass)", "measured": f"{r['ns_per_run_median']:.1f}",
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
        out.append({"target": f"{variant} start <= {TARGETS['start_s']} s",
                    "measured": f"{st:.3f} s" if st is not None else "-",
                    "met": st is not None and st <= TARGETS["start_s"]})
        out.append({"target": f"{variant} RSS <= {TARGETS['rss_mb']} MB", "measured": f"{rss:.1f} MB",
                    "met": rss <= TARGETS["rss_mb"]})
    for r in agg["drops"]:
        if r["variant"].startswith("netpath"):
            on, n_on = r.get("exact_runs_stats_on"), r.get("runs_stats_on")
            measured = f"{r['exact_runs']}/{r['runs']} runs exact" + (
                f" (stats off), {on}/{n_on} (stats on)" if n_on else "")
            out.append({"target": f"exact drop counts ({r['variant']}, {r['workload']})", "measured": measured,
                        "met": r["exact_runs"] == r["runs"] and (on or 0) == (n_on or 0)})
    return out


def profile(topo: env.Topology, v: tools.Variant, seconds: float) -> dict[str, Any]:
    """py-spy on a netpath variant while the closed-port storm runs; bpf_stats (on for it) of the same window."""
    with env.bpf_stats(True):
        return _profile(topo, v, seconds)


def _profile(topo: env.Topology, v: tools.Variant, seconds: float) -> dict[str, Any]:
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
        # the storm outruns the default cap in a few ms: this is the cost of a drop the capture skips
        tools.Variant("netpath drops --pcap (default cap 10000)", "netpath",
                      [*np, "--pcap", str(tools.PCAP_FILE), "--force"]),
        # no cap: past the first burst, every drop goes through the per-CPU token bucket (rate-limited)
        tools.Variant("netpath drops --pcap --pcap-max 100000000 (rate limit)", "netpath",
                      [*np, "--pcap", str(tools.PCAP_FILE), "--force", "--pcap-max", "100000000"]),
    ]
    out = []
    for v in steps:
        try:
            rec = one_run(topo, WORKLOADS[2], v, seconds, names, -1, stats=True)
        except Exception as exc:
            out.append({"program": v.name, "error": str(exc)[-200:]})
            continue
        p = next((x for x in rec.get("progs", []) if "kfree" in str(x["name"])), None)
        out.append({"program": v.name, "ns_per_run": p["ns_per_run"] if p else None,
                    "run_cnt": p["run_cnt"] if p else None, "pps": rec.get("pps")})
        console.print(f"[dim]hook breakdown: {v.name}: {out[-1]}[/]")
    return out


def main(rounds: int, seconds: float, variants: list[str] | None = None, only_workloads: list[str] | None = None,
         profile: bool = True, out: str = "", stats_seconds: float | None = None) -> int:
    if os.geteuid() != 0:
        print("bench: run as root (namespaces, BPF, sysctl)", file=sys.stderr)
        return 3
    bt_ok, bt_why = tools.bpftrace_check()
    all_variants = tools.variants(tools.netpath_has("trace"), bt_ok, bt_why)
    active = [v for v in all_variants if v.available and (not variants or v.kind == "untraced" or v.name in variants)]
    wls = [w for w in WORKLOADS if not only_workloads or w.name in only_workloads]
    names = tools.drop_reason_names()
    stats_s = stats_seconds if stats_seconds else stats_seconds_for(seconds)
    meta: dict[str, Any] = {
        "kernel": env.kernel_release(), "cpu_model": env.cpu_model(), "ncpu": os.cpu_count(),
        "rounds": rounds, "seconds": seconds, "sender_cpu": env.SENDER_CPU, "receiver_cpu": env.RECEIVER_CPU,
        "bpf_stats_passes": {
            "pps": "off", "stats": "on", "stats_seconds": stats_s,
            "order": "each traced variant: pps pass then stats pass in even rounds, stats pass first in odd",
            "base": "each round and workload opens and closes with an untraced run; ratios are to their mean",
            "why": "bpf_stats brackets every program run with two clock reads; on this VM 7 empty raw-tracepoint "
                   "programs on the UDP receive path cost 0.818 of untraced pps with stats on, 0.925 off",
        },
        "bpftrace": {"works": bt_ok, "detail": bt_why},
        "variants": [{"name": v.name, "available": v.available, "why_not": v.why_not, "argv": v.argv,
                      "ready": v.ready} for v in all_variants],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    runs: list[dict[str, Any]] = []
    profiles: list[dict[str, Any]] = []
    t_start = time.monotonic()
    with env.topology() as topo, workloads.servers(topo):
        for rnd in range(rounds):
            noise = {"round": rnd, "loadavg_1m": env.loadavg(), "busy_before_round": env.busy_processes()}
            meta.setdefault("noise", []).append(noise)
            console.print(f"[dim]round {rnd + 1}: load {noise['loadavg_1m']}, busy: {noise['busy_before_round']}[/]")
            for w in wls:
                order = active if rnd % 2 == 0 else [active[0], *reversed(active[1:])]
                base = None
                this_round: list[dict[str, Any]] = []
                for v in order:
                    rec = paired_run(topo, w, v, seconds, stats_s, names, rnd)
                    if v.kind == "untraced":
                        base = rec.get("pps")
                    else:  # against the opening untraced run for now: the progress line needs a figure
                        rec["ratio"] = ratio_to(rec.get("pps"), base)
                        rec["ratio_stats_on"] = ratio_to(rec.get("pps_stats_on"), base)
                    this_round.append(rec)
                    console.print(f"[dim]{progress_line(rec, rounds)}[/]")
                if active and active[0].kind == "untraced" and len(active) > 1:
                    closing = {**paired_run(topo, w, active[0], seconds, stats_s, names, rnd), "bracket": "closing"}
                    this_round.append(closing)
                    console.print(f"[dim]{progress_line(closing, rounds)}[/]")
                    bracket_ratios(this_round)
                runs.extend(this_round)
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


def progress_line(rec: dict[str, Any], rounds: int) -> str:
    on = rec.get("stats_on") or {}
    line = (f"round {rec['round'] + 1}/{rounds} {rec['workload']:7} {rec['variant']:16} "
            f"stats off: pps={fmt(rec.get('pps'))} ratio={fmt(rec.get('ratio'), 3)}")
    if "seen" in rec:
        line += f" seen/truth={fmt(rec['seen'])}/{fmt(rec.get('truth'))}"
    if rec.get("stats_off_run_cnt"):
        line += f" [red]run_cnt moved by {rec['stats_off_run_cnt']}: stats were on[/]"
    if "error" in rec:
        line += f" ERROR {rec['error']}"
    if rec.get("variant") != "untraced":
        line += f" start={rec.get('start_s', '-')} cpu%={rec.get('cpu_pct', '-')}"
    if on:
        ns = sum(p["run_time_ns"] for p in on.get("progs", []))
        per_pkt = ns / on["rx_count"] if on.get("rx_count") else None
        line += (f" | stats on ({on.get('seconds', '-')} s): pps={fmt(on.get('pps'))} "
                 f"ratio={fmt(rec.get('ratio_stats_on'), 3)} BPF ns/pkt={fmt(per_pkt)}")
        if "seen" in on:
            line += f" seen/truth={fmt(on['seen'])}/{fmt(on.get('truth'))}"
        if "error" in on:
            line += f" ERROR {on['error']}"
    return line


def reprofile() -> int:
    """Redo only the profiles and the hook breakdown, into an existing results.json (python -m bench --profile)."""
    data = json.loads(OUT.read_text())
    meta = {k: v for k, v in data.items() if k not in ("aggregate", "profiles", "runs")}
    active = [v for v in tools.variants(tools.netpath_has("trace"), True, "") if v.kind == "netpath" and v.available]
    names = tools.drop_reason_names()
    profiles = []
    with env.topology(subnet=3) as topo, workloads.servers(topo):  # each profile turns bpf_stats on for itself
        for v in active:
            profiles.append(profile(topo, v, max(5.0, float(meta["seconds"]))))
        meta["hook_breakdown"] = hook_breakdown(topo, names, max(3.0, float(meta["seconds"])))
    meta["profiled"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report(meta, data["runs"], profiles)
    return 0


def rerender(path: Path = OUT) -> int:
    """Re-aggregate and print an existing results.json (python -m bench --render [--out FILE])."""
    data = json.loads(path.read_text())
    meta = {k: v for k, v in data.items() if k not in ("aggregate", "profiles", "runs")}
    report(meta, data["runs"], data["profiles"], path)
    return 0


def report(meta: dict[str, Any], runs: list[dict[str, Any]], profiles: list[dict[str, Any]],
           out: Path = OUT) -> None:
    active = [tools.Variant(v["name"], "untraced" if v["name"] == "untraced" else v["name"].split()[0],
                            v["argv"], v["ready"]) for v in meta["variants"] if v["available"]]
    agg = aggregate(runs, active)  # failed runs (pps None) are left out there, pass by pass
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
