"""Peers side by side inside the lab guest: the same traffic seen by netpath and by
bcc's tcpdrop and softirqs (bpfcc-tools) and by dropwatch (NET_DM), where the kernel has it.

    make vm-run KERNEL=6.1 CMD='python vm/peers.py'

Not part of `make test`: it prints a comparison for people, it asserts nothing.
Traffic: UDP datagrams and TCP connection attempts to a closed port, from one namespace
into another over a veth pair the script creates (10.200.x.x, nothing leaves them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "vm"))
sys.path.insert(0, str(REPO / "tests"))

import vmlab  # noqa: E402

UDP_N = 500
TCP_N = 50
CLOSED_PORT = 40999
READY_TIMEOUT_S = 240


def start(argv: list[str], ready: str | None, stdin: bool = False) -> subprocess.Popen[str] | str:
    """Start a tool and wait until its output shows `ready` (the tools print before attaching is done)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, cwd=REPO)
    proc.lines = []  # type: ignore[attr-defined]
    if ready is None:
        return proc
    deadline = time.monotonic() + READY_TIMEOUT_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        proc.lines.append(line)  # type: ignore[attr-defined]
        if ready in line:
            return proc
    proc.kill()
    out = "".join(proc.lines)  # type: ignore[attr-defined]
    errors = [ln.strip() for ln in out.splitlines() if "error" in ln.lower()]
    return f"could not start: {errors[0] if errors else out[-300:]}"


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return "".join(proc.lines) + (out or "")  # type: ignore[attr-defined]


def tcp_attempts(pair: vmlab.NetnsPair) -> None:
    code = (
        "import socket,sys\n"
        f"for _ in range({TCP_N}):\n"
        "    s=socket.socket(); s.settimeout(2)\n"
        f"    try: s.connect(({pair.addr_b!r},{CLOSED_PORT}))\n"
        "    except OSError: pass\n"
        "    s.close()\n"
    )
    pair.run(pair.a, [sys.executable, "-c", code])


def main() -> None:
    release = os.uname().release
    have_netdm = Path(f"/lib/modules/{release}").exists() and subprocess.run(
        ["modprobe", "drop_monitor"], capture_output=True, check=False).returncode == 0
    with vmlab.netns_pair() as pair:
        tools: dict[str, subprocess.Popen[str] | str] = {}
        tools["netpath drops"] = start([sys.executable, "-m", "netpath", "drops", "--netns", pair.b, "--json"],
                                       '"type":"start"')
        tools["netpath trace"] = start([sys.executable, "-m", "netpath", "trace", "--json"], '"type":"start"')
        tools["tcpdrop"] = start(["tcpdrop-bpfcc"], "TIME")
        tools["softirqs"] = start(["softirqs-bpfcc"], "Tracing")
        if have_netdm:
            dropwatch = start(["dropwatch", "-l", "kas"], None, stdin=True)
            assert not isinstance(dropwatch, str) and dropwatch.stdin is not None
            dropwatch.stdin.write("start\n")
            dropwatch.stdin.flush()
            tools["dropwatch"] = dropwatch
        time.sleep(5)
        vmlab.send_udp(pair, pair.a, pair.addr_b, CLOSED_PORT, UDP_N)
        tcp_attempts(pair)
        time.sleep(3)
        outputs = {name: proc if isinstance(proc, str) else stop(proc) for name, proc in tools.items()}
        snmp = pair.run(pair.b, ["cat", "/proc/net/snmp"]).stdout
    report(release, outputs, snmp, have_netdm)


def json_records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def report(release: str, outputs: dict[str, str], snmp: str, have_netdm: bool) -> None:
    udp = dict(zip(*[line.split()[1:] for line in snmp.splitlines() if line.startswith("Udp:")], strict=False))
    print(f"== peers on {release}: {UDP_N} UDP datagrams and {TCP_N} TCP SYNs to a closed port")
    print(f"ground truth: Udp NoPorts in the receiver namespace = {udp.get('NoPorts')}; TCP SYNs sent = {TCP_N}")
    summary = next(r for r in json_records(outputs["netpath drops"]) if r["type"] == "summary")
    for row in summary["rows"]:
        print(f"netpath drops: {row['count']:>6}  {row['reason']:<16} {row['location']:<28} "
              f"{row['iface']} {row['proto']}")
    if outputs["tcpdrop"].startswith("could not start"):
        print(f"tcpdrop:       {outputs['tcpdrop'][:150]}")
    tcp_lines = [ln for ln in outputs["tcpdrop"].splitlines() if re.match(r"^\d\d:\d\d:\d\d ", ln)]
    print(f"tcpdrop:       {len(tcp_lines):>6}  lines (TCP with a socket only: it sees no UDP and no "
          "socketless drops)")
    for ln in tcp_lines[:3]:
        print(f"               {ln.strip()[:70]}")
    if have_netdm:
        counts: dict[str, int] = {}
        for m in re.finditer(r"(\d+) drops at (\S+)", outputs["dropwatch"]):
            counts[m[2]] = counts.get(m[2], 0) + int(m[1])
        for where, n in sorted(counts.items(), key=lambda kv: -kv[1])[:5]:
            print(f"dropwatch:     {n:>6}  at {where} (all namespaces, no reason)")
    else:
        print("dropwatch:     not run: no drop_monitor module (CONFIG_NET_DROP_MONITOR) for this kernel")
    trace = next(r for r in json_records(outputs["netpath trace"]) if r["type"] == "summary")
    nra = next(s for s in trace["stages"] if s["stage"] == "net_rx_action")
    approx_us = sum((b["lo_ns"] + b["hi_ns"]) / 2 * b["count"] for b in nra["buckets"]) / 1000
    print(f"netpath trace: net_rx_action {nra['count']} runs, p50 {nra['p50_ns']} ns, "
          f"~{approx_us:,.0f} us in all (from buckets)")
    net_rx = [ln.split() for ln in outputs["softirqs"].splitlines() if ln.strip().startswith("net_rx")]
    if net_rx:
        print(f"softirqs:      net_rx {net_rx[-1][-1]} us in all (total time, no counts or percentiles)")
    else:
        print("softirqs:      no net_rx line:\n" + "\n".join(outputs["softirqs"].splitlines()[-10:]))


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
