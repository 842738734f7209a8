#!/usr/bin/env bash
# netpath kernel lab: install what it takes to boot Debian kernels (with kprobes) under qemu TCG.
#
# Idempotent and quick once done. Needs root and Debian bookworm apt sources.
#
#   vm/setup.sh            set up everything (qemu, udev, virtme-ng venv, kernels 6.1 and 6.12)
#   vm/setup.sh 6.12       only that kernel (plus the tools)
#
# Environment:
#   NETPATH_VM_HOME   where kernels live (default /var/lib/netpath-vm). Must not be under /var/cache,
#                     /var/lib/apt, /var/log, /var/tmp or /tmp: virtme-ng hides those inside the guest.
#   NETPATH_VM_VENV   virtme-ng's venv (default <checkout>/vm/.venv)
#   VIRTME_NG_VERSION pinned virtme-ng version from PyPI (default below)
#   NETPATH_VM_REFRESH=1  re-resolve the newest kernel packages even if one is already installed
#
# Layout made here (nothing is installed into /boot or /lib/modules of the host):
#   $NETPATH_VM_HOME/debs/                 downloaded .debs
#   $NETPATH_VM_HOME/k/<uname -r>/         dpkg-deb -x of linux-image, linux-headers(-common), linux-kbuild
#        boot/vmlinuz-<ver>, boot/config-<ver>, lib/modules/<ver>/{kernel,modules.dep,build,source}
#        build -> $NETPATH_VM_HOME/k/<ver>/usr/src/linux-headers-<ver> (absolute: valid in host and guest)
#   $NETPATH_VM_HOME/<series> -> k/<uname -r>   e.g. 6.1 -> k/6.1.0-56-amd64
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VM_HOME="${NETPATH_VM_HOME:-/var/lib/netpath-vm}"
VENV="${NETPATH_VM_VENV:-$HERE/.venv}"
VIRTME_NG_VERSION="${VIRTME_NG_VERSION:-1.42}"
SERIES=("$@")
[ ${#SERIES[@]} -gt 0 ] || SERIES=(6.1 6.12)

log() { printf 'vm-setup: %s\n' "$*" >&2; }
die() { printf 'vm-setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, kernel extraction)"
case "$VM_HOME/" in
    /var/cache/*|/var/lib/apt/*|/var/log/*|/var/tmp/*|/tmp/*|/var/lib/private/*)
        die "NETPATH_VM_HOME=$VM_HOME is hidden by a tmpfs inside the virtme-ng guest; pick another";;
esac

export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
}

# --- 1. bookworm-backports source (for 6.12) --------------------------------------------------
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        /etc/apt/sources.list.d/*.sources; then
    log "adding bookworm-backports apt source"
    cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt_update
fi
if ! apt-cache policy 2>/dev/null | grep -q 'bookworm-backports'; then
    apt_update
fi

# --- 2. host packages -------------------------------------------------------------------------
# qemu-system-x86: the emulator. udev: virtme-ng's guest init needs systemd-udevd to create
# /dev/virtio-ports/virtme.* (without it, command output and exit status are lost).
# busybox-static: virtme-ng's initramfs. kmod: depmod/modprobe. file: kernel version detection.
# dropwatch: the NET_DM peer that vm/peers.py (make vm-peers) compares netpath with.
PKGS=(qemu-system-x86 udev busybox-static kmod file python3-venv dropwatch)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    # policy-rc.d (if any) keeps udevd from being started on the host; we never start it here.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt_update; apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# --- 3. virtme-ng in its own venv -------------------------------------------------------------
# --system-site-packages so that this venv can also run the VM tests (BCC from python3-bpfcc)
# when the project venv does not exist; pytest is installed here for the same reason.
if ! "$VENV/bin/vng" --version 2>/dev/null | grep -q "$VIRTME_NG_VERSION" \
        || ! "$VENV/bin/python" -c 'import pytest, bcc' 2>/dev/null; then
    log "creating $VENV with virtme-ng==$VIRTME_NG_VERSION"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "virtme-ng==$VIRTME_NG_VERSION" pytest
    "$VENV/bin/vng" --version >/dev/null
fi

# --- 4. kernels -------------------------------------------------------------------------------
mkdir -p "$VM_HOME/debs" "$VM_HOME/k"

resolve_kver() {  # series -> e.g. 6.1.0-56-amd64 (the dependency of linux-image-amd64)
    local target=()
    case "$1" in
        6.1) ;;
        6.12) target=(-t bookworm-backports) ;;
        *) die "unknown kernel series '$1' (known: 6.1 from bookworm, 6.12 from bookworm-backports)";;
    esac
    local kv
    kv=$(apt-cache "${target[@]}" depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}')
    if [ -z "$kv" ]; then
        apt_update
        kv=$(apt-cache "${target[@]}" depends linux-image-amd64 2>/dev/null \
            | awk '/Depends: linux-image-[0-9]/{sub("linux-image-","",$2); print $2; exit}')
    fi
    case "$kv" in "$1".*) ;; *) die "linux-image-amd64 for $1 resolved to '$kv'";; esac
    echo "$kv"
}

# The packages' build/source links are absolute (/usr/src/...); point them into the tree, also
# absolute, so they resolve the same on the host and in the guest (the host root is shared).
# BCC uses both: with build/ and source/ present it compiles in source/ with -I build/...
link_headers() {  # kernel tree
    local root=$1 kv md common
    kv=$(basename "$root")
    md="$root/lib/modules/$kv"
    common=$(cd "$root/usr/src" && ls -d linux-headers-*-common 2>/dev/null | head -1)
    ln -sfn "$root/usr/src/linux-headers-$kv" "$md/build"
    [ -n "$common" ] && ln -sfn "$root/usr/src/$common" "$md/source"
}

kernel_ok() {  # kernel tree: everything the guest needs is there
    local root=$1 kv md
    kv=$(basename "$root")
    md="$root/lib/modules/$kv"
    [ -f "$root/boot/vmlinuz-$kv" ] && [ -f "$root/boot/config-$kv" ] && [ -f "$md/modules.dep" ] \
        && [ -f "$md/build/include/generated/autoconf.h" ] \
        && [ -f "$md/source/include/linux/kconfig.h" ]
}

install_kernel() {  # series
    local series=$1 kv root
    if [ "${NETPATH_VM_REFRESH:-0}" != 1 ] && [ -e "$VM_HOME/$series/.complete" ] \
            && kernel_ok "$(readlink -f "$VM_HOME/$series")"; then
        log "kernel $series: $(readlink "$VM_HOME/$series") (already set up)"
        return 0
    fi
    kv=$(resolve_kver "$series")
    root="$VM_HOME/k/$kv"
    if [ -e "$root/.complete" ] && ! kernel_ok "$root"; then
        link_headers "$root"
        kernel_ok "$root" || rm -f "$root/.complete"
    fi
    if [ ! -e "$root/.complete" ]; then
        local target=() common kbuild
        [ "$series" = 6.12 ] && target=(-t bookworm-backports)
        common=$(apt-cache "${target[@]}" depends "linux-headers-$kv" \
            | awk '/Depends: linux-headers-.*-common/{print $2; exit}')
        kbuild=$(apt-cache "${target[@]}" depends "linux-headers-$kv" \
            | awk '/Depends: linux-kbuild-/{print $2; exit}')
        [ -n "$common" ] && [ -n "$kbuild" ] || die "cannot resolve headers of linux-headers-$kv"
        log "kernel $series: downloading linux-image-$kv linux-headers-$kv $common $kbuild"
        local dl="$VM_HOME/debs/$kv"
        rm -rf "$dl" "$root"
        mkdir -p "$dl"
        # apt-get download as root warns that _apt cannot write here; harmless.
        (cd "$dl" && apt-get download "${target[@]}" "linux-image-$kv" "linux-headers-$kv" \
            "$common" "$kbuild" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
        [ "$(ls "$dl"/*.deb 2>/dev/null | wc -l)" = 4 ] || die "download of kernel $kv failed"
        mkdir -p "$root"
        for d in "$dl"/*.deb; do dpkg-deb -x "$d" "$root"; done
        local md="$root/lib/modules/$kv"
        [ -d "$md" ] || { mkdir -p "$root/lib/modules"; mv "$root/usr/lib/modules/$kv" "$md"; }
        [ -f "$root/boot/vmlinuz-$kv" ] || die "no vmlinuz in linux-image-$kv"
        link_headers "$root"
        log "kernel $series: depmod"
        depmod -a -b "$root" "$kv"
        kernel_ok "$root" || die "kernel tree $root incomplete"
        rm -rf "$dl"   # the extracted tree is the cache; keep the disk use down
        touch "$root/.complete"
    fi
    ln -sfn "k/$kv" "$VM_HOME/$series"
    log "kernel $series: $VM_HOME/$series -> k/$kv"
}

for s in "${SERIES[@]}"; do install_kernel "$s"; done
log "ok"
