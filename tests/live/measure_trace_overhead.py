"""Measure netpath trace's cost here (root): ns/run per BPF program from the kernel's own
bpf_stats, and UDP flood throughput into a namespace with and without the trace program.

    sudo .venv/bin/python tests/live/measure_trace_overhead.py [SECONDS]

Not a pytest test: numbers for the man page's OVERHEAD section and the report.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from netpath_testlib import veth_namespace

from netpath import bpf
from netpath.collect import trace as trace_mod
from netpath.kernel.facts import KernelFacts
from netpath.plan import make_plan

RECV = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind((sys.argv[1], int(sys.argv[2]))); s.settimeout(0.5)
print("ready", flush=True)
n = 0; end = time.monotonic() + float(sys.argv[3]) + 1.5
while time.monotonic() < end:
    try:
        s.recv(2048); n += 1
    except socket.timeout:
        pass
print(n, flush=True)
"""
SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst = (sys.argv[1], int(sys.argv[2])); p = b"x" * 32; n = 0
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    for _ in range(256):
        s.sendto(p, dst)
    n += 256
print(n, flush=True)
"""


def flood(pair, port: int, seconds: float) -> tuple[float, float]:
    recv = subprocess.Popen(["ip", "netns", "exec", pair.ns, sys.executable, "-c", RECV, pair.ns_addr, str(port),
                             str(seconds)], stdout=subprocess.PIPE, text=True)
    assert recv.stdout is not None and recv.stdout.readline().strip() == "ready"
    sent = int(subprocess.run([sys.executable, "-c", SEND, pair.ns_addr, str(port), str(seconds)],
                              capture_output=True, text=True, check=True).stdout)
    got = int(recv.communicate()[0].strip().splitlines()[-1])
    return sent / seconds, got / seconds


def prog_stats(prog) -> dict[str, tuple[int, int]]:
    out = {}
    for name, fn in prog.funcs.items():  # fdinfo shows run_cnt/run_time_ns with bpf_stats on
        info = Path(f"/proc/self/fdinfo/{fn.fd}").read_text()
        fields = dict(line.split(":\t", 1) for line in info.splitlines() if ":\t" in line)
        key = name.decode() if isinstance(name, bytes) else name
        out[key] = (int(fields.get("run_cnt", 0)), int(fields.get("run_time_ns", 0)))
    return out


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    stats_before = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
    facts = KernelFacts.load("/")
    plan = make_plan(facts)
    port = 41999
    with veth_namespace("npov") as pair:
        flood(pair, port, 1.0)  # warm up (ARP, caches)
        base = flood(pair, port, seconds)
        print(f"without trace: sent {base[0]:,.0f} pps, received {base[1]:,.0f} pps")
        for label, query in (("trace, no filter", trace_mod.TraceQuery()),
                             (f"trace --port {port}", trace_mod.TraceQuery(port=port))):
            src = trace_mod.program_source(query, plan, bpf.struct_offsets(facts))
            col = trace_mod.TraceCollector(query, plan, facts, src)
            col.start()
            before = prog_stats(col.prog)
            t0 = time.monotonic()
            rates = flood(pair, port, seconds)
            after = prog_stats(col.prog)
            col.read()
            col.close()
            print(f"{label}: sent {rates[0]:,.0f} pps, received {rates[1]:,.0f} pps "
                  f"({time.monotonic() - t0:.1f}s)")
            for name in sorted(after):
                cnt = after[name][0] - before.get(name, (0, 0))[0]
                ns = after[name][1] - before.get(name, (0, 0))[1]
                if cnt:
                    print(f"  {name:<45} {cnt:>10,} runs {ns / cnt:>7.0f} ns/run")
    # restore, not zero: a benchmark running beside this may rely on the stats being on
    subprocess.run(["sysctl", "-q", f"kernel.bpf_stats_enabled={stats_before}"], check=False)


if __name__ == "__main__":
    main()
