"""`make bench-start`: the start and footprint table (issue 23), this checkout beside a base commit.

Both trees run in the same rounds, interleaved (base, this, base, this...), each launch fresh:
- `--help` and `probes --json`: wall time to exit;
- `drops --json` and `trace --json`: time from launch to the JSON start line, the process's peak RSS
  (VmHWM) and its RSS one second later: first start (an empty NETPATH_CACHE: nothing of this kernel seen
  before), a new configuration (the kernel's facts cached, the program and symbol index not:
  NETPATH_PROGRAM_CACHE=0; the base ignores it and runs as always) and cached start (the tree's own warm
  cache). Peak RSS is netpath's own process; the build child's peak (NETPATH_DEBUG=1 prints it) is not in it;
- `export`: RSS after warm-up scrapes, CPU per scrape (utime+stime over back-to-back scrapes / scrapes),
  series per scrape, system calls, bpf(2) calls and netlink sockets per idle scrape (strace), and wakeups
  between scrapes (voluntary + involuntary context switches over an idle
  window with no scrape, per second);
- `trace --json --interval 1` (default stages): CPU per interval over ten intervals after the first.
Medians of --rounds runs. Python byte-code is compiled before the rounds (as an installed netpath has it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.env import REPO, proc_cpu_s, proc_hwm_kb, proc_rss_kb, wait_serving

OUT = Path(__file__).resolve().parent / "start.json"
TARGETS = {"cached_start_s": 0.3, "first_start_s": 1.0, "x_bpftrace": 2.0, "probes_s": 0.15, "help_s": 0.15,
           "first_hwm_mb": 100, "cached_hwm_mb": 60, "export_rss_mb": 50, "scrape_cpu_ms": 5}
PORT = int(os.environ.get("BENCH_EXPORT_PORT", "19873"))
console = Console(width=None if sys.stdout.isatty() else 160)


def _env(cache: str | None, program_cache: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "NETPATH_PROGRAM_CACHE")}
    if cache:
        env["NETPATH_CACHE"] = cache
    if not program_cache:
        env["NETPATH_PROGRAM_CACHE"] = "0"
    return env


def _status(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_to_exit(tree: Path, argv: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "netpath", *argv], cwd=tree, env=_env(None), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False, timeout=60)
    return time.monotonic() - t0


BPFTRACE_ONE_PROBE = 'BEGIN { printf("ready\\n"); } tracepoint:skb:kfree_skb { @[args->reason] = count(); }'


def run_bpftrace_begin() -> float | None:
    """bpftrace's time from launch to its BEGIN line with one kfree_skb probe: the yardstick for starts."""
    if shutil.which("bpftrace") is None:
        return None
    t0 = time.monotonic()
    proc = subprocess.Popen(["bpftrace", "-e", BPFTRACE_ONE_PROBE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        while line := proc.stdout.readline():
            if b"ready" in line:
                return round(time.monotonic() - t0, 3)
        return None
    finally:
        _stop(proc)


def run_export_ready(tree: Path) -> float | None:
    """Launch to the exporter's first /healthz 200 (every probe attached), polled every 5 ms."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "netpath", "export", "--listen", f"127.0.0.1:{PORT}"], cwd=tree,
                            env=_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - t0 < 60 and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return round(time.monotonic() - t0, 3)
            except OSError:
                pass
            time.sleep(0.005)
        return None
    finally:
        _stop(proc)


def run_to_start(tree: Path, command: str, cache: str | None, program_cache: bool = True) -> dict[str, Any]:
    """Launch `command --json`, time its start line, read its memory, stop it with SIGINT."""
    t0 = time.monotonic()
    extra = ["--duration", "30"] if command == "doctor" else ["--interval", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "netpath", command, "--json", *extra], cwd=tree,
                            env=_env(cache, program_cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        start_s = time.monotonic() - t0
        if b'"type":"start"' not in line.replace(b" ", b""):
            return {"error": (line + (proc.stderr.read() if proc.stderr else b"")).decode(errors="replace")[:300]}
        hwm_start = proc_hwm_kb(proc.pid)
        time.sleep(1.2)  # past the first interval
        return {"start_s": round(start_s, 3), "hwm_start_mb": round(hwm_start / 1024, 1),
                "hwm_mb": round(proc_hwm_kb(proc.pid) / 1024, 1), "rss_mb": round(proc_rss_kb(proc.pid) / 1024, 1)}
    finally:
        _stop(proc)


def run_trace_intervals(tree: Path, intervals: int = 10) -> dict[str, Any]:
    """CPU and system calls per interval of `trace --json --interval 1` (default stages), after its first
    interval: the per-interval reading work (every stage's per-CPU arrays, batched) and its JSON record."""
    proc = subprocess.Popen([sys.executable, "-m", "netpath", "trace", "--json", "--interval", "1"], cwd=tree,
                            env=_env(None), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        for _ in range(2):  # the start line, then the first interval's record
            if not proc.stdout.readline():
                return {"error": "trace ended before its first interval"}
        cpu0 = proc_cpu_s(proc.pid)
        for _ in range(intervals):
            if not proc.stdout.readline():
                return {"error": "trace ended early"}
        return {"interval_cpu_ms": round(1000 * (proc_cpu_s(proc.pid) - cpu0) / intervals, 2)}
    finally:
        _stop(proc)


def _scrape() -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=10) as resp:
        body = resp.read().decode()
    return sum(1 for line in body.splitlines() if line and not line.startswith("#"))


def synthetic_scrape_ms(tree: Path, series: int = 500) -> float | None:
    """CPU ms to build and encode one scrape of `series` drop series in `tree`'s own code (bench/soak.py's
    1000-series scrape, scaled: the real map read is faked there), or None when the tree cannot say."""
    soak = Path(__file__).resolve().with_name("soak.py")  # this checkout's scrape bench, the tree's netpath
    code = ("import importlib.util, time; spec = importlib.util.spec_from_file_location('np_soak', "
            f"{str(soak)!r}); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "f = m.scrape_1000_series; f(3); t = time.process_time(); f(20); print((time.process_time() - t) / 20)")
    res = subprocess.run([sys.executable, "-c", code], cwd=tree, env=_env(None), capture_output=True, text=True,
                         check=False, timeout=120)
    try:
        return round(float(res.stdout.strip().splitlines()[-1]) * 1000 * series / 1000, 2)
    except (ValueError, IndexError):
        return None


def syscalls_per_scrape(pid: int, scrapes: int) -> dict[str, float]:
    """strace attached to every thread over `scrapes` back-to-back scrapes: all system calls, bpf(2) calls and
    netlink sockets opened (one per rtnetlink or generic-netlink read), each per scrape. strace's own cost
    stays out of the CPU figure: that is measured before it attaches. {} when strace is missing."""
    if shutil.which("strace") is None:
        return {}
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", out.name, "-p", str(pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached to every thread
        for _ in range(scrapes):
            _scrape()
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
        lines = out.read().splitlines()
    calls = [line for line in lines if "(" in line and "resumed>" not in line]
    per = float(scrapes)
    return {"syscalls": round(len(calls) / per, 1), "bpf_calls": round(sum(" bpf(" in c for c in calls) / per, 1),
            "netlink_sockets": round(sum("socket(AF_NETLINK" in c for c in calls) / per, 2)}


def run_export(tree: Path, scrapes: int, idle_s: float, soak_s: float = 20.0) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-m", "netpath", "export", "--listen", f"127.0.0.1:{PORT}"], cwd=tree,
                            env=_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_serving(proc)
        for _ in range(5):
            series = _scrape()
        cpu0 = proc_cpu_s(proc.pid)
        t0 = time.monotonic()
        for _ in range(scrapes):
            series = _scrape()
        cpu_ms = 1000 * (proc_cpu_s(proc.pid) - cpu0) / scrapes
        wall_ms = 1000 * (time.monotonic() - t0) / scrapes
        traced = syscalls_per_scrape(proc.pid, 10)
        rss0, soak0, soaked = proc_rss_kb(proc.pid), time.monotonic(), 0
        while time.monotonic() - soak0 < soak_s:  # scraped 5 times a second: growth shows sooner than at 1/s
            _scrape()
            soaked += 1
            time.sleep(0.2)
        growth_mb = (proc_rss_kb(proc.pid) - rss0) / 1024
        switches0 = _status(proc.pid, "voluntary_ctxt_switches") + _status(proc.pid, "nonvoluntary_ctxt_switches")
        time.sleep(idle_s)
        switches1 = _status(proc.pid, "voluntary_ctxt_switches") + _status(proc.pid, "nonvoluntary_ctxt_switches")
        return {"rss_mb": round(proc_rss_kb(proc.pid) / 1024, 1), "hwm_mb": round(proc_hwm_kb(proc.pid) / 1024, 1),
                "scrape_cpu_ms": round(cpu_ms, 2), "scrape_wall_ms": round(wall_ms, 2), "series": series,
                "idle_wakeups_per_s": round((switches1 - switches0) / idle_s, 1), "soak_scrapes": soaked,
                "rss_growth_mb": round(growth_mb, 1), **traced}
    except OSError as exc:
        return {"error": str(exc)}
    finally:
        _stop(proc)


def measure_tree(tree: Path, rnd: int) -> dict[str, Any]:
    out: dict[str, Any] = {"help_s": round(run_to_exit(tree, ["--help"]), 3),
                           "probes_s": round(run_to_exit(tree, ["probes", "--json"]), 3)}
    for command in ("drops", "trace"):
        fresh = tempfile.mkdtemp(prefix=f"np-bench-start-{rnd}-")
        try:
            out[f"{command}_first"] = run_to_start(tree, command, fresh)
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
        run_to_start(tree, command, None)  # warm the tree's own cache (the previous round may have left it cold)
        out[f"{command}_cached"] = run_to_start(tree, command, None)
        # a configuration not seen before: the kernel's facts cached, the program and symbols not
        out[f"{command}_uncached"] = run_to_start(tree, command, None, program_cache=False)
    out["trace_intervals"] = run_trace_intervals(tree)
    run_to_start(tree, "doctor", None)
    out["doctor_cached"] = run_to_start(tree, "doctor", None)
    run_export_ready(tree)
    out["export_ready_s"] = run_export_ready(tree)
    # bpftrace in the same round, right beside this tree's starts: the ratio is taken under the same load
    out["bpftrace_s"] = run_bpftrace_begin()
    bt = out["bpftrace_s"]
    for key, value in (("drops", out["drops_cached"].get("start_s")), ("trace", out["trace_cached"].get("start_s")),
                       ("doctor", out["doctor_cached"].get("start_s")), ("export", out["export_ready_s"])):
        out[f"{key}_x_bpftrace"] = round(value / bt, 2) if value and bt else None
    return out


def med(values: list[float | None]) -> float | None:
    xs = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(xs), 3) if xs else None


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for r in runs:
        row = out.setdefault(r["tree"], {})
        row.setdefault("_n", 0)
    for tree in out:
        mine = [r for r in runs if r["tree"] == tree]
        agg: dict[str, float | None] = {"help_s": med([r["help_s"] for r in mine]),
                                        "probes_s": med([r["probes_s"] for r in mine])}
        for key in ("drops_first", "drops_cached", "drops_uncached", "trace_first", "trace_cached", "trace_uncached"):
            for metric in ("start_s", "hwm_mb", "rss_mb"):
                agg[f"{key}_{metric}"] = med([r[key].get(metric) for r in mine if key in r])
        agg["synthetic_500_ms"] = med([r.get("synthetic_500_ms") for r in mine])
        agg["trace_interval_cpu_ms"] = med([r.get("trace_intervals", {}).get("interval_cpu_ms") for r in mine])
        agg["doctor_cached_start_s"] = med([r.get("doctor_cached", {}).get("start_s") for r in mine])
        for key in ("export_ready_s", "bpftrace_s", "drops_x_bpftrace", "trace_x_bpftrace", "doctor_x_bpftrace",
                    "export_x_bpftrace"):
            agg[key] = med([r.get(key) for r in mine])
        for metric in ("rss_mb", "scrape_cpu_ms", "series", "idle_wakeups_per_s", "rss_growth_mb", "syscalls",
                       "bpf_calls", "netlink_sockets"):
            agg[f"export_{metric}"] = med([r["export"].get(metric) for r in mine if "export" in r])
        out[tree] = agg
    return out


ROWS = [
    ("netpath --help, s to exit", "help_s", "help_s"),
    ("netpath probes --json, s to exit", "probes_s", "probes_s"),
    ("drops first start, s to start line", "drops_first_start_s", "first_start_s"),
    ("drops new configuration, s to start line", "drops_uncached_start_s", "first_start_s"),
    ("drops cached start, s to start line", "drops_cached_start_s", "cached_start_s"),
    ("trace first start, s to start line", "trace_first_start_s", "first_start_s"),
    ("trace new configuration, s to start line", "trace_uncached_start_s", "first_start_s"),
    ("trace cached start, s to start line", "trace_cached_start_s", "cached_start_s"),
    ("doctor cached start, s to start line", "doctor_cached_start_s", "cached_start_s"),
    ("export cached start, s to first /healthz 200", "export_ready_s", "cached_start_s"),
    ("bpftrace, one kfree_skb probe, s to BEGIN", "bpftrace_s", None),
    ("drops cached start / bpftrace (same round)", "drops_x_bpftrace", "x_bpftrace"),
    ("trace cached start / bpftrace (same round)", "trace_x_bpftrace", "x_bpftrace"),
    ("doctor cached start / bpftrace (same round)", "doctor_x_bpftrace", "x_bpftrace"),
    ("export first /healthz / bpftrace (same round)", "export_x_bpftrace", "x_bpftrace"),
    ("drops first start, peak RSS MB", "drops_first_hwm_mb", "first_hwm_mb"),
    ("drops new configuration, peak RSS MB", "drops_uncached_hwm_mb", "first_hwm_mb"),
    ("drops cached start, peak RSS MB", "drops_cached_hwm_mb", "cached_hwm_mb"),
    ("trace first start, peak RSS MB", "trace_first_hwm_mb", "first_hwm_mb"),
    ("trace new configuration, peak RSS MB", "trace_uncached_hwm_mb", "first_hwm_mb"),
    ("trace cached start, peak RSS MB", "trace_cached_hwm_mb", "cached_hwm_mb"),
    ("drops steady RSS MB", "drops_cached_rss_mb", None),
    ("trace steady RSS MB", "trace_cached_rss_mb", None),
    ("export RSS MB after warm-up scrapes", "export_rss_mb", "export_rss_mb"),
    ("export CPU ms per scrape", "export_scrape_cpu_ms", "scrape_cpu_ms"),
    ("export series per scrape", "export_series", None),
    ("export system calls per idle scrape (strace)", "export_syscalls", None),
    ("export bpf(2) calls per idle scrape", "export_bpf_calls", None),
    ("export netlink sockets per idle scrape", "export_netlink_sockets", None),
    # not extrapolated: the first minutes' growth is the allocator settling (both trees), not a rate
    ("export RSS change over ~90 scrapes MB", "export_rss_growth_mb", None),
    ("trace CPU ms per 1 s interval (default stages)", "trace_interval_cpu_ms", None),
    ("scrape of 500 drop series, CPU ms (synthetic rows)", "synthetic_500_ms", "scrape_cpu_ms"),
    ("export wakeups/s between scrapes", "export_idle_wakeups_per_s", None),
]


def render(agg: dict[str, dict[str, float | None]], base_name: str) -> None:
    t = Table(title="start and footprint (medians)")
    t.add_column("measure")
    t.add_column(base_name, justify="right")
    t.add_column("this checkout", justify="right")
    t.add_column("target", justify="right")
    t.add_column("met", justify="center")
    base, this = agg.get("base", {}), agg.get("this", {})
    for label, key, target in ROWS:
        goal = TARGETS.get(target) if target else None
        value = this.get(key)
        met = "" if goal is None or value is None else ("yes" if value <= goal else "no")
        t.add_row(label, _fmt(base.get(key)), _fmt(value), "" if goal is None else f"<= {goal}", met)
    console.print(t)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def main(rounds: int, base_rev: str, scrapes: int = 50, idle_s: float = 5.0) -> int:
    base_dir = Path(tempfile.mkdtemp(prefix="np-bench-base-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base_dir), base_rev], check=True)
    short = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", base_rev], capture_output=True, text=True,
                           check=True).stdout.strip()
    base_name = f"{base_rev} ({short})"
    try:
        trees = {"base": base_dir, "this": REPO}
        for tree in trees.values():
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "netpath")], check=False,
                           stdout=subprocess.DEVNULL)
            run_to_exit(tree, ["--help"])
        runs: list[dict[str, Any]] = []
        for rnd in range(rounds):
            order = list(trees.items()) if rnd % 2 == 0 else list(reversed(trees.items()))
            for name, tree in order:
                rec = {"tree": name, "round": rnd, **measure_tree(tree, rnd)}
                rec["export"] = run_export(tree, scrapes, idle_s)
                rec["synthetic_500_ms"] = synthetic_scrape_ms(tree)
                runs.append(rec)
                dc, df = rec["drops_cached"].get("start_s"), rec["drops_first"].get("start_s")
                tc, tf = rec["trace_cached"].get("start_s"), rec["trace_first"].get("start_s")
                console.print(f"round {rnd + 1}/{rounds} {name}: drops {dc} s cached / {df} s first, "
                              f"trace {tc} s / {tf} s, export {rec['export']}")
        agg = aggregate(runs)
        render(agg, base_name)
        OUT.write_text(json.dumps({"base": base_name, "rounds": rounds, "kernel": os.uname().release,
                                   "runs": runs, "medians": agg, "targets": TARGETS}, indent=1))
        console.print(f"wrote {OUT}")
        return 0
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_dir)], check=False)
        shutil.rmtree(base_dir, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT (netpath prints its summary and detaches), then a kill after 10 s."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
