#!/usr/bin/env bash
# netpath kernel lab, guest side (run by vm/run.sh inside the virtme-ng guest, as root).
# Prepares the guest the way netpath expects a real machine to look, then runs the command from
# RUNDIR/cmd in the checkout and records its exit status in RUNDIR/status for the host.
set -u
RUNDIR=$1
. "$RUNDIR/env"
KV="$(uname -r)"
up="$(cut -d' ' -f1 /proc/uptime)"
printf 'vm-guest: %s up after %ss (guest clock)\n' "$KV" "$up" >&2
: > "$RUNDIR/booted"	# the host's vm/run.sh: a guest that dies after this is not a boot failure

warn() { printf 'vm-guest: warning: %s\n' "$*" >&2; }

# tracefs and debugfs (virtme-ng mounts them; make sure)
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug || warn "no debugfs"
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || warn "no tracefs"

# Modules and exact headers: virtme-ng links /lib/modules/$KV to the extracted kernel tree.
if [ ! -e "/lib/modules/$KV/modules.dep" ]; then
    warn "/lib/modules/$KV has no modules.dep: modules cannot be loaded"
fi
[ -e "/lib/modules/$KV/build/include/generated/autoconf.h" ] \
    || warn "/lib/modules/$KV/build does not hold this kernel's headers"

# /boot/config-$KV (read by BCC and netpath's kernel facts): the host's /boot does not have it.
if [ ! -e "/boot/config-$KV" ]; then
    KROOT="$(readlink -f "/lib/modules/$KV")"
    KROOT="${KROOT%/lib/modules/$KV}"
    if [ -e "$KROOT/boot/config-$KV" ]; then
        mount -t tmpfs -o mode=0755 netpath-boot /boot \
            && ln -s "$KROOT/boot/"* /boot/ \
            || warn "could not provide /boot/config-$KV"
    fi
fi

modprobe -q veth 2>/dev/null || warn "modprobe veth failed"
ip link set lo up 2>/dev/null

export NETPATH_VM=1 NETPATH_VM_KERNEL="$KV" NETPATH_VM_SERIES NETPATH_VM_PYTHON
export PATH="$(dirname "$NETPATH_VM_PYTHON"):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export PYTHONDONTWRITEBYTECODE=1
cd "$NETPATH_VM_CHECKOUT" || exit 125

# No kernel text patched while the tests attach and detach: two programs held on every tracepoint netpath
# uses, kprobes left unoptimized. Multi-threaded TCG has oopsed on the int3 of such a patch (vm/README.md,
# vm/hold_tracepoints.py).
sysctl -q -w debug.kprobes-optimization=0 2>/dev/null || warn "kprobes stay optimized"
"$NETPATH_VM_PYTHON" "$(dirname "${BASH_SOURCE[0]}")/hold_tracepoints.py" "$RUNDIR/held" &
holder=$!
for _ in $(seq 200); do [ -s "$RUNDIR/held" ] || ! kill -0 "$holder" 2>/dev/null && break; sleep 0.2; done
if [ -s "$RUNDIR/held" ]; then printf 'vm-guest: tracepoints %s\n' "$(cat "$RUNDIR/held")" >&2
else warn "tracepoints not held: kernel text may be patched under the tests"; fi

if [ "${2:-}" = --interactive ]; then
    bash -i
else
    bash "$RUNDIR/cmd"
fi
rc=$?
kill "$holder" 2>/dev/null
wait "$holder" 2>/dev/null
echo "$rc" > "$RUNDIR/status"
sync
exit "$rc"
