"""bpf(2) and perf_event_open(2) from Python: maps, program loads, attaches and perf rings, no libbcc.

netpath compiles with BCC once (netpath/bpf.py, in a short-lived child) and
loads the resulting bytecode with these calls, so the long-lived process
never maps LLVM or holds the compiler's heap. Every call returns what the
kernel said: an fd, or an OSError carrying its errno.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import struct
from collections.abc import Callable
from pathlib import Path

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, -1)
_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(os.uname().machine, -1)

MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 0, 1, 2, 3, 4
PROG_LOAD = 5
RAW_TRACEPOINT_OPEN = 17

MAP_TYPE_HASH, MAP_TYPE_ARRAY, MAP_TYPE_PERF_EVENT_ARRAY = 1, 2, 4
MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, MAP_TYPE_STACK_TRACE = 5, 6, 7
MAP_TYPE_LRU_HASH, MAP_TYPE_LRU_PERCPU_HASH = 9, 10
MAP_TYPE_RINGBUF = 27
MAP_TYPES = frozenset({MAP_TYPE_HASH, MAP_TYPE_ARRAY, MAP_TYPE_PERF_EVENT_ARRAY, MAP_TYPE_PERCPU_HASH,
                       MAP_TYPE_PERCPU_ARRAY, MAP_TYPE_STACK_TRACE, MAP_TYPE_LRU_HASH, MAP_TYPE_LRU_PERCPU_HASH,
                       MAP_TYPE_RINGBUF})
PERCPU_TYPES = frozenset({MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, MAP_TYPE_LRU_PERCPU_HASH})
ARRAY_TYPES = frozenset({MAP_TYPE_ARRAY, MAP_TYPE_PERCPU_ARRAY})

PROG_TYPE_KPROBE = 2
PROG_TYPE_RAW_TRACEPOINT = 17
PROG_TYPE_TRACING = 26
TRACE_RAW_TP = 23

_ENOENT = 2


class MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * 16), ("_rest", ctypes.c_uint8 * 64)]


class MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class ProgLoadAttr(ctypes.Structure):
    """union bpf_attr for BPF_PROG_LOAD, up to attach_prog_fd (uapi/linux/bpf.h); zero beyond."""

    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
                ("expected_attach_type", ctypes.c_uint32), ("prog_btf_fd", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
                ("func_info_cnt", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
                ("line_info", ctypes.c_uint64), ("line_info_cnt", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32),
                ("attach_prog_fd", ctypes.c_uint32), ("_rest", ctypes.c_uint8 * 64)]


class RawTpOpenAttr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("cookie", ctypes.c_uint64)]


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to PERF_ATTR_SIZE_VER5 (112 bytes); flags holds the bitfield word."""

    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32), ("config", ctypes.c_uint64),
                ("sample_period", ctypes.c_uint64), ("sample_type", ctypes.c_uint64),
                ("read_format", ctypes.c_uint64), ("flags", ctypes.c_uint64), ("wakeup_events", ctypes.c_uint32),
                ("bp_type", ctypes.c_uint32), ("config1", ctypes.c_uint64), ("config2", ctypes.c_uint64),
                ("branch_sample_type", ctypes.c_uint64), ("sample_regs_user", ctypes.c_uint64),
                ("sample_stack_user", ctypes.c_uint32), ("clockid", ctypes.c_int32),
                ("sample_regs_intr", ctypes.c_uint64), ("aux_watermark", ctypes.c_uint32),
                ("sample_max_stack", ctypes.c_uint16), ("_reserved", ctypes.c_uint16)]


_LIBC: list[ctypes.CDLL] = []


def _lib() -> ctypes.CDLL:
    if not _LIBC:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
        _LIBC.append(libc)
    return _LIBC[0]


def sys_bpf(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(2): the fd or 0, or -errno."""
    if _SYS_BPF < 0:
        return -38  # ENOSYS: an architecture this table does not know
    ret = _lib().syscall(ctypes.c_long(_SYS_BPF), ctypes.c_long(cmd), ctypes.byref(attr),
                         ctypes.c_long(ctypes.sizeof(attr)))
    return int(ret) if ret >= 0 else -ctypes.get_errno()


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


def _cpus(path: str) -> list[int]:
    """The CPUs in a sysfs range list ("0-3,5")."""
    out: list[int] = []
    for part in Path(path).read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def possible_cpus() -> int:
    return max(_cpus("/sys/devices/system/cpu/possible")) + 1


def online_cpus() -> list[int]:
    return _cpus("/sys/devices/system/cpu/online")


# ---------------------------------------------------------------- maps


class Map:
    """One BPF map by fd. Keys and values are raw bytes; per-CPU values come back one per possible CPU."""

    def __init__(self, name: str, map_type: int, key_size: int, value_size: int, max_entries: int,
                 flags: int) -> None:
        self.name, self.type, self.key_size, self.value_size = name, map_type, key_size, value_size
        self.max_entries = max_entries
        attr = MapCreateAttr(map_type=map_type, key_size=key_size, value_size=value_size,
                             max_entries=max_entries, map_flags=flags, map_name=name.encode()[:15])
        self.fd = _check(sys_bpf(MAP_CREATE, attr), f"map {name}")
        self.ncpu = possible_cpus() if map_type in PERCPU_TYPES else 1
        self._stride = (value_size + 7) & ~7 if map_type in PERCPU_TYPES else value_size

    def _elem(self, cmd: int, key: bytes | None, value: ctypes.Array | None, flags: int = 0) -> int:
        kbuf = ctypes.create_string_buffer(key, len(key)) if key is not None else None
        attr = MapElemAttr(map_fd=self.fd, key=ctypes.addressof(kbuf) if kbuf is not None else 0,
                           value=ctypes.addressof(value) if value is not None else 0, flags=flags)
        return sys_bpf(cmd, attr)

    def lookup_raw(self, key: bytes) -> bytes | None:
        buf = ctypes.create_string_buffer(self._stride * self.ncpu)
        ret = self._elem(MAP_LOOKUP_ELEM, key, buf)
        if ret == -_ENOENT:
            return None
        _check(ret, f"lookup in {self.name}")
        return buf.raw

    def lookup(self, key: bytes) -> bytes | None:
        raw = self.lookup_raw(key)
        return None if raw is None else raw[:self.value_size]

    def lookup_percpu(self, key: bytes) -> list[bytes] | None:
        raw = self.lookup_raw(key)
        if raw is None:
            return None
        return [raw[i * self._stride:i * self._stride + self.value_size] for i in range(self.ncpu)]

    def update(self, key: bytes, value: bytes) -> None:
        buf = ctypes.create_string_buffer(value, len(value))
        _check(self._elem(MAP_UPDATE_ELEM, key, buf), f"update of {self.name}")

    def zero(self, key: bytes) -> None:
        self.update(key, bytes(self._stride * self.ncpu))

    def delete(self, key: bytes) -> bool:
        ret = self._elem(MAP_DELETE_ELEM, key, None)
        if ret == -_ENOENT:
            return False
        _check(ret, f"delete in {self.name}")
        return True

    def keys(self) -> list[bytes]:
        out: list[bytes] = []
        nxt = ctypes.create_string_buffer(self.key_size)
        key: bytes | None = None
        while True:
            if self._elem(MAP_GET_NEXT_KEY, key, nxt) < 0:
                return out
            key = nxt.raw
            out.append(key)

    def clear(self) -> None:
        """Arrays are zeroed slot by slot (their slots cannot be deleted); hashes lose every key."""
        if self.type in ARRAY_TYPES:
            for i in range(self.max_entries):
                self.zero(struct.pack("<I", i))
        else:
            for key in self.keys():
                self.delete(key)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------- programs


def prog_load(prog_type: int, insns: bytes, name: str, license_: str, kern_version: int = 0,
              attach_type: int = 0, btf_id: int = 0) -> tuple[int, str]:
    """(fd or -errno, the verifier's last words on failure)."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license_.encode())
    attr = ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=ctypes.addressof(code),
                        license=ctypes.addressof(lic), kern_version=kern_version, prog_name=name.encode()[:15],
                        expected_attach_type=attach_type, attach_btf_id=btf_id)
    fd = sys_bpf(PROG_LOAD, attr)
    if fd >= 0:
        return fd, ""
    log = ctypes.create_string_buffer(1 << 20)  # again with the log, only to say why
    attr.log_level, attr.log_size, attr.log_buf = 1, len(log), ctypes.addressof(log)
    retry = sys_bpf(PROG_LOAD, attr)
    if retry >= 0:
        os.close(retry)
    lines = [line for line in log.value.decode(errors="replace").splitlines() if line.strip()]
    return fd, lines[-2 if len(lines) > 1 and lines[-1].startswith("processed") else -1] if lines else ""


def raw_tracepoint_open(prog_fd: int, tracepoint: str | None) -> int:
    """BPF_RAW_TRACEPOINT_OPEN: the link fd (closing it detaches), or -errno. No name: tp_btf (BTF id)."""
    name = ctypes.create_string_buffer(tracepoint.encode()) if tracepoint else None
    return sys_bpf(RAW_TRACEPOINT_OPEN, RawTpOpenAttr(name=ctypes.addressof(name) if name else 0, prog_fd=prog_fd))


_PERF_FLAG_FD_CLOEXEC = 8
_PERF_EVENT_IOC_ENABLE = 0x2400
_PERF_EVENT_IOC_SET_BPF = 0x40042408


def perf_event_open(attr: PerfEventAttr, cpu: int, pid: int = -1) -> int:
    attr.size = ctypes.sizeof(PerfEventAttr)
    ret = _lib().syscall(ctypes.c_long(_SYS_PERF_EVENT_OPEN), ctypes.byref(attr), ctypes.c_long(pid),
                         ctypes.c_long(cpu), ctypes.c_long(-1), ctypes.c_long(_PERF_FLAG_FD_CLOEXEC))
    return int(ret) if ret >= 0 else -ctypes.get_errno()


def _ioctl(fd: int, request: int, arg: int) -> int:
    return 0 if _lib().ioctl(fd, request, arg) == 0 else -ctypes.get_errno()


def attach_kprobe(prog_fd: int, symbol: str, is_return: bool) -> int:
    """A kprobe through the kprobe PMU (Linux 4.17+): the perf event fd (closing it detaches)."""
    pmu = Path("/sys/bus/event_source/devices/kprobe")
    try:
        pmu_type = int((pmu / "type").read_text())
        bit = int((pmu / "format/retprobe").read_text().strip().removeprefix("config:")) if is_return else 0
    except (OSError, ValueError):
        raise OSError(95, "this kernel has no kprobe PMU (CONFIG_KPROBES is off)") from None
    name = ctypes.create_string_buffer(symbol.encode())
    attr = PerfEventAttr(type=pmu_type, config=(1 << bit) if is_return else 0, config1=ctypes.addressof(name),
                         sample_period=1, wakeup_events=1)
    fd = _check(perf_event_open(attr, 0), f"kprobe {symbol}")
    for req, arg in ((_PERF_EVENT_IOC_SET_BPF, prog_fd), (_PERF_EVENT_IOC_ENABLE, 0)):
        ret = _ioctl(fd, req, arg)
        if ret < 0:
            os.close(fd)
            raise OSError(-ret, f"kprobe {symbol}: {os.strerror(-ret)}")
    return fd


# ---------------------------------------------------------------- perf buffers

_PERF_TYPE_SOFTWARE = 1
_PERF_COUNT_SW_BPF_OUTPUT = 10
_PERF_SAMPLE_RAW = 1 << 10
_PERF_RECORD_LOST = 2
_PERF_RECORD_SAMPLE = 9
_HEAD = struct.Struct("<Q")
_REC = struct.Struct("<IHH")


class PerfRing:
    """One CPU's perf ring for bpf_perf_event_output: mmap'ed, drained by `drain`."""

    def __init__(self, cpu: int, pages: int) -> None:
        attr = PerfEventAttr(type=_PERF_TYPE_SOFTWARE, config=_PERF_COUNT_SW_BPF_OUTPUT,
                             sample_type=_PERF_SAMPLE_RAW, sample_period=1, wakeup_events=1)
        self.fd = _check(perf_event_open(attr, cpu), f"perf buffer on CPU {cpu}")
        self.page = mmap.PAGESIZE
        self.size = pages * self.page
        try:
            self.mem = mmap.mmap(self.fd, self.page + self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            _check(_ioctl(self.fd, _PERF_EVENT_IOC_ENABLE, 0), "perf buffer enable")
        except OSError:
            os.close(self.fd)
            raise

    def drain(self, on_event: Callable[[bytes], None], on_lost: Callable[[int], None]) -> None:
        mem, base, size = self.mem, self.page, self.size
        head = _HEAD.unpack_from(mem, 1024)[0]  # data_head; x86 and arm64 order this read for us via the syscall
        tail = _HEAD.unpack_from(mem, 1032)[0]
        while tail < head:
            off = tail % size
            if off + 8 <= size:
                rtype, _misc, rsize = _REC.unpack_from(mem, base + off)
            else:
                rtype, _misc, rsize = _REC.unpack(self._copy(off, 8))
            if rsize < 8:
                break
            body = self._copy((off + 8) % size, rsize - 8)
            if rtype == _PERF_RECORD_SAMPLE and len(body) >= 4:
                n = struct.unpack_from("<I", body)[0]
                on_event(body[4:4 + n])
            elif rtype == _PERF_RECORD_LOST and len(body) >= 16:
                on_lost(struct.unpack_from("<Q", body, 8)[0])
            tail += rsize
        _HEAD.pack_into(mem, 1032, tail)

    def _copy(self, off: int, n: int) -> bytes:
        base, size = self.page, self.size
        if off + n <= size:
            return self.mem[base + off:base + off + n]
        first = size - off
        return self.mem[base + off:base + size] + self.mem[base:base + n - first]

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


class PerfBuffer:
    """A BPF_PERF_OUTPUT map's rings, one per online CPU, and their callbacks."""

    def __init__(self, perf_map: Map, on_event: Callable[[bytes], None], on_lost: Callable[[int], None],
                 pages: int) -> None:
        self.on_event, self.on_lost = on_event, on_lost
        self.rings: dict[int, PerfRing] = {}
        try:
            for cpu in online_cpus():
                if cpu >= perf_map.max_entries:
                    continue
                ring = self.rings[cpu] = PerfRing(cpu, pages)
                perf_map.update(struct.pack("<I", cpu), struct.pack("<I", ring.fd))
        except OSError:
            self.close()
            raise

    def drain(self) -> None:
        for ring in self.rings.values():
            ring.drain(self.on_event, self.on_lost)

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()


_RINGBUF_BUSY = 1 << 31  # the producer has reserved the record and not committed it yet
_RINGBUF_DISCARD = 1 << 30  # committed as discarded: skip it
_RINGBUF_HDR = 8  # u32 len (with the two flags), u32 page offset


class RingBuf:
    """A BPF_MAP_TYPE_RINGBUF map, consumed here: a read-write consumer page, then the producer page and
    the data, which the kernel maps twice in a row so a record never wraps for the reader."""

    def __init__(self, ring_map: Map, on_event: Callable[[bytes], None]) -> None:
        self.on_event = on_event
        self.page = mmap.PAGESIZE
        self.size = ring_map.max_entries  # a power of two, in bytes
        self.consumer = mmap.mmap(ring_map.fd, self.page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            self.producer = mmap.mmap(ring_map.fd, self.page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ,
                                      offset=self.page)
        except OSError:
            self.consumer.close()
            raise

    def drain(self) -> None:
        cons = _HEAD.unpack_from(self.consumer, 0)[0]
        prod = _HEAD.unpack_from(self.producer, 0)[0]
        mask = self.size - 1
        while cons < prod:
            off = self.page + (cons & mask)
            length, _pg_off = struct.unpack_from("<II", self.producer, off)
            if length & _RINGBUF_BUSY:
                break  # not committed yet: the next drain takes it
            size = length & ~(_RINGBUF_BUSY | _RINGBUF_DISCARD)
            if not length & _RINGBUF_DISCARD:
                self.on_event(self.producer[off + _RINGBUF_HDR:off + _RINGBUF_HDR + size])
            cons += (size + _RINGBUF_HDR + 7) & ~7
            _HEAD.pack_into(self.consumer, 0, cons)  # frees the space for the producer

    def close(self) -> None:
        self.producer.close()
        self.consumer.close()


def poll(buffers: list[PerfBuffer], timeout_s: float) -> None:
    """Wait up to timeout_s for any ring to wake us, then drain them all."""
    poller = select.poll()
    for buf in buffers:
        for ring in buf.rings.values():
            poller.register(ring.fd, select.POLLIN)
    try:
        poller.poll(max(int(timeout_s * 1000), 0))
    except InterruptedError:
        pass
    for buf in buffers:
        buf.drain()
