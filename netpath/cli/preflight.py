"""Checks every command makes before touching BPF."""

from __future__ import annotations

import os

from netpath.errors import MissingCapability
from netpath.kernel.caps import missing_capability
from netpath.kernel.facts import KernelFacts


def require_capability() -> None:
    fix = missing_capability()
    if fix:
        raise MissingCapability(fix)


def load_facts() -> KernelFacts:
    facts = KernelFacts.load(os.environ.get("NETPATH_ROOT", "/"), mount_tracefs=True)
    if facts.tracefs is None:
        raise MissingCapability("tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing")
    return facts
