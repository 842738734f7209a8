"""A thin ctypes binding over libbpf.so.1: every bpf(2) call, ring buffer and perf buffer netpath makes.

libbpf is the kernel's own reference library, already on every machine netpath runs on (Debian's
`libbpf1`, which BCC's libbcc_bpf links). Its low-level API (bpf.h) is stable and versioned: each call
here is one libbpf function with the `struct *_opts` it documents (a `sz` first, so libbpf 1.x and
later accept it). Calls return what libbpf returns: an fd or 0, or -errno (libbpf 1.0 mode).

Nothing here knows netpath's programs: load.py and read.py build on it, and tests replace `lib()` with a
fake of the same functions.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable
from typing import Any

from netpath.errors import MissingCapability

SONAME = "libbpf.so.1"
PACKAGE = "libbpf1"  # Debian's package that ships it

# enum bpf_map_type, enum bpf_prog_type, enum bpf_attach_type (uapi/linux/bpf.h)
MAP_TYPE_HASH, MAP_TYPE_ARRAY, MAP_TYPE_PERF_EVENT_ARRAY = 1, 2, 4
MAP_TYPE_PERCPU_HASH, MAP_TYPE_PERCPU_ARRAY, MAP_TYPE_STACK_TRACE = 5, 6, 7
MAP_TYPE_LRU_HASH, MAP_TYPE_LRU_PERCPU_HASH = 9, 10
MAP_TYPE_RINGBUF = 27
PROG_TYPE_KPROBE = 2
PROG_TYPE_RAW_TRACEPOINT = 17
PROG_TYPE_TRACING = 26
TRACE_RAW_TP = 23
PERF_EVENT = 41  # BPF_PERF_EVENT: a link on a perf event (a kprobe), Linux 5.15+

ENOENT, EINVAL, ENOSPC, EOPNOTSUPP, ENOTSUPP = 2, 22, 28, 95, 524
LOG_SIZE = 1 << 20  # the verifier log libbpf fills on a refused load


class MapCreateOpts(ctypes.Structure):
    """struct bpf_map_create_opts (bpf.h, libbpf 0.7+)."""

    _fields_ = [("sz", ctypes.c_size_t), ("btf_fd", ctypes.c_uint32), ("btf_key_type_id", ctypes.c_uint32),
                ("btf_value_type_id", ctypes.c_uint32), ("btf_vmlinux_value_type_id", ctypes.c_uint32),
                ("inner_map_fd", ctypes.c_uint32), ("map_flags", ctypes.c_uint32), ("map_extra", ctypes.c_uint64),
                ("numa_node", ctypes.c_uint32), ("map_ifindex", ctypes.c_uint32)]


class ProgLoadOpts(ctypes.Structure):
    """struct bpf_prog_load_opts (bpf.h, libbpf 0.7+; up to log_buf, its last field in 1.1)."""

    _fields_ = [("sz", ctypes.c_size_t), ("attempts", ctypes.c_int), ("expected_attach_type", ctypes.c_uint32),
                ("prog_btf_fd", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32), ("prog_ifindex", ctypes.c_uint32),
                ("kern_version", ctypes.c_uint32), ("attach_btf_id", ctypes.c_uint32),
                ("attach_prog_fd", ctypes.c_uint32), ("attach_btf_obj_fd", ctypes.c_uint32),
                ("fd_array", ctypes.c_void_p), ("func_info", ctypes.c_void_p), ("func_info_cnt", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("line_info", ctypes.c_void_p),
                ("line_info_cnt", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32), ("log_buf", ctypes.c_void_p)]


class MapBatchOpts(ctypes.Structure):
    """struct bpf_map_batch_opts (bpf.h)."""

    _fields_ = [("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


RingSampleFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
PerfSampleFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
PerfLostFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64)
PrintFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_c, _i, _u32, _u64, _sz, _vp = ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_size_t, \
    ctypes.c_void_p
_U32P = ctypes.POINTER(ctypes.c_uint32)
# name: (argument types, result type); every one is in libbpf 1.0's stable API (objdump -T libbpf.so.1)
SIGNATURES: dict[str, tuple[list[Any], Any]] = {
    "bpf_map_create": ([_i, _c, _u32, _u32, _u32, ctypes.POINTER(MapCreateOpts)], _i),
    "bpf_map_lookup_elem": ([_i, _vp, _vp], _i),
    "bpf_map_update_elem": ([_i, _vp, _vp, _u64], _i),
    "bpf_map_delete_elem": ([_i, _vp], _i),
    "bpf_map_get_next_key": ([_i, _vp, _vp], _i),
    "bpf_map_lookup_batch": ([_i, _vp, _vp, _vp, _vp, _U32P, ctypes.POINTER(MapBatchOpts)], _i),
    "bpf_map_lookup_and_delete_batch": ([_i, _vp, _vp, _vp, _vp, _U32P, ctypes.POINTER(MapBatchOpts)], _i),
    "bpf_prog_load": ([_i, _c, _c, _vp, _sz, ctypes.POINTER(ProgLoadOpts)], _i),
    "bpf_raw_tracepoint_open": ([_c, _i], _i),
    "bpf_link_create": ([_i, _i, _i, _vp], _i),
    "libbpf_num_possible_cpus": ([], _i),
    "libbpf_set_print": ([PrintFn], _vp),
    "ring_buffer__new": ([_i, RingSampleFn, _vp, _vp], _vp),
    "ring_buffer__poll": ([_vp, _i], _i),
    "ring_buffer__consume": ([_vp], _i),
    "ring_buffer__free": ([_vp], None),
    "perf_buffer__new": ([_i, _sz, PerfSampleFn, PerfLostFn, _vp, _vp], _vp),
    "perf_buffer__poll": ([_vp, _i], _i),
    "perf_buffer__consume": ([_vp], _i),
    "perf_buffer__free": ([_vp], None),
}

_LIB: list[Any] = []
_MESSAGES: list[str] = []  # libbpf's own warnings, newest last: an error names the latest


def _on_print(level: int, fmt: bytes | None, args: int | None) -> int:
    """libbpf's printer: warnings are kept for the next error message, never printed on the user's terminal."""
    if level > 0 or fmt is None:  # LIBBPF_WARN is 0; INFO and DEBUG are noise here
        return 0
    buf = ctypes.create_string_buffer(512)
    _libc().vsnprintf(buf, len(buf), fmt, ctypes.c_void_p(args))
    _MESSAGES[:] = [*_MESSAGES[-7:], buf.value.decode(errors="replace").strip()]
    return 0


_PRINTER = PrintFn(_on_print)  # kept alive for as long as libbpf may call it


_LIBC: list[Any] = []


def _libc() -> Any:
    if not _LIBC:
        libc = ctypes.CDLL(None)
        libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
        _LIBC.append(libc)
    return _LIBC[0]


def lib() -> Any:
    """libbpf.so.1 by its soname, its functions typed; exit 3 naming the package when it is missing."""
    if not _LIB:
        try:
            handle = ctypes.CDLL(SONAME, use_errno=True)
        except OSError as exc:
            raise MissingCapability(f"{SONAME} is missing ({exc}): netpath loads BPF through libbpf; "
                                    f"apt-get install {PACKAGE}, or run 'make install'") from None
        try:
            for name, (args, res) in SIGNATURES.items():
                fn = getattr(handle, name)
                fn.argtypes, fn.restype = args, res
        except AttributeError as exc:
            raise MissingCapability(f"{SONAME} is too old ({exc}): netpath needs libbpf 1.0 or later; "
                                    f"apt-get install {PACKAGE}") from None
        handle.libbpf_set_print(_PRINTER)
        _LIB.append(handle)
    return _LIB[0]


def last_message() -> str:
    return _MESSAGES[-1] if _MESSAGES else ""


def _buf(data: bytes | None) -> ctypes.Array | None:
    return None if data is None else ctypes.create_string_buffer(data, len(data))


# ---------------------------------------------------------------- maps


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int, flags: int) -> int:
    opts = MapCreateOpts(sz=ctypes.sizeof(MapCreateOpts), map_flags=flags)
    return int(lib().bpf_map_create(map_type, name.encode()[:15], key_size, value_size, max_entries,
                                    ctypes.byref(opts)))


def map_lookup(fd: int, key: bytes, value: ctypes.Array) -> int:
    return int(lib().bpf_map_lookup_elem(fd, _buf(key), value))


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> int:
    return int(lib().bpf_map_update_elem(fd, _buf(key), _buf(value), flags))


def map_delete(fd: int, key: bytes) -> int:
    return int(lib().bpf_map_delete_elem(fd, _buf(key)))


def map_next_key(fd: int, key: bytes | None, out: ctypes.Array) -> int:
    return int(lib().bpf_map_get_next_key(fd, _buf(key), out))


def map_batch(fd: int, delete: bool, in_batch: ctypes.Array | None, out_batch: ctypes.Array, keys: ctypes.Array,
              values: ctypes.Array, count: ctypes.c_uint32) -> int:
    """One bpf_map_lookup_batch (or _and_delete_batch): 0, or -ENOENT at the end (count still says how many
    came back), or another -errno."""
    opts = MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts))
    fn = lib().bpf_map_lookup_and_delete_batch if delete else lib().bpf_map_lookup_batch
    return int(fn(fd, in_batch, out_batch, keys, values, ctypes.byref(count), ctypes.byref(opts)))


def possible_cpus() -> int:
    n = int(lib().libbpf_num_possible_cpus())
    if n <= 0:
        raise OSError(-n, "cannot read /sys/devices/system/cpu/possible")
    return n


# ---------------------------------------------------------------- programs and links


def prog_load(prog_type: int, name: str, license_: str, insns: bytes, kern_version: int = 0,
              attach_type: int = 0, btf_id: int = 0) -> tuple[int, str]:
    """(fd or -errno, the verifier's log on failure). libbpf loads without a log and, only when the kernel
    refuses, loads again with the log (log_level 1) to say why."""
    code = ctypes.create_string_buffer(insns, len(insns))
    # an anonymous mapping, not a heap buffer: its pages cost memory only if the kernel writes a log, and
    # they go back to the kernel at close (a 1 MB heap buffer per load stayed in the heap: +4 MB RSS)
    with mmap.mmap(-1, LOG_SIZE) as area:
        log = (ctypes.c_char * LOG_SIZE).from_buffer(area)
        try:
            opts = ProgLoadOpts(sz=ctypes.sizeof(ProgLoadOpts), expected_attach_type=attach_type,
                                kern_version=kern_version, attach_btf_id=btf_id, log_size=LOG_SIZE,
                                log_buf=ctypes.addressof(log))
            fd = int(lib().bpf_prog_load(prog_type, name.encode()[:15], license_.encode(), code, len(insns) // 8,
                                         ctypes.byref(opts)))
            text = "" if fd >= 0 else log.value.decode(errors="replace")
        finally:
            del log  # the mapping cannot close while a ctypes view holds it
    return fd, text


def raw_tracepoint_open(name: str, prog_fd: int) -> int:
    """A raw tracepoint by name: the link fd (closing it detaches), or -errno."""
    return int(lib().bpf_raw_tracepoint_open(name.encode(), prog_fd))


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """BPF_LINK_CREATE: tp_btf (TRACE_RAW_TP, no target; libbpf falls back to RAW_TRACEPOINT_OPEN on kernels
    without it) or a perf event (PERF_EVENT, the event's fd). The link fd, or -errno."""
    return int(lib().bpf_link_create(prog_fd, target_fd, attach_type, None))


# ---------------------------------------------------------------- rings


class Callbacks:
    """Python callables behind C function pointers: the pointers must outlive the ring (kept here), and an
    exception in a callback cannot cross libbpf, so it is kept and raised again after the call returns."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.pointers: list[Any] = []

    def keep(self, ptr: Any) -> Any:
        self.pointers.append(ptr)
        return ptr

    def guard(self, fn: Callable[..., Any], failed: Any = None) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            if self.error is not None:
                return failed
            try:
                return fn(*args)
            except BaseException as exc:  # re-raised by reraise() once libbpf returns
                self.error = exc
                return failed
        return call

    def reraise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


class RingBuffer:
    """A BPF_MAP_TYPE_RINGBUF map read by libbpf's ring_buffer: busy records wait, discarded ones are skipped,
    the consumer position is released with the ordering the kernel's producer expects."""

    def __init__(self, map_fd: int, on_record: Callable[[bytes], None]) -> None:
        self._cb = Callbacks()

        def sample(_ctx: int, data: int, size: int) -> int:
            on_record(ctypes.string_at(data, size))
            return 0

        fn = self._cb.keep(RingSampleFn(self._cb.guard(sample, -1)))
        self._rb = lib().ring_buffer__new(map_fd, fn, None, None)
        if not self._rb:
            raise OSError(ctypes.get_errno() or EINVAL, f"ring_buffer__new: {last_message() or 'refused'}")

    def consume(self) -> int:
        """Every committed record now: how many."""
        n = int(lib().ring_buffer__consume(self._rb)) if self._rb else 0
        self._cb.reraise()
        return n

    def poll(self, timeout_ms: int) -> int:
        n = int(lib().ring_buffer__poll(self._rb, timeout_ms)) if self._rb else 0
        self._cb.reraise()
        return n

    def close(self) -> None:
        if self._rb:
            lib().ring_buffer__free(self._rb)
            self._rb = None


class PerfBuffer:
    """A BPF_MAP_TYPE_PERF_EVENT_ARRAY map read by libbpf's perf_buffer: one ring per online CPU, samples and
    the kernel's lost-record counts delivered by callback."""

    def __init__(self, map_fd: int, pages: int, on_event: Callable[[bytes], None],
                 on_lost: Callable[[int], None]) -> None:
        self._cb = Callbacks()

        def sample(_ctx: int, _cpu: int, data: int, size: int) -> None:
            on_event(ctypes.string_at(data, size))

        def lost(_ctx: int, _cpu: int, count: int) -> None:
            on_lost(int(count))

        fs = self._cb.keep(PerfSampleFn(self._cb.guard(sample)))
        fl = self._cb.keep(PerfLostFn(self._cb.guard(lost)))
        self._pb = lib().perf_buffer__new(map_fd, pages, fs, fl, None, None)
        if not self._pb:
            raise OSError(ctypes.get_errno() or EINVAL, f"perf_buffer__new: {last_message() or 'refused'}")

    def poll(self, timeout_ms: int) -> int:
        """Wait up to timeout_ms for a ring to wake, then deliver what the woken rings hold."""
        n = int(lib().perf_buffer__poll(self._pb, timeout_ms)) if self._pb else 0
        self._cb.reraise()
        return n

    def consume(self) -> int:
        """Deliver what every ring holds now, without waiting."""
        n = int(lib().perf_buffer__consume(self._pb)) if self._pb else 0
        self._cb.reraise()
        return n

    def close(self) -> None:
        if self._pb:
            lib().perf_buffer__free(self._pb)
            self._pb = None
