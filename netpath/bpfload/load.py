"""Load a build into the kernel through libbpf: maps, relocations, programs, attach.

A build (build.py's output, cached by cache.py) is map layouts plus each function's bytecode with its
map references as map indexes. Here the maps are created, each reference is pointed at its map's fd,
and a function is loaded as the kind its run needs: a raw tracepoint, a BTF-typed raw tracepoint
(tp_btf, with the tracepoint's BTF id) or a kprobe. Attaching makes a link whose fd detaches on close.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import os
import struct
from pathlib import Path
from typing import Any

from netpath.bpfload import libbpf

MAP_TYPES = frozenset({libbpf.MAP_TYPE_HASH, libbpf.MAP_TYPE_ARRAY, libbpf.MAP_TYPE_PERF_EVENT_ARRAY,
                       libbpf.MAP_TYPE_PERCPU_HASH, libbpf.MAP_TYPE_PERCPU_ARRAY, libbpf.MAP_TYPE_STACK_TRACE,
                       libbpf.MAP_TYPE_LRU_HASH, libbpf.MAP_TYPE_LRU_PERCPU_HASH, libbpf.MAP_TYPE_RINGBUF})
PERCPU_TYPES = frozenset({libbpf.MAP_TYPE_PERCPU_HASH, libbpf.MAP_TYPE_PERCPU_ARRAY,
                          libbpf.MAP_TYPE_LRU_PERCPU_HASH})
ARRAY_TYPES = frozenset({libbpf.MAP_TYPE_ARRAY, libbpf.MAP_TYPE_PERCPU_ARRAY})
LD_IMM64 = 0x18
PSEUDO_MAP_FD = 1
_INDEX = struct.Struct("<I")


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def percpu_stride(value_size: int) -> int:
    """The kernel lays out a per-CPU value once per possible CPU, each rounded up to 8 bytes."""
    return (value_size + 7) & ~7


# ---------------------------------------------------------------- maps


class Map:
    """One BPF map by fd. Keys and values are raw bytes; a per-CPU value comes back one per possible CPU."""

    def __init__(self, name: str, map_type: int, key_size: int, value_size: int, max_entries: int,
                 flags: int, fd: int | None = None, ncpu: int | None = None) -> None:
        self.name, self.type, self.key_size, self.value_size = name, map_type, key_size, value_size
        self.max_entries = max_entries
        self.percpu = map_type in PERCPU_TYPES
        self.ncpu = (ncpu or libbpf.possible_cpus()) if self.percpu else 1
        self.stride = percpu_stride(value_size) if self.percpu else value_size
        self.batch_ok = True  # until the kernel refuses a batch for this map (read.py)
        self.fd = fd if fd is not None else _check(
            libbpf.map_create(map_type, name, key_size, value_size, max_entries, flags), f"map {name}")

    @property
    def slot(self) -> int:
        """Bytes of one element's value as the kernel hands it out (every CPU's, for a per-CPU map)."""
        return self.stride * self.ncpu

    def split(self, raw: bytes) -> list[bytes]:
        """One element's value bytes -> one value per CPU (a single one for a plain map)."""
        return [raw[i * self.stride:i * self.stride + self.value_size] for i in range(self.ncpu)]

    def lookup_raw(self, key: bytes) -> bytes | None:
        buf = ctypes.create_string_buffer(self.slot)
        ret = libbpf.map_lookup(self.fd, key, buf)
        if ret == -libbpf.ENOENT:
            return None
        _check(ret, f"lookup in {self.name}")
        return buf.raw

    def lookup(self, key: bytes) -> bytes | None:
        raw = self.lookup_raw(key)
        return None if raw is None else raw[:self.value_size]

    def lookup_percpu(self, key: bytes) -> list[bytes] | None:
        raw = self.lookup_raw(key)
        return None if raw is None else self.split(raw)

    def update(self, key: bytes, value: bytes) -> None:
        _check(libbpf.map_update(self.fd, key, value), f"update of {self.name}")

    def zero(self, key: bytes) -> None:
        self.update(key, bytes(self.slot))

    def delete(self, key: bytes) -> bool:
        ret = libbpf.map_delete(self.fd, key)
        if ret == -libbpf.ENOENT:
            return False
        _check(ret, f"delete in {self.name}")
        return True

    def keys(self) -> list[bytes]:
        out: list[bytes] = []
        nxt = ctypes.create_string_buffer(self.key_size)
        key: bytes | None = None
        while libbpf.map_next_key(self.fd, key, nxt) == 0:
            key = nxt.raw
            out.append(key)
        return out

    def clear(self) -> None:
        """Arrays are zeroed slot by slot (their slots cannot be deleted); hashes lose every key."""
        if self.type in ARRAY_TYPES:
            for i in range(self.max_entries):
                self.zero(_INDEX.pack(i))
        else:
            for key in self.keys():
                self.delete(key)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------- relocations


def unrelocate(name: str, code: bytes, fd_index: dict[int, int]) -> dict[str, Any]:
    """A function's bytecode with every map-fd load zeroed and recorded as (instruction, map index)."""
    insns = bytearray(code)
    relocs = []
    i = 0
    while i < len(insns) // 8:
        op, regs = insns[i * 8], insns[i * 8 + 1]
        if op == LD_IMM64:
            src = regs >> 4
            if src == PSEUDO_MAP_FD:
                fd = int.from_bytes(insns[i * 8 + 4:i * 8 + 8], "little", signed=True)
                if fd not in fd_index:
                    raise ValueError(f"{name}: instruction {i} loads fd {fd}, which is no map of this program")
                relocs.append([i, fd_index[fd]])
                insns[i * 8 + 4:i * 8 + 8] = bytes(4)
            elif src:
                raise ValueError(f"{name}: instruction {i}: ld_imm64 kind {src} is not supported")
            i += 2  # ld_imm64 takes two slots
        else:
            i += 1
    return {"name": name, "insns": base64.b64encode(bytes(insns)).decode(), "relocs": relocs}


def relocate(fn: dict[str, Any], map_fds: list[int]) -> bytes:
    """The function's bytecode with each recorded map reference pointing at its map's fd."""
    insns = bytearray(base64.b64decode(fn["insns"]))
    for i, index in fn["relocs"]:
        insns[i * 8 + 4:i * 8 + 8] = map_fds[index].to_bytes(4, "little", signed=True)
    return bytes(insns)


# ---------------------------------------------------------------- programs


def verifier_complaint(log: str) -> str:
    """The verifier's last words: the line before 'processed N insns', else the last non-empty line."""
    lines = [line for line in log.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-2] if len(lines) > 1 and lines[-1].startswith("processed") else lines[-1]


def load_program(prog_type: int, name: str, license_: str, insns: bytes, kern_version: int = 0,
                 attach_type: int = 0, btf_id: int = 0) -> int:
    """The program's fd; OSError with the kernel's errno and the verifier's complaint when refused."""
    fd, log = libbpf.prog_load(prog_type, name, license_, insns, kern_version, attach_type, btf_id)
    if fd < 0:
        why = verifier_complaint(log) or libbpf.last_message()
        raise OSError(-fd, f"{os.strerror(-fd)}{': ' + why if why else ''}")
    return fd


def attach_raw_tracepoint(prog_fd: int, tracepoint: str) -> int:
    return _check(libbpf.raw_tracepoint_open(tracepoint, prog_fd), f"raw tracepoint {tracepoint}")


def attach_tp_btf(prog_fd: int, tracepoint: str) -> int:
    """A tp_btf program (its tracepoint named by the BTF id it was loaded with) through a link."""
    return _check(libbpf.link_create(prog_fd, 0, libbpf.TRACE_RAW_TP), f"tp_btf {tracepoint}: attach")


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to PERF_ATTR_SIZE_VER5 (perf's, not bpf's: libbpf opens kprobe events only
    for programs of its own objects); flags holds the bitfield word, left zero: the event starts enabled."""

    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64),
                ("branch_sample_type", ctypes.c_uint64), ("sample_regs_user", ctypes.c_uint64),
                ("sample_stack_user", ctypes.c_uint32), ("clockid", ctypes.c_int32),
                ("sample_regs_intr", ctypes.c_uint64), ("aux_watermark", ctypes.c_uint32),
                ("sample_max_stack", ctypes.c_uint16), ("_reserved", ctypes.c_uint16)]


_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(os.uname().machine, -1)
_PERF_FLAG_FD_CLOEXEC = 8
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")


def _perf_event_open(attr: PerfEventAttr) -> int:
    if _SYS_PERF_EVENT_OPEN < 0:
        return -38  # ENOSYS: an architecture this table does not know
    attr.size = ctypes.sizeof(PerfEventAttr)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(_SYS_PERF_EVENT_OPEN), ctypes.byref(attr), ctypes.c_long(-1),
                       ctypes.c_long(0), ctypes.c_long(-1), ctypes.c_long(_PERF_FLAG_FD_CLOEXEC))
    return int(ret) if ret >= 0 else -ctypes.get_errno()


def attach_kprobe(prog_fd: int, symbol: str, is_return: bool) -> tuple[int, int]:
    """A kprobe event from the kprobe PMU (Linux 4.17+) with the program linked to it (BPF_PERF_EVENT,
    Linux 5.15+): (link fd, event fd); closing both detaches."""
    try:
        pmu_type = int((KPROBE_PMU / "type").read_text())
        bit = int((KPROBE_PMU / "format/retprobe").read_text().strip().removeprefix("config:")) if is_return else 0
    except (OSError, ValueError):
        raise OSError(95, "this kernel has no kprobe PMU (CONFIG_KPROBES is off)") from None
    name = ctypes.create_string_buffer(symbol.encode())
    attr = PerfEventAttr(type=pmu_type, config=(1 << bit) if is_return else 0, config1=ctypes.addressof(name),
                         sample_period=1, wakeup_events=1)
    event = _check(_perf_event_open(attr), f"kprobe {symbol}")
    link = libbpf.link_create(prog_fd, event, libbpf.PERF_EVENT)
    if link < 0:
        os.close(event)
        raise OSError(-link, f"kprobe {symbol}: {os.strerror(-link)}")
    return link, event


# ---------------------------------------------------------------- tp_btf: which BTF ids, and does it load

# the tracepoints netpath may attach as tp_btf (the cache holds these)
TP_BTF_TRACEPOINTS = ("kfree_skb", "netif_receive_skb", "sk_data_ready", "sock_recv_length")


def tp_btf_ids(btf_path: Path, tracepoints: tuple[str, ...]) -> dict[str, int]:
    """btf_trace_<tp> typedef ids from vmlinux BTF (0: none), cached per kernel build."""
    from netpath.kernel.btf import BTF
    from netpath.kernel.cache import cached_json

    def compute(blob: bytes) -> dict[str, int]:
        btf = BTF(blob)
        return {tp: btf.typedef_id(f"btf_trace_{tp}") or 0 for tp in TP_BTF_TRACEPOINTS}

    def valid(v: object) -> bool:
        return isinstance(v, dict) and all(isinstance(v.get(tp), int) for tp in TP_BTF_TRACEPOINTS)

    ids = cached_json(btf_path, "tp-btf-ids", compute, valid=valid)
    return {tp: int(ids.get(tp, 0)) for tp in tracepoints}


def tp_btf_allowed(btf_path: Path) -> tuple[bool, str]:
    """Does this kernel load a BTF-typed raw tracepoint program (tp_btf) for netpath? A two-instruction
    program (r0 = 0; exit) on skb:kfree_skb is loaded and closed, never attached. Needs CAP_BPF."""
    try:
        btf_id = tp_btf_ids(btf_path, ("kfree_skb",))["kfree_skb"]
    except (OSError, ValueError) as exc:
        return False, f"BTF unreadable: {exc}"
    if not btf_id:
        return False, "no btf_trace_kfree_skb in this kernel's BTF"
    insns = struct.pack("<QQ", 0x00000000000000B7, 0x0000000000000095)  # mov r0, 0; exit
    try:
        fd = load_program(libbpf.PROG_TYPE_TRACING, "np_tp_btf_probe", "GPL", insns, 0, libbpf.TRACE_RAW_TP, btf_id)
    except OSError as exc:
        return False, f"the kernel refuses tp_btf programs: {exc.strerror or exc}"
    os.close(fd)
    return True, "BTF-typed raw tracepoints load: direct reads of kernel structs, no probe-read helper"


def _packet_load_probe(head_off: int) -> bytes:
    """skb = ctx[0]; head = skb->head; r0 = *(u8 *)head; r0 = 0; exit."""
    ldx_dw, ldx_b, mov_k, exit_ = 0x79, 0x71, 0xB7, 0x95
    return b"".join(struct.pack("<BBhi", op, regs, off, 0) for op, regs, off in (
        (ldx_dw, 0x11, 0), (ldx_dw, 0x11, head_off), (ldx_b, 0x10, 0), (mov_k, 0x00, 0), (exit_, 0x00, 0)))


def tp_btf_packet_loads(btf_path: Path, head_off: int) -> bool:
    """Does this kernel's verifier let a tp_btf program load packet bytes straight through skb->head? Since
    Linux 6.17 (kernel/bpf/verifier.c, commit 2d5c91e1cc14 "rdonly_untrusted_mem for btf id walk pointer
    leafs") a typed struct's pointer to a scalar type, as sk_buff.head is, reads as read-only untrusted
    memory a program may load from at any offset; before, it is a plain number and the load is refused. A
    five-instruction program on skb:kfree_skb doing such a load is loaded and closed, never attached. The
    verdict is cached per kernel build; none is kept when the test could not run (no CAP_BPF, no tp_btf)."""
    from netpath.errors import MissingCapability
    from netpath.kernel.cache import cached_json

    if not 0 <= head_off < 1 << 15:
        return False

    def compute(_blob: bytes) -> bool:
        btf_id = tp_btf_ids(btf_path, ("kfree_skb",))["kfree_skb"]
        if not btf_id:
            return False
        try:
            fd = load_program(libbpf.PROG_TYPE_TRACING, "np_pkt_probe", "GPL", _packet_load_probe(head_off), 0,
                              libbpf.TRACE_RAW_TP, btf_id)
        except OSError as exc:
            if exc.errno == errno.EACCES:  # the verifier's answer: the load through head is refused
                return False
            raise  # no verdict: not kept
        os.close(fd)
        return True

    try:
        return bool(cached_json(btf_path, "tp-btf-packet-loads", compute, valid=lambda v: isinstance(v, bool)))
    except (OSError, ValueError, MissingCapability):
        return False
