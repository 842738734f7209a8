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
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "vm"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import vmlab  # noqa: E402

from bench.env import parse_snmp  # noqa: E402
from bench.tools import Running, Variant  # noqa: E402

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
    return parse_snmp(pair.run(pair.b, ["cat", "/proc/net/snmp"]).stdout)


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


def launch(tool: Tool, pair: vmlab.NetnsPair) -> tuple[Running, float, str]:
    """Start a tool and wait until it says it is attached: the run, seconds to attach, why it did not ("")."""
    run = Running(
        Variant(
            tool.name,
            "other",
            tool.argv(pair),
            tool.ready,
            stdin_lines=tool.stdin_lines,
            stop_lines=tool.stop_lines,
            # the peers print their "attached" line with stdio a pipe would hold until exit
            env={"PYTHONUNBUFFERED": "1"},
        )
    )
    try:
        return run, run.wait_ready(READY_TIMEOUT_S), ""
    except RuntimeError as exc:
        took = time.monotonic() - run.t_launch
        why = (
            f"no {tool.ready!r} within {READY_TIMEOUT_S} s"
            if took >= READY_TIMEOUT_S
            else (f"exit status {run.proc.returncode} after {took:.0f} s")
        )
        # an "error:"/"Unable to" line says more than the traceback that follows it
        lines = [ln.strip() for ln in [*run.lines, *str(exc).splitlines()] if ln.strip()]
        errors = [ln for ln in lines if re.search(r"error:|Unable to|not found", ln)] + lines[-1:]
        return run, took, f"could not start ({why}): {errors[0]}"


def run_round(tools: list[Tool], pair: vmlab.NetnsPair) -> list[Round]:
    """Start the tools one after another, each attached before the next starts, then send the traffic
    once and stop them all: tools in one round see the same packets and the same softirqs."""
    rounds = [Round(t.name) for t in tools]
    running: list[Running] = []
    for tool, rnd in zip(tools, rounds, strict=True):
        run, rnd.ready_s, rnd.error = launch(tool, pair)
        if rnd.error:
            for other in running:
                other.stop(STOP_TIMEOUT_S)
            return rounds
        running.append(run)
    before = snmp(pair)
    time.sleep(SETTLE_S)
    send_traffic(pair)
    time.sleep(SETTLE_S)
    after = snmp(pair)
    truth = Truth(*(after[k] - before[k] for k in ("Udp.NoPorts", "Tcp.OutRsts", "Ip.InReceives")))
    for run, rnd in zip(running, rounds, strict=True):
        run.stop(STOP_TIMEOUT_S)
        if run.proc.returncode == -signal.SIGKILL:
            rnd.error = f"did not stop within {STOP_TIMEOUT_S} s of SIGINT (killed; output so far kept)"
        rnd.output = "\n".join(run.lines)
        rnd.truth = truth
    return rounds


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
    return lambda: "" if shutil.which(name) else f"{name} is not installed (make vm-peers installs it)"


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
            lambda p: [*netpath, "trace", "--stages", "all", "--netns", p.b, "--json"],
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


def plan_rounds(selected: list[str]) -> list[list[Tool]] | str:
    """Each tool alone, then netpath trace and softirqs together (the same softirq invocations, so their
    NET_RX times must agree). SELECTED picks rounds by name ("netpath trace+softirqs-bpfcc" for that one)."""
    by_name = {t.name: t for t in tools()}
    rounds = [[t] for t in by_name.values()] + [[by_name["netpath trace"], by_name["softirqs-bpfcc"]]]
    names = {"+".join(t.name for t in r): r for r in rounds}
    unknown = [n for n in selected if n not in names]
    if unknown:
        return f"unknown round {unknown[0]!r}; known: {', '.join(repr(n) for n in names)}"
    return [names[n] for n in selected] if selected else rounds


def print_round(tools: list[Tool], rounds: list[Round], took_s: float) -> None:
    for tool, rnd in zip(tools, rounds, strict=True):
        head = f"\n-- {tool.name}" + (" (together with the others in this round)" if len(tools) > 1 else "") + ": "
        if rnd.truth is None:
            say(head + (rnd.error[:300] or "stopped unused: another tool in this round could not start"))
            continue
        t = rnd.truth
        say(
            head + f"attached in {rnd.ready_s:.1f} s, round {took_s:.0f} s; "
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


def main(selected: list[str]) -> int:
    planned = plan_rounds(selected)
    if isinstance(planned, str):
        print(f"peers: {planned}", file=sys.stderr)
        return 2
    say(
        f"== peers on {os.uname().release}: each round sends {UDP_N} UDP datagrams and {TCP_N} TCP SYNs "
        f"to closed port {CLOSED_PORT} in a fresh namespace"
    )
    with vmlab.netns_pair() as pair:
        tcpdrop_started = False
        for round_tools in planned:
            names = [t.name for t in round_tools]
            if names == ["tcpdrop-bpfcc+compat"] and tcpdrop_started:
                continue  # the plain tool worked: no need for the prelude
            why_not = next((f"{t.name}: {w}" for t in round_tools if (w := t.needs())), "")
            if why_not:
                say(f"\n-- {'+'.join(names)}: not run: {why_not}")
                continue
            t0 = time.monotonic()
            rounds = run_round(round_tools, pair)
            if names == ["tcpdrop-bpfcc"] and not rounds[0].error:
                tcpdrop_started = True
            print_round(round_tools, rounds, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
