# netpath: `make test` and `make demo` install everything first, idempotently.
SHELL := /bin/bash
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.netpath-installed
# The system install: a wheel of this checkout in a root-owned venv, linked onto root's PATH.
PREFIX ?= /opt/netpath
BINDIR ?= /usr/local/bin
APT_PACKAGES := python3-bpfcc bpfcc-tools bpftool linux-libc-dev python3-venv python3-wheel iproute2 iptables sockperf procps ethtool prometheus python3-bcrypt python3-yaml openssl curl tshark podman buildah mmdebstrap containerd runc catatonit groff-base man-db
export PATH := /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

.PHONY: install system apt venv link dev-link uninstall tracefs demo test test-unit test-live lint bench clean help image

help:
	@echo "make install   apt packages, a wheel of this checkout in $(PREFIX), $(BINDIR)/netpath"
	@echo "make dev-link  point $(BINDIR)/netpath at this checkout's .venv instead (development)"
	@echo "make test      install, .venv, lint, unit + live tests, then the VM tier (make test-vm)"
	@echo "make demo      install, then run netpath against built-in demo traffic"
	@echo "make bench     overhead and capacity benchmarks (bench/)"

install: apt system link tracefs

# Rebuilds only when the sources in the wheel changed (scripts/install-system.sh keeps their hash).
system: apt
	@bash scripts/install-system.sh $(PREFIX)

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
	@$(PY) -c 'import bcc, pyroute2, click, rich, prometheus_client, bcrypt, yaml' || { echo "bcc/pyroute2/click/rich/bcrypt/yaml not importable from $(VENV)"; exit 1; }
	@touch $@

# The entry script's shebang pins its venv's python, so a symlink is all PATH needs.
link: system
	@ln -sfn $(PREFIX)/bin/netpath $(BINDIR)/netpath

# Development: netpath on PATH runs this checkout's code (editable .venv) instead of the wheel.
dev-link: venv
	@ln -sfn $(VENV)/bin/netpath $(BINDIR)/netpath
	@chmod -R a+rX $(CURDIR)/netpath $(CURDIR)/bpf 2>/dev/null || true

uninstall:
	@if [ "$$(readlink $(BINDIR)/netpath)" = "$(PREFIX)/bin/netpath" ]; then rm -f $(BINDIR)/netpath; fi
	rm -rf $(PREFIX)

tracefs:
	@test -d /sys/kernel/tracing/events || mount -t tracefs tracefs /sys/kernel/tracing || true

# ruff for style, mypy (pinned in pyproject.toml, settings under [tool.mypy]) for the types of netpath/
lint: venv
	$(PY) -m ruff check netpath tests
	$(PY) -m mypy

# The suite runs from this checkout's .venv; `install` also puts the system netpath in place.
test-unit: install venv
	$(PY) -m pytest -q tests/unit

test-live: install venv
	$(PY) -m pytest -q tests/live

test: install venv lint
	$(PY) -m pytest -q tests/unit tests/live
	@if grep -q '^test-vm:' mk/vm.mk 2>/dev/null; then $(MAKE) --no-print-directory test-vm; fi

demo: install
	@bash scripts/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# netpath's OCI image from Debian's packages and this checkout's wheel (contrib/image/build.sh): cached in
# IMAGE_CACHE by its inputs, so a second run takes seconds; podman has it as localhost/netpath:latest and
# IMAGE_CACHE/netpath-latest.oci.tar is for `ctr images import`
IMAGE_CACHE ?= /var/cache/netpath-image
image: venv
	sh contrib/image/build.sh $(IMAGE_CACHE)

-include mk/vm.mk
-include mk/bench.mk

# bench runs from the checkout's .venv, which `install` no longer builds (it installs the wheel)
bench-deps: venv
