# netpath kernel lab: Debian kernels with kprobes (6.1, 6.12) booted under qemu TCG via virtme-ng.
# Standalone:  make -f mk/vm.mk vm-setup | vm-run KERNEL=6.1 CMD='...' | test-vm | vm-fixtures
# Or `include mk/vm.mk` from the top-level Makefile. See vm/README.md.

# The checkout = the directory above this file, wherever it is (not the caller's cwd).
NETPATH_VM_TOP := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
VM_DIR := $(NETPATH_VM_TOP)/vm

VM_KERNELS ?= 6.1 6.12
KERNEL ?= 6.1
CMD ?=
# Extra pytest arguments for test-vm, e.g. VM_PYTEST_ARGS='-k kprobe -x'
VM_PYTEST_ARGS ?=
# Tools vm-peers runs (default: all), e.g. PEERS='"netpath drops" dropwatch'
PEERS ?=
# Fixture series captured by vm-fixtures (6.18 = this host, no VM)
VM_FIXTURE_KERNELS ?= $(VM_KERNELS)

.PHONY: vm-setup vm-run test-vm vm-fixtures vm-fixtures-host vm-shell vm-peers

## vm-setup: qemu, udev, virtme-ng venv (vm/.venv), kernels 6.1 + 6.12 with exact headers
vm-setup:
	@bash $(VM_DIR)/setup.sh $(VM_KERNELS)

## vm-run KERNEL=6.1 CMD='...': boot KERNEL, run CMD as root in the checkout, exit with its status
vm-run: export NETPATH_VM_CMD = $(value CMD)
vm-run: vm-setup
	@test -n "$$NETPATH_VM_CMD" || { echo "vm-run: set CMD='...' (use vm-shell for a shell)" >&2; exit 2; }
	@bash $(VM_DIR)/run.sh $(KERNEL)

## vm-shell KERNEL=6.1: interactive shell in the guest
vm-shell: vm-setup
	@bash $(VM_DIR)/run.sh $(KERNEL)

## test-vm: one boot per kernel running `python -m pytest tests/vm -v` inside; fails if any fails
# The whole tier in one boot takes 7-13 min per kernel under TCG (more on a busy host): 30 min is a hang.
test-vm: vm-setup
	@VM_TIMEOUT=$${VM_TIMEOUT:-1800} bash $(VM_DIR)/test-vm.sh $(VM_KERNELS) -- $(VM_PYTEST_ARGS)

## vm-peers: netpath beside tcpdrop, softirqs (bpfcc-tools) and dropwatch, same traffic; one boot per kernel
vm-peers: vm-setup
	@set -e; for k in $(VM_KERNELS); do \
	  VM_TIMEOUT=$${VM_TIMEOUT:-3000} bash $(VM_DIR)/run.sh $$k 'python -u vm/peers.py $(PEERS)'; done

## vm-fixtures: capture kernel-fact fixtures into tests/fixtures/<series>/ (guests + this host)
vm-fixtures: vm-setup vm-fixtures-host
	@set -e; for k in $(VM_FIXTURE_KERNELS); do \
	  bash $(VM_DIR)/run.sh $$k "bash vm/capture-fixtures.sh tests/fixtures/$$k"; done

vm-fixtures-host:
	@series=$$(uname -r | cut -d. -f1,2); \
	  bash $(VM_DIR)/capture-fixtures.sh $(NETPATH_VM_TOP)/tests/fixtures/$$series
