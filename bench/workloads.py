"""The four workloads: sockperf UDP/TCP 64-byte message rate, and a drop storm (closed port, netfilter DROP)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bench.env import PORT_NFDROP, PORT_NOPORT, PORT_TCP, PORT_UDP, RECEIVER_CPU, SENDER_CPU, Topology

MSG_RATE = re.compile(r"Message Rate is (\d+) \[msg/sec\]")


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    tcp: bool
    port: int
    drop_reason: str | None = None  # the kernel reason the storm's drops carry


WORKLOADS = (
    Workload("udp", "UDP 64 B msg rate", False, PORT_UDP),
    Workload("tcp", "TCP 64 B msg rate", True, PORT_TCP),
    Workload("noport", "UDP flood, closed port", False, PORT_NOPORT, "NO_SOCKET"),
    Workload("nfdrop", "UDP flood, netfilter DROP", False, PORT_NFDROP, "NETFILTER_DROP"),
)


@contextmanager
def servers(topo: Topology) -> Iterator[None]:
    """sockperf servers in the receiver namespace, pinned to the receiver CPU."""
    procs = [
        subprocess.Popen(topo.exec_argv(topo.rx, RECEIVER_CPU, "sockperf", "sr", "-i", topo.rx_addr, "-p",
                                        str(PORT_UDP)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(topo.exec_argv(topo.rx, RECEIVER_CPU, "sockperf", "sr", "--tcp", "-i", topo.rx_addr,
                                        "-p", str(PORT_TCP)), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
    ]
    time.sleep(1.0)
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def truth(topo: Topology, w: Workload) -> int:
    """The receiver-side count the workload's rate and ground truth are measured from."""
    if w.name == "nfdrop":
        return topo.nf_drop_packets()
    snmp = topo.snmp(topo.rx)
    if w.name == "udp":
        return snmp["UdpInDatagrams"]
    if w.name == "noport":
        return snmp["UdpNoPorts"]
    return snmp["TcpInSegs"]


def run(topo: Topology, w: Workload, seconds: float) -> dict[str, object]:
    """Drive the workload for `seconds` from the sender namespace; rates from receiver counters.

    sockperf's -t takes whole seconds, so `seconds` is rounded down (at least 1) and the rate and the
    returned `seconds` use that figure.
    """
    secs = max(1, int(seconds))
    argv = ["sockperf", "tp", "-i", topo.rx_addr, "-p", str(w.port), "-m", "64", "-t", str(secs)]
    if w.tcp:
        argv.insert(2, "--tcp")
    before = truth(topo, w)
    t0 = time.monotonic()
    proc = subprocess.Popen(topo.exec_argv(topo.tx, SENDER_CPU, *argv), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=secs + 10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    elapsed = time.monotonic() - t0
    time.sleep(0.3)  # let the receive path drain before the counters are read
    after = truth(topo, w)
    m = MSG_RATE.search(out or "")
    sent_pps = int(m.group(1)) if m else None
    count = after - before
    # sockperf's -t excludes its warm-up; its reported rate is the cleaner one when present and the
    # workload delivers every message (TCP); UDP rates come from what the receiver counted.
    pps = sent_pps if (w.tcp and sent_pps) else count / secs
    return {"pps": round(pps), "sent_pps": sent_pps, "rx_count": count, "elapsed_s": round(elapsed, 3),
            "seconds": secs}
