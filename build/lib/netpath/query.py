"""The user's filters, validated once (cli/options.py) and carried unchanged to every session.

A `Filters` holds typed values only: a resolved namespace, (netns inode, ifindex)
keys, a parsed address. Sessions put it in their query, `filter_defines()`
turns it into -D numbers, and `report()` gives the start line's plain copy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from netpath import model, netns, untrusted

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Filters:
    netns: netns.Netns | None = None
    ifaces: tuple[str, ...] = ()  # as the user named them, each once
    iface_keys: tuple[tuple[int, int], ...] = ()  # (netns inode, ifindex) of each --iface
    proto: str | None = None
    port: int | None = None
    host: Address | None = None
    cgroup_id: int | None = None  # --cgroup (drops): the receiving socket's cgroup v2 id

    @property
    def narrows_flow(self) -> bool:
        """A port or address filter reads the 5-tuple."""
        return self.port is not None or self.host is not None

    def report(self) -> model.Filters:
        # the names as the kernel has them, shown like every interface name (argv may hold any bytes)
        shown = tuple(untrusted.name(untrusted.raw_bytes(i)) for i in self.ifaces)
        return model.Filters(self.netns.inode if self.netns else None, shown, self.iface_keys, self.proto,
                             self.port, str(self.host) if self.host else None, self.cgroup_id)
