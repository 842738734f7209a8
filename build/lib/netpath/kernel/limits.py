"""The open-file limit: every BPF map, program, attached hook and per-CPU perf buffer is a descriptor."""

from __future__ import annotations

import errno
import os
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


def fds_needed() -> int:
    """A floor below which a run cannot work: measured here, trace --stages all failed at 36 descriptors
    and ran at 40 on 2 CPUs; perf buffers take more per CPU."""
    return max(64, 32 + 8 * (os.cpu_count() or 1))


def too_low() -> str | None:
    """The fix, when even the hard open-file limit is below what netpath needs; None when it is enough."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= fds_needed():
        return None
    return advice()


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
