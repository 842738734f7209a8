#!/usr/bin/env bash
# make install: netpath installed the way a Python tool is: a wheel built from this checkout, in a
# root-owned venv that sees the distro's BCC bindings (--system-site-packages from /usr/bin/python3).
#
#   scripts/install-system.sh PREFIX     (default /opt/netpath)
#
# Idempotent and quick: the wheel is rebuilt only when the sources that go into it changed (their
# sha256 is kept in PREFIX/.netpath-installed). Nothing is written into the checkout.
set -euo pipefail
umask 022  # root-owned, world-readable venv whatever the caller's umask

PREFIX=${1:-/opt/netpath}
CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMP=$PREFIX/.netpath-installed
PY=$PREFIX/bin/python

sources() {
    (cd "$CHECKOUT" && find pyproject.toml README.md netpath bpf man -type f \( -name '*.py' -o -name '*.c' -o \
        -name '*.h' -o -name '*.toml' -o -name '*.md' -o -name '*.8' \) -not -path '*/__pycache__/*' | LC_ALL=C sort)
}

digest() {
    (cd "$CHECKOUT" && sources | xargs sha256sum | sha256sum | cut -d' ' -f1)
}

want="$(digest) $CHECKOUT"
if [ -x "$PY" ] && [ -x "$PREFIX/bin/netpath" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
    exit 0
fi

if [ ! -x "$PY" ]; then
    echo "install: creating $PREFIX (venv, --system-site-packages for bcc)"
    /usr/bin/python3 -m venv --system-site-packages "$PREFIX"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/src"
(cd "$CHECKOUT" && sources | xargs cp --parents -t "$stage/src")

echo "install: building the netpath wheel from $CHECKOUT"
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$stage/dist" "$stage/src"
wheel=$(ls "$stage"/dist/netpath-*.whl)
# same version number, new code: reinstall netpath itself; its dependencies only when missing
"$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
"$PY" -m pip install -q --disable-pip-version-check "$wheel"
(cd / && "$PY" -c 'import bcc, click, rich, pyroute2, netpath.cli.main') || {
    echo "install: netpath or its dependencies (bcc, click, rich, pyroute2) not importable from $PREFIX" >&2
    exit 1
}
echo "$want" > "$STAMP"
echo "install: netpath $(basename "$wheel") in $PREFIX"
