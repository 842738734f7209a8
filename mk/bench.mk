# make bench / make bench-storm: the netpath benchmark suite (bench/README.md).
# Included by the top-level Makefile, which sets VENV and has run `make install`.
VENV ?= $(CURDIR)/.venv
BENCH_ROUNDS ?= 5
BENCH_SECONDS ?= 5
# the bpf_stats-on pass of each traced variant (ns/run); empty: half of BENCH_SECONDS, at least 2
BENCH_STATS_SECONDS ?=
BENCH_STORM_SECONDS ?= 30
BENCH_PY = $(VENV)/bin/python

BENCH_SOAK_SECONDS ?= 600

BENCH_START_ROUNDS ?= 5
BENCH_BASE ?= main

.PHONY: bench bench-scrape bench-start bench-storm bench-soak bench-observer bench-pcap bench-follow bench-deps bench-lint

# Idempotent: apt only when bpftrace/sockperf are missing, pip only when py-spy is missing.
bench-deps:
	@command -v bpftrace >/dev/null 2>&1 && command -v sockperf >/dev/null 2>&1 || \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -q bpftrace sockperf || \
		  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q bpftrace sockperf; }; }
	@command -v bpftool >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q bpftool
	@test -x $(VENV)/bin/py-spy || $(VENV)/bin/pip install -q py-spy

bench: bench-deps
	cd $(CURDIR) && $(BENCH_PY) -m bench --rounds $(BENCH_ROUNDS) --seconds $(BENCH_SECONDS) \
		$(if $(strip $(BENCH_STATS_SECONDS)),--stats-seconds $(BENCH_STATS_SECONDS))
	cd $(CURDIR) && $(BENCH_PY) -m bench --start --rounds $(BENCH_START_ROUNDS) --base $(BENCH_BASE)

# only the start and footprint table: this checkout beside BENCH_BASE (a git worktree made and removed here)
bench-start: bench-deps
	cd $(CURDIR) && $(BENCH_PY) -m bench --start --rounds $(BENCH_START_ROUNDS) --base $(BENCH_BASE)

# netpath export's CPU per scrape at one scrape a second, at rest and under a UDP flood (issue 32), beside
# BENCH_BASELINE's exporter when set (git archive REV | tar -x -C DIR)
BENCH_SCRAPE_SECONDS ?= 10
bench-scrape: bench-deps
	cd $(CURDIR) && $(BENCH_PY) -m bench --scrape-cost --rounds $(BENCH_ROUNDS) --seconds $(BENCH_SCRAPE_SECONDS)

bench-storm: bench-deps
	cd $(CURDIR) && $(BENCH_PY) -m bench --storm --storm-seconds $(BENCH_STORM_SECONDS)

bench-soak: bench-deps
	cd $(CURDIR) && $(BENCH_PY) -m bench --soak --soak-seconds $(BENCH_SOAK_SECONDS)

bench-pcap: bench-deps
	cd $(CURDIR) && $(BENCH_PY) -m bench --pcap-cost --rounds $(BENCH_ROUNDS) --seconds $(BENCH_SECONDS)

# netpath follow: pps with it running and matching nothing, and matching 1 packet in 1000, against untraced
bench-follow: bench-deps
	cd $(CURDIR) && $(BENCH_PY) -m bench --follow-cost --rounds $(BENCH_ROUNDS) --seconds $(BENCH_SECONDS)

bench-observer: bench-deps
	cd $(CURDIR) && $(BENCH_PY) -m bench --observer --rounds $(BENCH_ROUNDS)

bench-lint:
	$(VENV)/bin/ruff check bench
