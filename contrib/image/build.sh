#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-only
# make image: netpath's OCI image from Debian's packages and the checkout's wheel, no registry image.
#
#   contrib/image/build.sh [CACHE_DIR]      (root; CACHE_DIR defaults to /var/cache/netpath-image)
#
# 1. base: mmdebstrap makes a root filesystem tarball from contrib/image/packages. It is cached in
#    CACHE_DIR under a key of its inputs (the package list, the suite, this script), because it takes
#    minutes; `podman import` turns it into localhost/netpath-base:KEY.
# 2. netpath: the checkout's wheel and its PyPI dependencies (Debian's are older than pyproject's pins)
#    go into a venv in /opt/netpath that also sees Debian's python3-bpfcc; buildah commits that as
#    localhost/netpath:KEY (the key adds the wheels' hashes) and tags it localhost/netpath:latest.
# 3. CACHE_DIR/netpath-KEY.oci.tar: the same image as an OCI archive, for `ctr images import`.
# Each step is skipped when its output for the same key exists, so a second run takes seconds.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
cache=${1:-/var/cache/netpath-image}
suite=bookworm
mirror=${NETPATH_IMAGE_MIRROR:-http://deb.debian.org/debian}
python=${PYTHON:-$top/.venv/bin/python}

umask 022
mkdir -p "$cache"
chmod 0755 "$cache"

pkgs=$(grep -v '^#' "$here/packages" | grep . | sort | tr '\n' ',' | sed 's/,$//')
base_key=$( { echo "$suite $mirror $pkgs"; sed -n '/^# base:begin/,/^# base:end/p' "$0"; } \
	| sha256sum | cut -c1-16)
base_tar="$cache/rootfs-$base_key.tar"

# base:begin
if [ ! -s "$base_tar" ]; then
	echo "image: building the Debian root filesystem ($suite: $pkgs)" >&2
	rm -rf "$base_tar.tmp"
	mmdebstrap --variant=minbase --format=tar --include="$pkgs" \
		--dpkgopt='path-exclude=/usr/share/man/*' \
		--dpkgopt='path-exclude=/usr/share/doc/*' \
		--dpkgopt='path-include=/usr/share/doc/*/copyright' \
		--dpkgopt='path-exclude=/usr/share/locale/*' \
		--dpkgopt='path-exclude=/usr/share/info/*' \
		--customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
		"$suite" "$base_tar.tmp" "$mirror"
	mv "$base_tar.tmp" "$base_tar"
fi
# base:end
for old in "$cache"/rootfs-*.tar; do  # an earlier package list's root filesystem
	[ "$old" = "$base_tar" ] || rm -f "$old"
done
base_img=localhost/netpath-base:$base_key
podman image exists "$base_img" || podman import --quiet "$base_tar" "$base_img" >/dev/null

wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
# the wheel is built from a copy of the working tree (tracked and new files, not ignored ones): a build in
# place would leave build/ in the checkout
src="$wheels/src"
mkdir "$src"
(cd "$top" && git ls-files -z --cached --others --exclude-standard \
	| python3 -c 'import os, sys; sys.stdout.write("".join(f + "\0" for f in sys.stdin.read().split("\0") if os.path.isfile(f)))' \
	| xargs -0 cp --parents -t "$src")
"$python" -m pip wheel --quiet --no-build-isolation --no-deps -w "$wheels" "$src"
rm -rf "$src"
# the runtime dependencies pyproject names, except those Debian's packages satisfy (bcrypt, PyYAML)
"$python" -m pip download --quiet --only-binary=:all: -d "$wheels" \
	$("$python" "$here/requirements.py" "$top/pyproject.toml")
# the wheel's name carries no content hash: key on the files it holds
key=$( { echo "$base_key"; cat "$0"; for w in "$wheels"/*.whl; do
	python3 -c 'import sys, zipfile, hashlib
z = zipfile.ZipFile(sys.argv[1])
h = hashlib.sha256()
for i in sorted(z.namelist()):
    if not i.endswith("RECORD"):
        h.update(i.encode() + b"\0" + z.read(i))
print(sys.argv[1].rsplit("/", 1)[1], h.hexdigest())' "$w"; done; } | sha256sum | cut -c1-16)
img=localhost/netpath:$key
if ! podman image exists "$img"; then
	echo "image: installing netpath into $base_img" >&2
	ctr=$(buildah from --pull-never "$base_img")
	buildah copy --quiet "$ctr" "$wheels" /tmp/wheels >/dev/null
	buildah run --isolation chroot "$ctr" -- sh -c \
		'python3 -m venv --system-site-packages /opt/netpath &&
		 /opt/netpath/bin/pip install --quiet --no-index --no-cache-dir --find-links /tmp/wheels netpath &&
		 rm -rf /tmp/wheels /root/.cache && find /opt/netpath -name __pycache__ -prune -exec rm -rf {} +'
	buildah config --entrypoint '["/opt/netpath/bin/netpath"]' --cmd '["export"]' \
		--env PATH=/opt/netpath/bin:/usr/sbin:/usr/bin:/sbin:/bin --env NETPATH_CACHE=/var/cache/netpath \
		--label org.opencontainers.image.title=netpath --label "netpath.image.key=$key" \
		--port 9872/tcp "$ctr"
	buildah commit --quiet --rm "$ctr" "$img" >/dev/null
fi
podman tag "$img" localhost/netpath:latest
# older builds of the image go (their layers are the base's and a few MB)
podman images --format '{{.Repository}}:{{.Tag}}' localhost/netpath | grep -v -e ":$key\$" -e ':latest$' \
	| xargs -r podman rmi >/dev/null 2>&1 || true
oci="$cache/netpath-$key.oci.tar"
if [ ! -s "$oci" ]; then
	rm -f "$cache"/netpath-*.oci.tar
	podman save --quiet --format oci-archive -o "$oci.tmp" localhost/netpath:latest
	mv "$oci.tmp" "$oci"
fi
ln -sf "netpath-$key.oci.tar" "$cache/netpath-latest.oci.tar"
size=$(podman image inspect --format '{{.Size}}' "$img")
echo "image: $img ($((size / 1000000)) MB), OCI archive $oci" >&2
