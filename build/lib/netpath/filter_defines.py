"""The user's packet filters as the numbers bpf/netpath.h compiles in (never as C text)."""

from __future__ import annotations

import struct

from netpath import contract
from netpath.query import Address, Filters

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}

# Entries in bpf/where.c's iface_filter map: one per (netns, ifindex) named by --iface. The CLI refuses
# more (exit 2, naming the limit) instead of failing on the map update after the program loaded.
IFACE_FILTER_CAPACITY = contract.IFACE_FILTER_SLOTS  # the device filter map's size, owned by the contract


def host_words(addr: Address) -> list[int]:
    """The address as the u32 words the kernel holds, read as little-endian integers."""
    raw = addr.packed
    return [struct.unpack_from("<I", raw, i)[0] for i in range(0, len(raw), 4)]


def filter_defines(f: Filters) -> dict[str, int]:
    """The packet filters both programs share (the cgroup filter is drops' own: FILTER_CGROUP)."""
    defines: dict[str, int] = {}
    if f.netns is not None:
        defines["FILTER_NETNS"] = f.netns.inode
    if f.iface_keys:
        defines["FILTER_IFACE"] = 1
    if f.proto is not None:
        defines["FILTER_PROTO"] = PROTO_NUMBERS[f.proto]
    if f.port is not None:
        defines["FILTER_PORT"] = f.port
    if f.host is not None:
        defines["FILTER_HOST_FAMILY"] = f.host.version
        for i, word in enumerate(host_words(f.host)):
            defines[f"FILTER_HOST_W{i}"] = word
    return defines
