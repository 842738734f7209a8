"""Kernel struct offsets for the BPF programs, from BTF, cached per kernel build."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from netpath.kernel.btf import BTF, BTFError

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
    "OFF_SK_NET": ("sock", "__sk_common.skc_net.net"),
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol"),
    # netpath trace
    "OFF_SKB_DATA": ("sk_buff", "data"),
    "OFF_SK_RCVQ": ("sock", "sk_receive_queue"),
    "OFF_SK_RCVQ_PREV": ("sock", "sk_receive_queue.prev"),
    "OFF_NAPI_DEV": ("napi_struct", "dev"),
    "OFF_SK_FAMILY": ("sock", "__sk_common.skc_family"),
}

CACHE_VERSION = 2


def cache_dir() -> Path:
    if os.geteuid() == 0:
        return Path(os.environ.get("NETPATH_CACHE", "/var/cache/netpath"))
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("NETPATH_CACHE", Path(base) / "netpath"))


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


def load(btf_path: Path, use_cache: bool = True) -> dict[str, int]:
    """Offsets (and sizes) for every field in FIELDS that this kernel has."""
    blob = btf_path.read_bytes()
    # the field list is part of the key: adding a field must not reuse an older cache file
    digest = hashlib.sha256(blob + json.dumps(FIELDS, sort_keys=True).encode()).hexdigest()[:24]
    cache_file = cache_dir() / f"offsets-v{CACHE_VERSION}-{digest}.json"
    if use_cache:
        try:
            return dict(json.loads(cache_file.read_text()))
        except (OSError, ValueError):
            pass
    offsets = compute(BTF(blob))
    if use_cache:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(offsets, sort_keys=True))
            tmp.replace(cache_file)
        except OSError:
            pass
    return offsets
