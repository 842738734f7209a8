"""Giving freed heap back to the kernel, so a long run's RSS reflects what it still holds."""

from __future__ import annotations

import ctypes


def trim_heap() -> None:
    """glibc keeps freed arenas for reuse; malloc_trim returns them (a no-op elsewhere)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
