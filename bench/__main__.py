"""python -m bench [--rounds N] [--seconds S] [--stats-seconds S] | --storm [--storm-seconds S] |
--soak [--soak-seconds S] | --observer [--rounds N] | --pcap-cost [--rounds N] [--seconds S] |
--follow-cost [--rounds N] [--seconds S] | --scrape-cost [--rounds N] [--seconds S] |
--start [--rounds N] [--base REV] | --render [--out FILE]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--rounds", type=int, default=5, help="A/B rounds (default 5)")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds per workload run (default 5)")
    ap.add_argument("--stats-seconds", type=float, default=None,
                    help="seconds of each traced variant's bpf_stats-on pass (default $BENCH_STATS_SECONDS, "
                    "else half of --seconds rounded up, at least 2); the pps pass runs with bpf_stats off")
    ap.add_argument("--storm", action="store_true", help="only the 30 s closed-port drop storm (issue 2)")
    ap.add_argument("--storm-seconds", type=float, default=30.0)
    ap.add_argument("--soak", action="store_true",
                    help="only netpath export under a drop storm, scraped every second (issue 11 figures)")
    ap.add_argument("--soak-seconds", type=float, default=600.0)
    ap.add_argument("--profile", action="store_true",
                    help="redo only the profiles and hook breakdown into an existing bench/results.json")
    ap.add_argument("--observer", action="store_true",
                    help="only what netpath trace adds to the NET_RX softirq it times (bpftrace as reference)")
    ap.add_argument("--pcap-cost", action="store_true",
                    help="only what drops --pcap costs per dropped packet, by bpf_stats (issue 20 figures)")
    ap.add_argument("--follow-cost", action="store_true",
                    help="only what netpath follow costs the traffic, as pps ratios (issue 27 figures)")
    ap.add_argument("--scrape-cost", action="store_true",
                    help="only netpath export's CPU per scrape at 1/s, at rest and under a UDP flood, beside "
                    "$BENCH_BASELINE (issue 32 figures)")
    ap.add_argument("--start", action="store_true",
                    help="only the start and footprint table (issue 23), this checkout beside --base")
    ap.add_argument("--base", default="main", help="the commit --start compares with (default main)")
    ap.add_argument("--render", action="store_true",
                    help="re-aggregate and print an existing bench/results.json (or the --out file)")
    ap.add_argument("--variants", default="", help="comma-separated variant names to run (default all; "
                    "untraced always runs)")
    ap.add_argument("--workloads", default="", help="comma-separated workloads (default all)")
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles and hook breakdown")
    ap.add_argument("--out", default="", help="results file (default bench/results.json)")
    args = ap.parse_args()
    if args.storm:
        from bench import storm

        return storm.main(args.storm_seconds)
    if args.soak:
        from bench import soak

        return soak.main(args.soak_seconds)
    if args.pcap_cost:
        from bench import pcap_cost

        return pcap_cost.main(max(1, args.rounds), max(1, int(args.seconds)))
    if args.follow_cost:
        from bench import follow_cost

        return follow_cost.main(max(1, args.rounds), max(1, int(args.seconds)))
    if args.scrape_cost:
        from bench import scrape_cost

        return scrape_cost.main(max(1, args.rounds), max(3.0, args.seconds))
    if args.start:
        from bench import start

        return start.main(max(1, args.rounds), args.base)
    if args.observer:
        from bench import observer

        return observer.main(max(1, args.rounds))
    from bench import suite

    if args.render:
        return suite.rerender(Path(args.out) if args.out else suite.OUT)
    if args.profile:
        return suite.reprofile()
    return suite.main(max(1, args.rounds), max(1.0, args.seconds),
                      variants=[v for v in args.variants.split(",") if v],
                      only_workloads=[w for w in args.workloads.split(",") if w], profile=not args.no_profile,
                      out=args.out, stats_seconds=args.stats_seconds)


if __name__ == "__main__":
    sys.exit(main())
