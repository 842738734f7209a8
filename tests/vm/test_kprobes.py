"""Kprobes on the receive path attach in the lab kernels and count real traffic, through netpath's own
loader (bpfload.program.compile_program and Program.attach_kprobe: a kprobe PMU event and a perf-event
link through libbpf), the one load path production uses. A veth pair between two namespaces the test
creates carries the traffic."""

from __future__ import annotations

import os
import struct

import pytest
import vmlab

from netpath.bpfload import build
from netpath.bpfload.program import compile_program
from netpath.kernel.facts import KernelFacts

PROBES = ["ip_rcv", "udp_rcv", "tcp_v4_rcv", "net_rx_action", "__napi_poll"]


class Counts:
    def __init__(self, src_dir) -> None:
        self.symbols = {p: vmlab.resolve_symbols(p) for p in PROBES}
        missing = [p for p, syms in self.symbols.items() if not syms]
        assert not missing, f"not in /proc/kallsyms: {missing}"
        fns = "\n".join(
            f"int hit_{i}(struct pt_regs *ctx) {{ int k = {i}; u64 *v = counts.lookup(&k); if (v) *v += 1; return 0; }}"
            for i in range(len(PROBES))
        )
        (src_dir / "kprobes.c").write_text(f"BPF_PERCPU_ARRAY(counts, u64, {len(PROBES)});\n{fns}\n")
        saved, build.BPF_DIR = build.BPF_DIR, src_dir
        try:
            self.prog = compile_program(build.ProgramSource(["kprobes.c"]), KernelFacts.load("/"))
        finally:
            build.BPF_DIR = saved
        self.attached = 0
        for i, p in enumerate(PROBES):
            for sym in self.symbols[p]:
                self.prog.attach_kprobe(sym, f"hit_{i}")  # MissingCapability with the kernel's refusal
                self.attached += 1

    def clear(self) -> None:
        for i in range(len(PROBES)):
            self.prog.percpu_zero("counts", i)

    def read(self) -> dict[str, int]:
        slots = self.prog.percpu_array("counts")  # one batched read
        return {p: sum(struct.unpack("<Q", v)[0] for v in slots[i]) for i, p in enumerate(PROBES)}

    def close(self) -> None:
        self.prog.close()


@pytest.fixture(scope="module")
def counts(tmp_path_factory):
    work = tmp_path_factory.mktemp("kprobes")
    cache = os.environ.get("NETPATH_CACHE")
    os.environ["NETPATH_CACHE"] = str(work / "cache")  # the build is this test's own: keep it out of root's cache
    try:
        c = Counts(work)
    finally:
        if cache is None:
            os.environ.pop("NETPATH_CACHE", None)
        else:
            os.environ["NETPATH_CACHE"] = cache
    yield c
    c.close()


def test_kprobes_attached(counts):
    n = counts.attached
    assert n >= len(PROBES), n


def test_udp_over_veth_counted(counts, netns_pair):
    n, port = 200, 5001
    p = netns_pair
    sink = vmlab.UdpSink(p, p.b, p.addr_b, port, want=n, timeout=60)
    counts.clear()
    vmlab.send_udp(p, p.a, p.addr_b, port, n)
    got = sink.wait()
    c = counts.read()
    print(f"received {got}/{n}; kprobe counts {c}; symbols {counts.symbols}")
    assert got > 0
    assert c["ip_rcv"] >= n
    assert c["udp_rcv"] >= n
    assert c["net_rx_action"] >= 1
    assert c["__napi_poll"] >= 1


def test_tcp_over_veth_counted(counts, netns_pair):
    p = netns_pair
    counts.clear()
    nbytes = 256 * 1024
    assert vmlab.tcp_transfer(p, p.b, p.addr_b, 5002, p.a, nbytes) == nbytes
    c = counts.read()
    print(f"kprobe counts {c}")
    # handshake + data segments + FIN, in both directions
    assert c["tcp_v4_rcv"] >= 4
    assert c["ip_rcv"] >= c["tcp_v4_rcv"]
    assert c["net_rx_action"] >= 1
