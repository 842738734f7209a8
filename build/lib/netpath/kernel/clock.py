"""The clocks the hand-off time is read against: skb->tstamp (REALTIME) and the BPF side's TAI."""

from __future__ import annotations

import socket
import time

SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD in asm-generic/socket.h; not in Python's socket module


def tai_offset_ns() -> int:
    """CLOCK_TAI - CLOCK_REALTIME: the kernel keeps it a whole number of seconds (0 until NTP sets it)."""
    return round((time.clock_gettime_ns(time.CLOCK_TAI) - time.time_ns()) / 1e9) * 1_000_000_000


def rx_timestamping() -> socket.socket:
    """A socket that asks for software RX timestamps: while it is open the kernel stamps skb->tstamp on
    receive (net_enable_timestamp), which is what the hand-off time is read from. The kernel turns it on
    from a workqueue, so open it before the compile."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    return sock
