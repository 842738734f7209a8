"""A minimal kernel header tree for BCC on kernels that ship no headers.

BCC insists on a kernel build directory for its own helper headers. netpath's
C includes no kernel headers (struct fields come from BTF offsets), so a few
stub files plus uapi headers from linux-libc-dev satisfy it, and compile in a
fraction of the time real headers take.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

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


class ShimError(Exception):
    pass


def _uapi_roots() -> list[Path]:
    multiarch = getattr(sys.implementation, "_multiarch", "x86_64-linux-gnu")
    return [Path("/usr/include"), Path("/usr/include") / multiarch]


def version_code(release: tuple[int, int, int]) -> int:
    major, minor, patch = release
    return (major << 16) + (minor << 8) + min(patch, 255)


def ensure(dest: Path, release: tuple[int, int, int], arch: str = "x86") -> Path:
    """Create (once) the shim tree for `release` under `dest`, returning its root."""
    root = dest / f"headers-shim-v{SHIM_VERSION}-{version_code(release)}"
    marker = root / ".complete"
    if marker.exists():
        return root
    tmp = dest / f".{root.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, text in STUBS.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp / f"arch/{arch}/include/asm").mkdir(parents=True, exist_ok=True)
    (tmp / f"arch/{arch}/include/asm/page.h").write_text("")
    (tmp / "include/linux/version.h").write_text(
        f"#define LINUX_VERSION_CODE {version_code(release)}\n"
        "#define KERNEL_VERSION(a, b, c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))\n"
    )
    for rel, uapi in UAPI_FILES.items():
        src = next((r / uapi for r in _uapi_roots() if (r / uapi).exists()), None)
        if src is None:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ShimError(f"missing /usr/include/{uapi}: install linux-libc-dev (apt-get install linux-libc-dev)")
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)
    (tmp / ".complete").write_text("")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root
