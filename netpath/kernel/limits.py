"""The open-file limit: every BPF map, program, attached hook and per-CPU perf buffer is a descriptor."""

from __future__ import annotations

import errno
import resource

# what `netpath trace --stages all` holds open here (measured: it fails at 32, runs at 48); more with CPUs
FDS_WANTED = 1024


def raise_soft_limit() -> None:
    """Raise the soft RLIMIT_NOFILE towards the hard one (any process may): a low soft limit is no reason
    to fail."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FDS_WANTED if hard == resource.RLIM_INFINITY else min(FDS_WANTED, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError):
            pass


def too_many_files(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)) or (
        "Too many open files" in str(exc))


def advice() -> str:
    """The real cause of EMFILE and its fix, with this process's limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    show = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    return (f"too many open files: the open-file limit (RLIMIT_NOFILE) is {soft} (hard {show}), and netpath "
            "holds a descriptor per BPF map, program, hook and per-CPU perf buffer: raise it, e.g. "
            "ulimit -n 1024")
