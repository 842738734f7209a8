"""Kprobes on the receive path attach in the lab kernels and count real traffic (BCC directly, with
the kernel's exact headers). A veth pair between two namespaces the test creates carries the traffic."""

from __future__ import annotations

import ctypes

import pytest
import vmlab

PROBES = ["ip_rcv", "udp_rcv", "tcp_v4_rcv", "net_rx_action", "__napi_poll"]


class Counts:
    def __init__(self) -> None:
        from bcc import BPF

        self.symbols = {p: vmlab.resolve_symbols(p) for p in PROBES}
        missing = [p for p, syms in self.symbols.items() if not syms]
        assert not missing, f"not in /proc/kallsyms: {missing}"
        fns = "\n".join(
            f"int hit_{i}(struct pt_regs *ctx) {{ int k = {i}; u64 *v = counts.lookup(&k); if (v) *v += 1; return 0; }}"
            for i in range(len(PROBES))
        )
        text = f"BPF_PERCPU_ARRAY(counts, u64, {len(PROBES)});\n{fns}\n"
        self.bpf = BPF(text=text.encode())
        for i, p in enumerate(PROBES):
            for sym in self.symbols[p]:
                self.bpf.attach_kprobe(event=sym.encode(), fn_name=f"hit_{i}".encode())
        self.table = self.bpf[b"counts"]

    def clear(self) -> None:
        for i in range(len(PROBES)):
            self.table[ctypes.c_int(i)] = self.table.Leaf(*([0] * self.table.total_cpu))

    def read(self) -> dict[str, int]:
        return {p: int(sum(self.table[ctypes.c_int(i)])) for i, p in enumerate(PROBES)}

    def close(self) -> None:
        self.bpf.cleanup()


@pytest.fixture(scope="module")
def counts():
    c = Counts()
    yield c
    c.close()


def test_kprobes_attached(counts):
    n = counts.bpf.num_open_kprobes()
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
