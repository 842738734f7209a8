"""Checks every command makes before touching BPF."""

from __future__ import annotations

from netpath.errors import MissingCapability
from netpath.kernel import container_env, limits
from netpath.kernel.caps import env_path, missing_capability
from netpath.kernel.facts import KernelFacts


def require_capability(locations: bool = False, command: str | None = None) -> None:
    """locations: the run names kernel code addresses (drop locations, stacks), which takes CAP_SYSLOG.
    command: in a container, also every capability and mount netpath/privileges.py lists for it."""
    limits.raise_soft_limit()
    fix = limits.too_low() or missing_capability(locations=locations)
    if fix:
        raise MissingCapability(fix)
    if command is not None and container_env.in_container():
        from netpath.kernel import cache
        from netpath.kernel.cgroups import find_mount

        lacking = container_env.problems(command, cgroup_mounted=find_mount() is not None,
                                         cache_dir=cache.cache_dir())
        if lacking:
            raise MissingCapability(f"netpath {command} in a container needs " + "; ".join(lacking))


def kernel_root() -> str:
    """NETPATH_ROOT (a captured kernel tree) when trustworthy, else the running kernel."""
    return str(env_path("NETPATH_ROOT") or "/")


def load_facts(facts: KernelFacts | None = None) -> KernelFacts:
    """The kernel's facts, read once per run, with tracefs mounted; pass the facts already loaded, if any."""
    if facts is None:
        facts = KernelFacts.load(kernel_root(), mount_tracefs=True)
    else:
        facts.mount_tracefs()
    if facts.tracefs is None:
        raise MissingCapability("tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing")
    return facts
