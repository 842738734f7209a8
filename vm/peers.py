"""Peers side by side inside the lab guest: the same traffic seen by netpath and by bcc's tcpdrop
and softirqs (bpfcc-tools) and by dropwatch (NET_DM), where the kernel has it.

    make vm-peers                       # both kernels, one boot each
    vm/run.sh 6.1 'python -u vm/peers.py [TOOL...]'

Not part of `make test`: it prints a comparison for people and asserts nothing.

Each tool gets its own round, one at a time, so none of them slows or disturbs another: start it,
wait until it says it is attached, send the same traffic, stop it, and read the ground truth for that
round from the receiver namespace's SNMP counters. A tool that cannot start, or hangs, costs its own
timeout and is reported; the other rounds still run. Each round is printed as soon as it ends.

Traffic: UDP datagrams and TCP connection attempts to a closed port, from one namespace into
another over a veth pair the script creates (10.200.x.x, nothing leaves them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "vm"))
sys.path.insert(0, str(REPO / "tests"))

import vmlab  # noqa: E402

UDP_N = 500
TCP_N = 50
CLOSED_PORT = 40999
READY_TIMEOUT_S = 600  # a BCC compile against full kernel headers takes minutes under TCG
STOP_TIMEOUT_S = 60
SETTLE_S = 2.0

# BCC 0.26's clang cannot compile linux/bpf.h of kernels >= 6.4 (opaque kfunc types it has no
# definition of); this prelude, prepended to a tool's BPF text, supplies them. See tests/vm/vmlab.py.
COMPAT_RUNNER = """
import runpy, sys, bcc
sys.path.insert(0, {tests_vm!r})
from vmlab import BCC_UAPI_COMPAT
_init = bcc.BPF.__init__
def _init_with_compat(self, *a, text=None, **kw):
    if text is not None:
        text = BCC_UAPI_COMPAT + (text.decode() if isinstance(text, bytes) else text)
    _init(self, *a, text=text, **kw)
bcc.BPF.__init__ = _init_with_compat
sys.argv = [{tool!r}]
runpy.run_path({tool!r}, run_name="__main__")
"""


@dataclass
class Truth:
    """What the receiver namespace counted during one round (SNMP deltas)."""

    udp_noports: int
    tcp_outrsts: int
    ip_inreceives: int


@dataclass
class Round:
    name: str
    output: str = ""
    error: str = ""
    ready_s: float = 0.0
    truth: Truth | None = None


@dataclass
class Tool:
    name: str
    argv: Callable[[vmlab.NetnsPair], list[str]]
    ready: str  # printed once the tool is attached
    report: Callable[[Round], list[str]]
    stdin_lines: tuple[str, ...] = ()  # typed at the tool's prompt (dropwatch)
    stop_lines: tuple[str, ...] = ()
    needs: Callable[[], str] = field(default=lambda: "")  # why it cannot run here, or ""


def snmp(pair: vmlab.NetnsPair) -> dict[str, int]:
    text = pair.run(pair.b, ["cat", "/proc/net/snmp"]).stdout
    values: dict[str, int] = {}
    lines = text.splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        proto = head.split(":", 1)[0]
        for k, v in zip(head.split()[1:], vals.split()[1:], strict=False):
            values[f"{proto}.{k}"] = int(v)
    return values


def send_traffic(pair: vmlab.NetnsPair) -> None:
    vmlab.send_udp(pair, pair.a, pair.addr_b, CLOSED_PORT, UDP_N)
    code = (
        "import socket\n"
        f"for _ in range({TCP_N}):\n"
        "    s = socket.socket(); s.settimeout(2)\n"
        f"    try: s.connect(({pair.addr_b!r}, {CLOSED_PORT}))\n"
        "    except OSError: pass\n"
        "    s.close()\n"
    )
    pair.run(pair.a, [sys.executable, "-c", code])


def run_round(tool: Tool, pair: vmlab.NetnsPair) -> Round:
    rnd = Round(tool.name)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        tool.argv(pair),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.PIPE,
        cwd=REPO,
        start_new_session=True,
        # the peers print their "attached" line with stdio that a pipe would hold back until exit
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdin is not None and proc.stdout is not None
    for line in tool.stdin_lines:
        proc.stdin.write(line + "\n")
    proc.stdin.flush()
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if tool.ready in line:
                ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while not ready.wait(0.5):
        if proc.poll() is not None or time.monotonic() - t0 > READY_TIMEOUT_S:
            break
    if not ready.is_set():
        exited = proc.poll()  # negative: killed by that signal (the OOM killer's is -9)
        _kill(proc)
        reader.join(5)
        out = "".join(lines)
        # an "error:"/"Unable to" line says more than the traceback that follows it
        errors = [
            ln.strip() for ln in out.splitlines() if re.search(r"error:|Unable to|not found", ln)
        ] + out.strip().splitlines()[-1:]
        why = (
            f"no {tool.ready!r} within {READY_TIMEOUT_S} s"
            if exited is None
            else f"exit status {exited} after {time.monotonic() - t0:.0f} s"
        )
        rnd.error = f"could not start ({why}): " + (errors[0] if errors else "no output")
        return rnd
    rnd.ready_s = time.monotonic() - t0
    before = snmp(pair)
    time.sleep(SETTLE_S)
    send_traffic(pair)
    time.sleep(SETTLE_S)
    after = snmp(pair)
    rnd.truth = Truth(*(after[k] - before[k] for k in ("Udp.NoPorts", "Tcp.OutRsts", "Ip.InReceives")))
    proc.send_signal(signal.SIGINT)
    try:
        for line in tool.stop_lines:
            proc.stdin.write(line + "\n")
        proc.stdin.close()
    except BrokenPipeError:
        pass
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill(proc)
        rnd.error = f"did not stop within {STOP_TIMEOUT_S} s of SIGINT (killed; output so far kept)"
    reader.join(10)
    rnd.output = "".join(lines)
    return rnd


def _kill(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def json_records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def report_netpath_drops(rnd: Round) -> list[str]:
    summary = next(r for r in json_records(rnd.output) if r["type"] == "summary")
    return [
        f"{row['count']:>6}  {row['reason'] or '-':<14} {row['location']:<26} {row['iface']} {row['proto']}"
        for row in summary["rows"]
    ] or ["no drops reported"]


def report_tcpdrop(rnd: Round) -> list[str]:
    events = [ln for ln in rnd.output.splitlines() if re.match(r"^\d\d:\d\d:\d\d ", ln)]
    out = [
        f"{len(events):>6}  events (it reports TCP drops of packets that have a socket: no UDP, "
        "no SYN to a closed port)"
    ]
    return out + [f"        {ln.strip()[:70]}" for ln in events[:3]]


def report_dropwatch(rnd: Round) -> list[str]:
    counts: dict[str, int] = {}
    for m in re.finditer(r"^(\d+) drops at (\S+)", rnd.output, re.M):
        counts[m[2]] = counts.get(m[2], 0) + int(m[1])
    total = sum(counts.values())
    out = [f"{total:>6}  in all, all namespaces, by location only (no reason, interface or flow)"]
    return out + [f"{n:>6}  at {where}" for where, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6]]


def report_netpath_trace(rnd: Round) -> list[str]:
    summary = next(r for r in json_records(rnd.output) if r["type"] == "summary")
    out = []
    for st in summary["stages"]:
        out.append(
            f"{st['stage']:<18} {st['method']:<15} n={st['count']:<5} p50={st['p50_ns'] / 1000:,.1f}us "
            f"mean={st['mean_ns'] / 1000:,.1f}us total={st['sum_ns'] / 1000:,.0f}us"
        )
    return out + [f"{u['stage']:<18} not attached: {u.get('reason', '')}"[:76] for u in summary["unavailable"]]


def report_softirqs(rnd: Round) -> list[str]:
    rows = [ln.split() for ln in rnd.output.splitlines() if ln.strip().startswith("net_rx")]
    if not rows:
        return ["no net_rx line in its output"]
    label = "runs" if "-C" in rnd.name else "us in all (CPU-wide, no percentiles)"
    return [f"net_rx {rows[-1][-1]} {label}"]


def needs_netdm() -> str:
    if subprocess.run(["modprobe", "drop_monitor"], capture_output=True, check=False).returncode != 0:
        return "no drop_monitor module (CONFIG_NET_DROP_MONITOR) for this kernel"
    return ""


def needs_program(name: str) -> Callable[[], str]:
    return lambda: (
        ""
        if any((Path(d) / name).exists() for d in os.environ["PATH"].split(":"))
        else f"{name} is not installed (make vm-peers installs it)"
    )


def tools() -> list[Tool]:
    netpath = [sys.executable, "-m", "netpath"]
    tcpdrop = "/usr/sbin/tcpdrop-bpfcc"
    compat = COMPAT_RUNNER.format(tests_vm=str(REPO / "tests" / "vm"), tool=tcpdrop)
    return [
        Tool(
            "netpath drops",
            lambda p: [*netpath, "drops", "--netns", p.b, "--json"],
            '"type":"start"',
            report_netpath_drops,
        ),
        Tool("tcpdrop-bpfcc", lambda p: [tcpdrop], "TIME", report_tcpdrop, needs=needs_program("tcpdrop-bpfcc")),
        Tool(
            "tcpdrop-bpfcc+compat",
            lambda p: [sys.executable, "-c", compat],
            "TIME",
            report_tcpdrop,
            needs=needs_program("tcpdrop-bpfcc"),
        ),
        Tool(
            "dropwatch",
            lambda p: ["stdbuf", "-oL", "dropwatch", "-l", "kas"],
            "monitoring activated",
            report_dropwatch,
            stdin_lines=("start",),
            stop_lines=("exit",),
            needs=lambda: needs_program("dropwatch")() or needs_netdm(),
        ),
        Tool(
            "netpath trace",
            lambda p: [*netpath, "trace", "--netns", p.b, "--json"],
            '"type":"start"',
            report_netpath_trace,
        ),
        Tool(
            "softirqs-bpfcc",
            lambda p: ["softirqs-bpfcc"],
            "Tracing",
            report_softirqs,
            needs=needs_program("softirqs-bpfcc"),
        ),
        Tool(
            "softirqs-bpfcc -C",
            lambda p: ["softirqs-bpfcc", "-C"],
            "Tracing",
            report_softirqs,
            needs=needs_program("softirqs-bpfcc"),
        ),
    ]


def say(text: str) -> None:
    print(text, flush=True)


def main(selected: list[str]) -> int:
    chosen = [t for t in tools() if not selected or t.name in selected]
    if selected and len(chosen) != len(selected):
        known = ", ".join(t.name for t in tools())
        print(f"peers: unknown tool in {selected!r}; known: {known}", file=sys.stderr)
        return 2
    say(
        f"== peers on {os.uname().release}: each round sends {UDP_N} UDP datagrams and {TCP_N} TCP SYNs "
        f"to closed port {CLOSED_PORT} in a fresh namespace"
    )
    with vmlab.netns_pair() as pair:
        tcpdrop_started = False
        for tool in chosen:
            if tool.name == "tcpdrop-bpfcc+compat" and tcpdrop_started:
                continue  # the plain tool worked: no need for the prelude
            why_not = tool.needs()
            if why_not:
                say(f"\n-- {tool.name}: not run: {why_not}")
                continue
            t0 = time.monotonic()
            rnd = run_round(tool, pair)
            if tool.name == "tcpdrop-bpfcc" and not rnd.error:
                tcpdrop_started = True
            head = f"\n-- {tool.name}: "
            if rnd.truth is None:
                say(head + rnd.error[:300])
                continue
            t = rnd.truth
            say(
                head + f"attached in {rnd.ready_s:.1f} s, round {time.monotonic() - t0:.0f} s; "
                f"ground truth: Udp.NoPorts +{t.udp_noports}, Tcp.OutRsts +{t.tcp_outrsts}, "
                f"Ip.InReceives +{t.ip_inreceives}"
            )
            if rnd.error:
                say("   " + rnd.error)
            try:
                for line in tool.report(rnd):
                    say("   " + line)
            except (StopIteration, KeyError, ValueError) as exc:
                say(f"   could not read its output ({exc!r}); last lines:")
                for line in rnd.output.strip().splitlines()[-8:]:
                    say("   | " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
