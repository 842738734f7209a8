# netpath: `make test` and `make demo` install everything first, idempotently.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.netpath-installed
APT_PACKAGES := python3-bpfcc bpfcc-tools bpftool linux-libc-dev python3-venv iproute2 iptables sockperf procps ethtool prometheus
export PATH := /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

.PHONY: install apt venv link tracefs demo test test-unit test-live lint bench clean help

help:
	@echo "make install   apt packages, .venv, netpath on PATH (/usr/local/bin/netpath)"
	@echo "make test      install, lint, unit + live tests, then the VM tier (make test-vm)"
	@echo "make demo      install, then run netpath against built-in demo traffic"
	@echo "make bench     overhead and capacity benchmarks (bench/)"

install: apt venv link tracefs

apt:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@$(PY) -c 'import bcc, pyroute2, click, rich, prometheus_client' || { echo "bcc/pyroute2/click/rich not importable from $(VENV)"; exit 1; }
	@touch $@

# A symlink into this checkout's venv: the entry script's shebang pins the venv python.
link: venv
	@ln -sfn $(VENV)/bin/netpath /usr/local/bin/netpath
	@chmod -R a+rX $(CURDIR)/netpath $(CURDIR)/bpf 2>/dev/null || true

tracefs:
	@test -d /sys/kernel/tracing/events || mount -t tracefs tracefs /sys/kernel/tracing || true

lint: venv
	$(PY) -m ruff check netpath tests

test-unit: install
	$(PY) -m pytest -q tests/unit

test-live: install
	$(PY) -m pytest -q tests/live

test: install lint
	$(PY) -m pytest -q tests/unit tests/live
	@if grep -q '^test-vm:' mk/vm.mk 2>/dev/null; then $(MAKE) --no-print-directory test-vm; fi

demo: install
	@bash scripts/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

-include mk/vm.mk
-include mk/bench.mk
