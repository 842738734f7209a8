"""Guest side of the kernel lab: keep two do-nothing BPF programs on every tracepoint netpath attaches to,
for as long as this process lives (vm/guest.sh starts it before the command and stops it after).

Why: under multi-threaded TCG, Debian's kernels have oopsed on an int3 left in code the kernel had just
patched back: `call_timer_fn+0x1d`, the static branch of timer:timer_expire_entry, which netpath drops
attaches to, as a test's netpath stopped while the other vCPU ran timers. That is a cross-modifying-code
race of the emulator (vm/README.md). A tracepoint's code changes when its first probe comes or its last one
goes (the static key: kernel/tracepoint.c tracepoint_add_func/tracepoint_remove_func, TP_FUNC_0 <-> 1) and
when it goes between one probe and two (the static call switches between the probe and the iterator:
TP_FUNC_1 <-> 2). With two probes held, every attach and detach of the tests' own programs is an N -> N+1
change of the probe array only: no text is patched while they run. Kprobe optimization (a jump patched in
the same way) is turned off by guest.sh for the same reason.

Programs are two instructions (r0 = 0; exit), loaded with bpf(2) directly: nothing to compile, nothing
netpath's own loader does, so a bug there cannot hide behind this. A tracepoint this kernel lacks is
skipped. Writes "held N of M" to the file named by its first argument once attached, then sleeps.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys

# tracepoints netpath attaches to (netpath/collect, netpath/contract.py); kmem:kmem_cache_free (netpath
# follow's slab-free hop) is left out: it runs on every slab free, and two programs there slow the whole
# guest
TRACEPOINTS = (
    "irq:irq_handler_entry", "irq:irq_handler_exit", "irq:softirq_raise", "irq:softirq_entry",
    "irq:softirq_exit", "napi:napi_poll", "net:napi_gro_receive_entry", "net:napi_gro_receive_exit",
    "net:netif_receive_skb", "net:netif_receive_skb_entry", "net:netif_receive_skb_list_entry",
    "net:netif_rx", "net:net_dev_queue", "net:net_dev_start_xmit", "net:net_dev_xmit",
    "qdisc:qdisc_enqueue", "qdisc:qdisc_dequeue", "skb:kfree_skb", "skb:consume_skb",
    "skb:skb_copy_datagram_iovec", "sock:sk_data_ready", "sock:sock_rcvqueue_full",
    "sock:sock_recv_length", "udp:udp_fail_queue_rcv_skb", "timer:timer_expire_entry",
    "xdp:xdp_exception", "xdp:xdp_redirect",
)
PROBES_PER_TRACEPOINT = 2

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
NOOP = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = 0; exit

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    fd = libc.syscall(SYS_BPF, cmd, attr, len(attr))
    if fd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return int(fd)


def load_noop() -> int:
    insns = ctypes.create_string_buffer(NOOP, len(NOOP))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_RAW_TRACEPOINT, len(NOOP) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license_))
    return bpf(BPF_PROG_LOAD, attr)


def attach(tracepoint: str, prog_fd: int) -> int:
    name = ctypes.create_string_buffer(tracepoint.split(":", 1)[1].encode())
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<QI", attr, 0, ctypes.addressof(name), prog_fd)
    return bpf(BPF_RAW_TRACEPOINT_OPEN, attr)


def main() -> int:
    ready = sys.argv[1]
    links = []
    held = 0
    for tp in TRACEPOINTS:
        try:
            links += [attach(tp, load_noop()) for _ in range(PROBES_PER_TRACEPOINT)]
            held += 1
        except OSError as exc:  # ENOENT: this kernel has no such tracepoint
            print(f"vm-hold: {tp}: not held: {exc.strerror}", file=sys.stderr)
    with open(ready, "w") as f:
        f.write(f"held {held} of {len(TRACEPOINTS)}\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
