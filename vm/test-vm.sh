#!/usr/bin/env bash
# netpath kernel lab: for each kernel, ONE boot that runs `python -m pytest tests/vm -v` inside.
#   vm/test-vm.sh [KERNEL...] [-- PYTEST_ARGS...]      (default kernels: 6.1 6.12)
# Exits non-zero if any kernel's run failed (test failure, no tests collected, boot failure).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kernels=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do kernels+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
[ ${#kernels[@]} -gt 0 ] || kernels=(6.1 6.12)
extra=""
for a in "$@"; do extra+=" $(printf '%q' "$a")"; done

start=$(date +%s)
fails=0
summary=()
for k in "${kernels[@]}"; do
    t0=$(date +%s)
    bash "$HERE/run.sh" "$k" "python -m pytest tests/vm -v -rs -p no:cacheprovider$extra"
    rc=$?
    t1=$(date +%s)
    summary+=("$(printf '  kernel %-5s exit %-3s %4ss' "$k" "$rc" "$((t1 - t0))")")
    [ $rc = 0 ] || fails=$((fails + 1))
done
printf 'test-vm: %s kernel(s), %s failed, %ss total\n' "${#kernels[@]}" "$fails" "$(( $(date +%s) - start ))"
printf '%s\n' "${summary[@]}"
[ $fails = 0 ]
