"""Kernel struct offsets for the BPF programs, from BTF, cached per kernel build."""

from __future__ import annotations

import hashlib
from pathlib import Path

from netpath.kernel.btf import BTF, BTFError
from netpath.kernel.cache import cache_dir, cached_json

__all__ = ["FIELDS", "cache_dir", "compute", "load"]

# cflag name -> (struct, member path). The C in bpf/ reads kernel memory only
# through these, so it compiles with no kernel headers at all.
FIELDS: dict[str, tuple[str, str]] = {
    "OFF_SKB_DEV": ("sk_buff", "dev"),
    "OFF_SKB_SK": ("sk_buff", "sk"),
    "OFF_SKB_LEN": ("sk_buff", "len"),
    "OFF_SKB_HEAD": ("sk_buff", "head"),
    "OFF_SKB_PROTOCOL": ("sk_buff", "protocol"),
    "OFF_SKB_NETWORK_HEADER": ("sk_buff", "network_header"),
    "OFF_SKB_TRANSPORT_HEADER": ("sk_buff", "transport_header"),
    "OFF_SKB_SKB_IIF": ("sk_buff", "skb_iif"),
    "OFF_SKB_TSTAMP": ("sk_buff", "tstamp"),
    "OFF_DEV_IFINDEX": ("net_device", "ifindex"),
    "OFF_DEV_ND_NET": ("net_device", "nd_net.net"),
    "OFF_NET_NS_INUM": ("net", "ns.inum"),
    "OFF_NET_COOKIE": ("net", "net_cookie"),  # Linux 5.12+: never reused, unlike the inode
    "OFF_SK_NET": ("sock", "__sk_common.skc_net.net"),
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
    # netpath trace
    "OFF_SKB_DATA": ("sk_buff", "data"),
    "OFF_SKB_NEXT": ("sk_buff", "next"),
    # netpath drops --pcap: where the packet's bytes start and how many are linear
    "OFF_SKB_MAC_HEADER": ("sk_buff", "mac_header"),
    "OFF_SKB_TAIL": ("sk_buff", "tail"),
    # attribution: the socket's inode and cgroup v2 id
    "OFF_SK_STATE": ("sock", "__sk_common.skc_state"),
    "OFF_SK_SOCKET": ("sock", "sk_socket"),
    "OFF_SK_CGROUP": ("sock", "sk_cgrp_data.cgroup"),
    "OFF_CGROUP_KN": ("cgroup", "kn"),
    "OFF_KN_ID": ("kernfs_node", "id"),
    "OFF_SOCKET_INODE": ("socket_alloc", "vfs_inode"),
    "OFF_INODE_INO": ("inode", "i_ino"),
    "OFF_SK_RCVQ": ("sock", "sk_receive_queue"),
    "OFF_SK_RCVQ_PREV": ("sock", "sk_receive_queue.prev"),
    "OFF_NAPI_DEV": ("napi_struct", "dev"),
    "OFF_SK_FAMILY": ("sock", "__sk_common.skc_family"),
    # drops: the namespace of the task reading a UDP socket (a checksum error found at the read)
    "OFF_TASK_NSPROXY": ("task_struct", "nsproxy"),
    "OFF_NSPROXY_NET_NS": ("nsproxy", "net_ns"),
    # drops: an expiring fragment queue's namespace, from its timer (inet_frag_queue.fqdir->net)
    "OFF_TIMER_FUNCTION": ("timer_list", "function"),
    "OFF_FRAGQ_TIMER": ("inet_frag_queue", "timer"),
    "OFF_FRAGQ_FQDIR": ("inet_frag_queue", "fqdir"),
    "OFF_FQDIR_NET": ("fqdir", "net"),
}


def compute(btf: BTF) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, (struct_name, path) in FIELDS.items():
        try:
            info = btf.field(struct_name, path)
        except BTFError:
            continue  # a program that needs it reports the field as missing
        if info.bitfield_size:
            continue
        out[name] = info.offset
        out[name.replace("OFF_", "SIZE_", 1)] = info.size
    return out


MAX_OFFSET = 1 << 20  # no kernel struct netpath reads is anywhere near a megabyte


def valid_cached(value: object) -> bool:
    """What a cache file holds must look like compute()'s output: it becomes -D constants."""
    if not isinstance(value, dict):
        return False
    for name, number in value.items():
        off_name = name.replace("SIZE_", "OFF_", 1) if isinstance(name, str) else None
        if off_name not in FIELDS or type(number) is not int or not 0 <= number < MAX_OFFSET:
            return False
    return all(name.replace("OFF_", "SIZE_", 1) in value for name in value if name.startswith("OFF_"))


def load(btf_path: Path, use_cache: bool = True) -> dict[str, int]:
    """Offsets (and sizes) for every field in FIELDS that this kernel has."""
    fields_digest = hashlib.sha256(repr(sorted(FIELDS.items())).encode()).hexdigest()[:8]
    return dict(cached_json(btf_path, f"offsets-{fields_digest}", lambda blob: compute(BTF(blob)), use_cache,
                            valid=valid_cached))


SpanGroups = dict[str, tuple[tuple[str, ...], int]]

# prefix -> (fields fetched together, the most bytes one read may span)
SHARED_SPANS: SpanGroups = {
    "SKB_SPAN": (("OFF_SKB_PROTOCOL", "OFF_SKB_NETWORK_HEADER", "OFF_SKB_HEAD"), 64),
    "DEV_SPAN": (("OFF_DEV_IFINDEX", "OFF_DEV_ND_NET"), 64),
}


def spans(offsets: dict[str, int], groups: SpanGroups = SHARED_SPANS) -> dict[str, int]:
    """Defines letting C fetch neighbouring fields with one probe read (each read costs ~25 ns)."""
    out: dict[str, int] = {}
    for prefix, (names, limit) in groups.items():
        sizes = [n.replace("OFF_", "SIZE_", 1) for n in names]
        if not all(n in offsets for n in (*names, *sizes)):
            continue
        start = min(offsets[n] for n in names)
        end = max(offsets[n] + offsets[z] for n, z in zip(names, sizes, strict=True))
        if end - start <= limit:
            out[f"{prefix}_OFF"] = start
            out[f"{prefix}_LEN"] = end - start
    return out
