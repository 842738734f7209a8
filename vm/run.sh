#!/usr/bin/env bash
# netpath kernel lab: boot a Debian kernel under qemu (TCG) with the host's root filesystem and run
# one shell command inside as root, from the checkout, with netpath's python first on PATH.
#
#   vm/run.sh KERNEL [CMD...]       KERNEL: 6.1 | 6.12 | a full version set up by vm/setup.sh
#                                   CMD: a shell command line (default: $NETPATH_VM_CMD, else a shell)
#
# Prints CMD's stdout/stderr and exits with CMD's exit status. 124 = timed out; 125 = the guest never
# reported a status (boot failure, kernel panic, qemu killed).
#
# Environment: NETPATH_VM_HOME (/var/lib/netpath-vm), NETPATH_VM_VENV (<checkout>/vm/.venv),
#   VM_MEMORY (2G), VM_CPUS (2), VM_TIMEOUT (seconds, 1200), VM_PYTHON (python used inside; default:
#   <checkout>/.venv/bin/python if it has pytest, else the virtme-ng venv's python), VM_VERBOSE=1
#   (show the guest kernel console), VM_REALNIC (1: two virtio-net NICs joined by a qemu hub, see
#   vm/README.md; 0: none), VM_E1000 (1 or e1000: two e1000 NICs on a second hub;
#   e1000e: two e1000e NICs there instead; default 0), VM_RTL8139 (1: two rtl8139 NICs on a third hub;
#   0: none), VM_KEEP_RUNDIR (1: keep vm/.run/<run>/, with the guest console of errors and worse).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
VM_HOME="${NETPATH_VM_HOME:-/var/lib/netpath-vm}"
VENV="${NETPATH_VM_VENV:-$HERE/.venv}"

die() { printf 'vm-run: error: %s\n' "$*" >&2; exit 125; }

[ $# -ge 1 ] && [ -n "$1" ] || die "usage: vm/run.sh KERNEL [CMD...]  (KERNEL: 6.1 or 6.12)"
KERNEL=$1; shift
if [ $# -gt 0 ]; then CMD="$*"; else CMD="${NETPATH_VM_CMD:-}"; fi

[ "$(id -u)" = 0 ] || die "must run as root"
[ -x "$VENV/bin/vng" ] || die "virtme-ng not found in $VENV: run 'make -f mk/vm.mk vm-setup' first"
if [ -e "$VM_HOME/$KERNEL/.complete" ]; then
    KROOT="$(readlink -f "$VM_HOME/$KERNEL")"
elif [ -e "$VM_HOME/k/$KERNEL/.complete" ]; then
    KROOT="$VM_HOME/k/$KERNEL"
else
    die "kernel '$KERNEL' is not set up under $VM_HOME: run 'make -f mk/vm.mk vm-setup'"
fi
KVER="$(basename "$KROOT")"
KIMG="$KROOT/boot/vmlinuz-$KVER"
[ -f "$KIMG" ] || die "missing $KIMG"

if [ -z "${VM_PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -c 'import pytest' 2>/dev/null; then
        VM_PYTHON="$ROOT/.venv/bin/python"
    else
        VM_PYTHON="$VENV/bin/python"
    fi
fi

# The run directory lives in the checkout, which the guest mounts read-write at the same path.
RUNDIR="$ROOT/vm/.run/$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$RUNDIR"
trap '[ -n "${VM_KEEP_RUNDIR:-}" ] || rm -rf "$RUNDIR"' EXIT
printf '%s\n' "$CMD" > "$RUNDIR/cmd"
{
    printf 'NETPATH_VM_PYTHON=%q\n' "$VM_PYTHON"
    printf 'NETPATH_VM_SERIES=%q\n' "$KERNEL"
    printf 'NETPATH_VM_CHECKOUT=%q\n' "$ROOT"
} > "$RUNDIR/env"

VNG_ARGS=(--run "$KIMG" --disable-kvm --memory "${VM_MEMORY:-2G}" --cpus "${VM_CPUS:-2}"
          --rwdir="$ROOT" --cwd "$ROOT")
# An oops anywhere is a panic, so a guest whose kernel broke ends at once (panic=-1 from vng powers it
# off) instead of hanging until VM_TIMEOUT with a dead kernel thread holding a lock.
VNG_ARGS+=(--append "oops=panic")
[ "${VM_VERBOSE:-0}" = 1 ] && VNG_ARGS+=(--verbose)
# The real-driver lab: two virtio-net NICs whose only peer is each other, through a qemu hub that has
# no other port, so nothing they send leaves the guest. A hub port has a single queue pair, which is
# all qemu lets virtio-net negotiate with it (mq needs a multiqueue backend such as tap). The MACs are
# how tests/vm/vmlab.py finds them, whatever udev names them.
if [ "${VM_REALNIC:-1}" = 1 ]; then
    for i in 1 2; do
        VNG_ARGS+=(--qemu-opts="-netdev hubport,id=npnic$i,hubid=14 -device virtio-net-pci,netdev=npnic$i,mac=52:54:00:6e:70:0$i")
    done
fi
# A second pair, emulated e1000 on its own hub (15): unlike virtio-net, qemu's e1000 drops a frame that
# finds no free receive descriptor and counts it in RNBC and MPC (hw/net/e1000.c e1000_receiver_overrun),
# which the guest's e1000 driver reports as rx_no_buffer_count and rx_missed_errors. Its own switch, off by
# default: qemu never clears those registers on read, so the guest's counters are inflated (vm/README.md).
# VM_E1000=e1000e puts qemu's e1000e (82574L) there instead, which counts nothing: it holds the frame back
# like virtio-net (vm/README.md).
case "${VM_E1000:-0}" in
    0) E1K_MODEL= ;;
    1|e1000) E1K_MODEL=e1000 ;;
    e1000e) E1K_MODEL=e1000e ;;
    *) die "VM_E1000='${VM_E1000}': expected 0, 1 (e1000) or e1000e" ;;
esac
if [ -n "$E1K_MODEL" ]; then
    for i in 1 2; do
        VNG_ARGS+=(--qemu-opts="-netdev hubport,id=npe1k$i,hubid=15 -device $E1K_MODEL,netdev=npe1k$i,mac=52:54:00:6e:71:0$i")
    done
fi
# A third pair, qemu's rtl8139 on its own hub (16), on by default: in C+ mode (the guest's 8139cp driver)
# qemu never holds a frame back (rtl8139_can_receive) and drops one that finds no free descriptor,
# counting it in the MissPkt tally and RxMissed (rtl8139_do_receive), which 8139cp reports exactly as
# ethtool -S rx_fifo and the link's rx_missed_errors: the NIC nic-ring-overrun is tested on (vm/README.md).
if [ "${VM_RTL8139:-1}" = 1 ]; then
    for i in 1 2; do
        VNG_ARGS+=(--qemu-opts="-netdev hubport,id=nprtl$i,hubid=16 -device rtl8139,netdev=nprtl$i,mac=52:54:00:6e:72:0$i")
    done
fi
# The guest kernel's console: vng sends it to /dev/null at loglevel 0 unless VM_VERBOSE=1, so a guest that
# panics (vng then exits 255 with no status) would leave nothing to read. A second UART (ttyS1), listed
# last so it is also /dev/console, writes errors and worse to a file printed when no status comes back.
CONSOLE_LOG="$RUNDIR/console"
if [ "${VM_VERBOSE:-0}" != 1 ]; then
    VNG_ARGS+=(--qemu-opts="-device virtio-serial-pci,id=npconbus -chardev file,id=npcon,path=$CONSOLE_LOG -device virtconsole,chardev=npcon,bus=npconbus.0" --append "console=hvc0 loglevel=4")
fi
GUEST_CMD="bash $(printf '%q' "$HERE/guest.sh") $(printf '%q' "$RUNDIR")"
[ -n "$CMD" ] || GUEST_CMD="$GUEST_CMD --interactive"

printf 'vm-run: booting %s (qemu TCG, %s CPUs, %s) ...\n' "$KVER" "${VM_CPUS:-2}" "${VM_MEMORY:-2G}" >&2
start=$(date +%s.%N)
# vng needs virtme-run etc. from its venv on PATH; stdin is passed to the guest.
# Commands get /dev/null as stdin: under CI stdin may be closed, and vng then falls back to a mode
# that loses the guest's stderr. Only the interactive shell gets the caller's stdin.
# qemu opens the guest's output channels as /proc/self/fd/{1,2} with O_TRUNC: if our stdout or
# stderr is a regular file (make test-vm > log), each boot would truncate it. Hand qemu pipes.
print_console() {	# the guest kernel's errors and worse, last 60 lines, printable ASCII only
    [ -s "$CONSOLE_LOG" ] && tail -n 60 "$CONSOLE_LOG" | tr -cd '\11\12\40-\176' >&2
}
boot_once() {
    exec {errfd}> >(cat >&2)
    errpid=$!
    PATH="$VENV/bin:$PATH" timeout -k 15 "${VM_TIMEOUT:-1200}" \
        "$VENV/bin/vng" "${VNG_ARGS[@]}" --exec "$GUEST_CMD" < /dev/null 2>&$errfd | cat
    vng_rc=${PIPESTATUS[0]}
    exec {errfd}>&-
    wait "$errpid" 2>/dev/null
}
# A guest kernel that dies while booting, before guest.sh runs, ran nothing of netpath's: Debian 6.12 under
# multi-threaded TCG has been seen to oops on an int3 in sched_clock_cpu at 2 s, a text-patching race of
# the emulator. Such a boot is tried once more, after printing its console; a guest that dies after it
# booted fails the run as before.
if [ -n "$CMD" ]; then
    for attempt in 1 2; do
        rm -f "$RUNDIR/booted" "$RUNDIR/status"
        boot_once
        if [ "$vng_rc" = 124 ] || [ -s "$RUNDIR/status" ] || [ -e "$RUNDIR/booted" ] || [ "$attempt" = 2 ]; then
            break
        fi
        printf 'vm-run: %s: the guest died while booting (vng exited %s), before running anything; its console:\n' \
            "$KVER" "$vng_rc" >&2
        print_console
        printf 'vm-run: %s: booting once more\n' "$KVER" >&2
    done
else
    PATH="$VENV/bin:$PATH" "$VENV/bin/vng" "${VNG_ARGS[@]}" --exec "$GUEST_CMD"
    vng_rc=$?
fi
end=$(date +%s.%N)
wall=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}')

if [ $vng_rc = 124 ]; then
    printf 'vm-run: %s: timed out after %ss (VM_TIMEOUT)\n' "$KVER" "${VM_TIMEOUT:-1200}" >&2
    exit 124
fi
if [ -s "$RUNDIR/status" ]; then
    rc=$(cat "$RUNDIR/status")
    if [ "$rc" != "$vng_rc" ]; then
        printf 'vm-run: note: vng exited %s, guest command exited %s (using the latter)\n' \
            "$vng_rc" "$rc" >&2
    fi
else
    printf 'vm-run: %s: the guest reported no exit status (vng exited %s): boot or guest failure (VM_VERBOSE=1 shows the whole console)\n' \
        "$KVER" "$vng_rc" >&2
    if [ -s "$CONSOLE_LOG" ]; then
        printf 'vm-run: %s: the guest console (errors and worse), last 60 lines:\n' "$KVER" >&2
        print_console
    fi
    rc=125
fi
printf 'vm-run: %s: exit %s, %ss wall (boot + command)\n' "$KVER" "$rc" "$wall" >&2
exit "$rc"
