"""Read what a loaded program wrote: whole maps in batches, and its ring and perf buffers.

A map is read with bpf_map_lookup_batch (one syscall per CHUNK elements, not two per key); where the
kernel or the map type refuses batches (EINVAL before Linux 5.6, ENOTSUPP for a type without them) the
map falls back to walking its keys and reading each, and remembers that. Rings are libbpf's: its
ring_buffer and perf_buffer readers do the memory ordering, wraparound, busy and discarded records and
the lost-record counts (tests/live/test_bpfload_live.py: wraparound, discarded records, a full ring, perf
losses; tests/live/test_ringbuf_busy_live.py: busy records from two CPUs).
"""

from __future__ import annotations

import ctypes
import os

from netpath.bpfload import libbpf
from netpath.bpfload.libbpf import PerfBuffer, RingBuffer
from netpath.bpfload.load import Map

__all__ = ["CHUNK", "PerfBuffer", "RingBuffer", "items", "percpu_items"]

CHUNK = 256  # elements per batch call: one call reads an idle map; a bucket larger than this doubles it
REFUSED = frozenset({libbpf.EINVAL, libbpf.ENOTSUPP, libbpf.EOPNOTSUPP})
_CHUNK_MAX = 1 << 16


def items(m: Map, delete: bool = False) -> dict[bytes, bytes]:
    """Every element: key -> its value bytes (every CPU's, for a per-CPU map: Map.split them). With
    `delete`, each element read is removed in the same call (lookup_and_delete_batch), so an element the
    program bumps between the read and the delete is never lost."""
    if m.batch_ok:
        got = _batched(m, delete)
        if got is not None:
            return got
        m.batch_ok = False  # refused once: this map (type, kernel) never will
    return _per_key(m, delete)


def _batched(m: Map, delete: bool) -> dict[bytes, bytes] | None:
    """None when the kernel refuses batches for this map before any element moved."""
    out: dict[bytes, bytes] = {}
    chunk = min(CHUNK, max(m.max_entries, 1))
    token = max(m.key_size, 8)  # the kernel's batch position: a bucket index (hash) or a key (array)
    in_batch: ctypes.Array | None = None
    out_batch = ctypes.create_string_buffer(token)
    while True:
        keys = ctypes.create_string_buffer(chunk * m.key_size)
        values = ctypes.create_string_buffer(chunk * m.slot)
        count = ctypes.c_uint32(chunk)
        ret = libbpf.map_batch(m.fd, delete, in_batch, out_batch, keys, values, count)
        if ret < 0 and -ret in REFUSED and in_batch is None and not out:
            return None
        if ret == -libbpf.ENOSPC and chunk < _CHUNK_MAX:  # one bucket holds more than a chunk
            chunk *= 2
            continue
        if ret < 0 and ret != -libbpf.ENOENT:
            raise OSError(-ret, f"batch read of {m.name}: {os.strerror(-ret)}")
        kraw, vraw = keys.raw, values.raw
        for i in range(count.value):
            out[kraw[i * m.key_size:(i + 1) * m.key_size]] = vraw[i * m.slot:(i + 1) * m.slot]
        if ret == -libbpf.ENOENT:  # the end of the map
            return out
        in_batch = ctypes.create_string_buffer(out_batch.raw, token)


def _per_key(m: Map, delete: bool) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key in m.keys():
        raw = m.lookup_raw(key)
        if raw is None:  # gone between the walk and the read
            continue
        if delete and not m.delete(key):
            continue  # another reader took it
        out[key] = raw
    return out


def percpu_items(m: Map, delete: bool = False) -> dict[bytes, list[bytes]]:
    """A per-CPU map: key -> one value per possible CPU."""
    return {key: m.split(raw) for key, raw in items(m, delete).items()}
