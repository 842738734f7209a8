"""A minimal kernel header tree for BCC on kernels that ship no headers.

BCC insists on a kernel build directory for its own helper headers. netpath's
C includes no kernel headers (struct fields come from BTF offsets), so a few
stub files plus uapi headers from linux-libc-dev satisfy it, and compile in a
fraction of the time real headers take.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from netpath.errors import MissingCapability
from netpath.kernel import cache, limits

TREE_DIR_MODE, TREE_FILE_MODE = 0o700, 0o600  # inside the private store, as private as its entries

# uapi headers BCC's helpers.h pulls in, copied from the distro's linux-libc-dev.
UAPI_FILES = {
    "include/linux/bpf_common.h": "linux/bpf_common.h",
    "include/uapi/linux/if_packet.h": "linux/if_packet.h",
    "include/linux/stddef.h": "linux/stddef.h",
    "include/linux/swab.h": "linux/swab.h",
    "include/linux/byteorder/little_endian.h": "linux/byteorder/little_endian.h",
    "include/asm/byteorder.h": "asm/byteorder.h",
    "include/asm/bitsperlong.h": "asm/bitsperlong.h",
    "include/asm/swab.h": "asm/swab.h",
    "include/asm-generic/bitsperlong.h": "asm-generic/bitsperlong.h",
}

TYPES_H = """#pragma once
typedef signed char __s8; typedef unsigned char __u8;
typedef short __s16; typedef unsigned short __u16;
typedef int __s32; typedef unsigned int __u32;
typedef long long __s64; typedef unsigned long long __u64;
typedef __s8 s8; typedef __u8 u8; typedef __s16 s16; typedef __u16 u16;
typedef __s32 s32; typedef __u32 u32; typedef __s64 s64; typedef __u64 u64;
typedef __u16 __be16; typedef __u32 __be32; typedef __u64 __be64;
typedef __u16 __le16; typedef __u32 __le32; typedef __u64 __le64;
typedef __u16 __sum16; typedef __u32 __wsum; typedef unsigned int __poll_t;
typedef _Bool bool;
enum { false = 0, true = 1 };
typedef unsigned long size_t;
typedef long ssize_t;
typedef unsigned long uintptr_t;
#define __aligned_u64 __u64 __attribute__((aligned(8)))
#define __aligned_be64 __be64 __attribute__((aligned(8)))
#define __aligned_le64 __le64 __attribute__((aligned(8)))
#ifndef NULL
#define NULL ((void *)0)
#endif
"""

STUBS = {
    "include/linux/kconfig.h": "#define CONFIG_BPF_SYSCALL 1\n",
    "include/linux/log2.h": (
        "#define roundup_pow_of_two(n) ((n) <= 1 ? 1UL : (1UL << (64 - __builtin_clzl((unsigned long)(n) - 1))))\n"
    ),
    "include/uapi/linux/bpf.h": "/* BCC brings its own bpf.h */\n",
    "include/linux/types.h": TYPES_H,
}


SHIM_VERSION = 2


class ShimError(MissingCapability):
    """The shim cannot be built here: an environment fault (exit 3) whose message carries the fix."""


def _uapi_roots() -> list[Path]:
    multiarch = getattr(sys.implementation, "_multiarch", "x86_64-linux-gnu")
    return [Path("/usr/include"), Path("/usr/include") / multiarch]


def version_code(release: tuple[int, int, int]) -> int:
    major, minor, patch = release
    return (major << 16) + (minor << 8) + min(patch, 255)


def manifest(release: tuple[int, int, int], arch: str = "x86") -> dict[str, bytes]:
    """Every file of the shim tree and its exact bytes: what is built, and what a cached tree must equal."""
    files = {rel: text.encode() for rel, text in STUBS.items()}
    files[f"arch/{arch}/include/asm/page.h"] = b""
    files["include/linux/version.h"] = (
        f"#define LINUX_VERSION_CODE {version_code(release)}\n"
        "#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))\n"
    ).encode()
    for rel, uapi in UAPI_FILES.items():
        src = next((r / uapi for r in _uapi_roots() if (r / uapi).exists()), None)
        if src is None:
            raise ShimError(f"missing /usr/include/{uapi}: install linux-libc-dev (apt-get install linux-libc-dev)")
        files[rel] = src.read_bytes()
    files[".complete"] = b""
    return files


def tree_name(release: tuple[int, int, int]) -> str:
    return f"headers-shim-v{SHIM_VERSION}-{version_code(release)}"


def ensure(dest: Path, release: tuple[int, int, int], arch: str = "x86") -> Path:
    """The verified shim tree for `release` in the private store under the cache root `dest` (built once),
    returning its root.

    When `dest` cannot be trusted or written (read-only /var/cache, someone else's directory), the
    tree is built in a private 0700 temp directory that is removed when netpath exits.
    """
    from netpath.bpfload import cache as store  # the store imports kernel.cache, which this module does

    files = manifest(release, arch)
    dir_fd = store.open_dir(create=True, root=dest)
    if dir_fd is not None:
        try:
            if _ensure_in(dir_fd, tree_name(release), files):
                return dest / store.SUBDIR / tree_name(release)
        finally:
            os.close(dir_fd)
    return _private_tree(files)


def _ensure_in(dir_fd: int, name: str, files: dict[str, bytes]) -> bool:
    if verify(dir_fd, name, files):
        return True
    try:
        tmp = _build(dir_fd, files)
    except OSError:
        return False
    try:
        # another netpath may have put a good tree in place while we built ours: never pull it away
        if not verify(dir_fd, name, files):
            _discard(dir_fd, name)
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        pass  # lost a race, or a read-only directory: what is there now decides
    _discard(dir_fd, tmp)
    return verify(dir_fd, name, files)


def _build(dir_fd: int, files: dict[str, bytes]) -> str:
    """Write the tree under a fresh, unpredictable name inside dir_fd; returns that name."""
    tmp = cache.temp_name("headers-shim")
    os.mkdir(tmp, TREE_DIR_MODE, dir_fd=dir_fd)
    try:
        root_fd = os.open(tmp, cache.DIR_FLAGS, dir_fd=dir_fd)
        try:
            os.fchmod(root_fd, TREE_DIR_MODE)
            for rel, data in files.items():
                _write_file(root_fd, rel, data)
        finally:
            os.close(root_fd)
    except OSError:
        _discard(dir_fd, tmp)
        raise
    return tmp


def _write_file(root_fd: int, rel: str, data: bytes) -> None:
    *dirs, leaf = rel.split("/")
    fd = os.dup(root_fd)
    try:
        for part in dirs:
            try:
                os.mkdir(part, TREE_DIR_MODE, dir_fd=fd)
                made = True
            except FileExistsError:
                made = False
            sub = os.open(part, cache.DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = sub
            if made:
                os.fchmod(fd, TREE_DIR_MODE)
        out = cache.create_private(fd, leaf, TREE_FILE_MODE)
        try:
            cache.write_all(out, data)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def _discard(dir_fd: int, name: str) -> None:
    try:
        shutil.rmtree(name, dir_fd=dir_fd)  # fd-based on Linux: does not follow planted symlinks
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        os.unlink(name, dir_fd=dir_fd)


def verify(dir_fd: int, name: str, files: dict[str, bytes]) -> bool:
    """True when tree `name` is exactly `files`: same paths, same bytes, no symlinks, every directory and
    file ours and closed to group and others (the store's own rules for its entries)."""
    from netpath.bpfload import cache as store

    try:
        root_fd = os.open(name, cache.DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    seen: set[str] = set()
    try:
        for top, dirnames, filenames, fd in os.fwalk(".", dir_fd=root_fd):
            if not _private_dir(os.fstat(fd)):
                return False
            for dirname in dirnames:
                if stat.S_ISLNK(os.stat(dirname, dir_fd=fd, follow_symlinks=False).st_mode):
                    return False
            for filename in filenames:
                rel = os.path.normpath(os.path.join(top, filename))
                if files.get(rel) is None or store.read_private(fd, filename)[0] != files[rel]:
                    return False
                seen.add(rel)
    except OSError:
        return False
    finally:
        os.close(root_fd)
    return seen == set(files)


def _private_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _private_tree(files: dict[str, bytes]) -> Path:
    """A throwaway tree only this user can reach, removed at exit."""
    try:
        root = Path(tempfile.mkdtemp(prefix="netpath-shim-"))
    except OSError as exc:
        if limits.too_many_files(exc):
            raise ShimError(f"cannot build the BCC header shim: {limits.advice()}") from None
        raise ShimError(f"cannot build the BCC header shim: the cache ({cache.cache_dir()}) is not usable and "
                        f"no private temporary directory can be made ({exc.strerror}): set TMPDIR or "
                        "NETPATH_CACHE to a writable directory") from None
    atexit.register(shutil.rmtree, root, True)
    try:
        root_fd = os.open(root, cache.DIR_FLAGS)
        try:
            for rel, data in files.items():
                _write_file(root_fd, rel, data)
        finally:
            os.close(root_fd)
    except OSError as exc:
        if limits.too_many_files(exc):
            raise ShimError(f"cannot write the BCC header shim in {root}: {limits.advice()}") from None
        raise ShimError(f"cannot write the BCC header shim in {root} ({exc.strerror}): free space there, or set "
                        "TMPDIR or NETPATH_CACHE to a writable directory") from None
    return root
