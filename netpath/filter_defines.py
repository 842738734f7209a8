"""The user's packet filters as the numbers bpf/netpath.h compiles in (never as C text)."""

from __future__ import annotations

import ipaddress
import struct

from netpath import contract, netns

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1}

# Entries in bpf/where.c's iface_filter map: one per (netns, ifindex) named by --iface. The CLI refuses
# more (exit 2, naming the limit) instead of failing on the map update after the program loaded.
IFACE_FILTER_CAPACITY = contract.IFACE_FILTER_SLOTS  # the device filter map's size, owned by the contract

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def host_words(addr: Address) -> list[int]:
    """The address as the u32 words the kernel holds, read as little-endian integers."""
    raw = addr.packed
    return [struct.unpack_from("<I", raw, i)[0] for i in range(0, len(raw), 4)]


def filter_defines(ns: netns.Netns | None, iface_keys: list[tuple[int, int]], proto: str | None,
                   port: int | None, host: Address | None) -> dict[str, int]:
    defines: dict[str, int] = {}
    if ns is not None:
        defines["FILTER_NETNS"] = ns.inode
    if iface_keys:
        defines["FILTER_IFACE"] = 1
    if proto is not None:
        defines["FILTER_PROTO"] = PROTO_NUMBERS[proto]
    if port is not None:
        defines["FILTER_PORT"] = port
    if host is not None:
        defines["FILTER_HOST_FAMILY"] = host.version
        for i, word in enumerate(host_words(host)):
            defines[f"FILTER_HOST_W{i}"] = word
    return defines
