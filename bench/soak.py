"""`make bench-soak`: `netpath export` (default profile) under a closed-port drop storm, scraped every second.

Reports the exporter's CPU and RSS over the run, scrape durations, whether its
NO_SOCKET count for the receiver's namespace equals the kernel's UdpNoPorts,
and, separately, how long a scrape of 1000 drop series takes (rows through the
real decoder, series bound and exposition; the map read itself is a fake).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from bench import env, tools, workloads

OUT = Path(__file__).resolve().parent / "soak.json"


def scrape(port: int) -> tuple[float, str]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return time.perf_counter() - t0, text


def no_socket(text: str, netns_inode: int) -> int:
    total = 0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if (s.name == "netpath_drops_total" and s.labels.get("reason") == "NO_SOCKET"
                    and s.labels.get("netns") == str(netns_inode)):
                total += int(s.value)
    return total


def main(seconds: float) -> int:
    console = Console()
    variant = next(v for v in tools.variants(False, False, "") if v.name == "netpath export")
    noport = workloads.WORKLOADS[2]
    samples: list[dict[str, float]] = []
    failed: list[str] = []
    with env.topology(subnet=3) as topo, workloads.servers(topo):
        inode = topo.netns_inode(topo.rx)
        tool = tools.Running(variant)
        try:
            start_s = tool.wait_ready()
            result: dict[str, Any] = {}
            storm = threading.Thread(target=lambda: result.update(workloads.run(topo, noport, seconds)),
                                     daemon=True)
            cpu0, t0 = tool.cpu_s(), time.monotonic()
            storm.start()
            while storm.is_alive():
                try:
                    took, _text = scrape(tools.EXPORT_PORT)
                except urllib.error.HTTPError as exc:  # a failed scrape is counted, not the end of the soak
                    failed.append(f"{exc.code} {exc.read().decode(errors='replace').strip()[:200]}")
                    time.sleep(1.0)
                    continue
                now = time.monotonic()
                samples.append({"t": round(now - t0, 1), "scrape_s": took, "cpu_s": tool.cpu_s() - cpu0,
                                "rss_mb": env.proc_rss_kb(tool.proc.pid) / 1024})
                time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
            storm.join()
            time.sleep(1.5)  # the last drops reach the map before the final scrape
            _took, final = scrape(tools.EXPORT_PORT)
            cpu1, t1 = tool.cpu_s(), time.monotonic()
            hwm = tool.hwm_mb()
        finally:
            tool.stop()
    seen = no_socket(final, inode)
    rss = [s["rss_mb"] for s in samples]
    scrapes = [s["scrape_s"] for s in samples]
    out = {
        "kernel": env.kernel_release(), "seconds": seconds, "start_s": round(start_s, 3),
        "udp_noports_truth": result.get("rx_count"), "export_no_socket": seen, "exact": seen == result.get("rx_count"),
        "flood_pps": result.get("pps"), "scrapes": len(samples),
        "cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
        "rss_mb_first_min_median_last": [round(rss[0], 1), round(min(rss), 1), round(statistics.median(rss), 1),
                                         round(rss[-1], 1)] if rss else None,
        "rss_hwm_mb": round(hwm, 1),
        "scrape_s_median_p99_max": [round(statistics.median(scrapes), 4),
                                    round(sorted(scrapes)[int(0.99 * (len(scrapes) - 1))], 4),
                                    round(max(scrapes), 4)] if scrapes else None,
        "failed_scrapes": len(failed), "failures": sorted(set(failed))[:5],
        "rss_every_60s": [round(s["rss_mb"], 1) for s in samples[::60]],
    }
    OUT.write_text(json.dumps(out, indent=1))  # the soak's figures first: the micro-bench below is extra
    out["scrape_1000_series_s"] = scrape_1000_series()
    OUT.write_text(json.dumps(out, indent=1))
    console.print_json(json.dumps(out))
    console.print(f"wrote {OUT}")
    return 0


def scrape_1000_series(rounds: int = 20) -> float:
    """Median seconds to build and encode a scrape holding 1000 drop series."""
    from netpath.compose.export import ExportCollector
    from netpath.model import DropHealth, DropRow, DropSnapshot

    rows = [DropRow(f"R{i % 50}", i % 50, None, f"if{i // 50}", i // 50 + 1, 4026531833, "udp", 1000 + i)
            for i in range(1000)]

    class Drops:
        prog = None

        def start(self) -> Any:  # pragma: no cover - not started here
            raise NotImplementedError

        def forget_gone_devices(self, _live: set[tuple[int, int]]) -> int:
            return 0

        def summary(self, elapsed_ns: int) -> DropSnapshot:
            return DropSnapshot(list(rows), [], DropHealth(probe_hits={"skb:kfree_skb": 1}, matched=1), 1, elapsed_ns)

        def close(self) -> None:
            pass

    collector = ExportCollector(Drops(), None, 2000)  # type: ignore[arg-type]
    collector.starts = [type("S", (), {"kernel": "bench", "headers": "shim"})()]  # type: ignore[list-item]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        text = generate_latest(registry)
        times.append(time.perf_counter() - t0)
    assert text.count(b"netpath_drops_total{") == 1000
    return round(statistics.median(times), 4)
