"""The traced variants: netpath commands and bpftrace peers, launched, timed to ready, measured, stopped."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.env import REPO, proc_cpu_s, proc_hwm_kb, sh

BT_DIR = Path(__file__).resolve().parent / "bpftrace"
EXPORT_PORT = int(os.environ.get("BENCH_EXPORT_PORT", "19872"))  # off the default, so a running exporter does not clash
PCAP_FILE = Path(f"/tmp/netpath-bench-{os.getpid()}.pcapng")  # root's own /tmp file, created 0600 by netpath
BT_DROP_LINE = re.compile(r"^@drops\[([^,]+), (.*)\]: (\d+)$")


def netpath_has(command: str) -> bool:
    """Whether this checkout's netpath has `command` (e.g. `trace`, written concurrently)."""
    try:
        rc = subprocess.run([sys.executable, "-m", "netpath", command, "--help"], capture_output=True,
                            cwd=REPO, timeout=60, check=False).returncode
    except subprocess.TimeoutExpired:
        return False
    return rc == 0


def bpftrace_check() -> tuple[bool, str]:
    """Does bpftrace run here, without kernel headers? The answer, and why not when it does not."""
    try:
        res = subprocess.run(["bpftrace", "-e", "tracepoint:skb:kfree_skb { @n = count(); } "
                              "interval:s:1 { exit(); }"], capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        return False, "bpftrace is not installed (make bench installs Debian's bpftrace)"
    except subprocess.TimeoutExpired:
        return False, "bpftrace did not finish a 1 s probe in 60 s"
    if "Attaching" in res.stdout and res.returncode == 0:
        return True, "ok: tracepoint args come from tracefs format files, no kernel headers needed"
    err = (res.stderr.strip().splitlines() or ["no output"])[-1]
    return False, f"bpftrace failed (rc={res.returncode}): {err}"


def drop_reason_names() -> dict[int, str]:
    """skb:kfree_skb's reason symbols from tracefs, to name bpftrace's numeric reasons."""
    for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        p = Path(base) / "events/skb/kfree_skb/format"
        if p.exists():
            text = p.read_text()
            return {int(n, 0): s for n, s in re.findall(r"\{\s*(0x[0-9a-fA-F]+|\d+),\s*\"(\w+)\"\s*\}", text)}
    return {}


@dataclass
class Variant:
    name: str
    kind: str  # untraced | netpath | bpftrace | other (ready = a substring of its output)
    argv: list[str] = field(default_factory=list)
    ready: str = ""  # what marks "attached"
    available: bool = True
    why_not: str = ""
    stdin_lines: tuple[str, ...] = ()  # typed at the tool's prompt once it runs (dropwatch's "start")
    stop_lines: tuple[str, ...] = ()  # typed after SIGINT, before stdin closes
    env: dict[str, str] = field(default_factory=dict)  # added to the environment
    cwd: str = ""  # run from here (a baseline checkout: `python -m netpath` imports the cwd's netpath)


def variants(with_trace: bool, bt_ok: bool, bt_why: str) -> list[Variant]:
    np = [sys.executable, "-m", "netpath"]
    bt = ["bpftrace", "-B", "line"]
    out = [
        Variant("untraced", "untraced"),
        Variant("netpath drops", "netpath", [*np, "drops", "--json", "--interval", "1"], "start line"),
        Variant("netpath trace", "netpath", [*np, "trace", "--json", "--interval", "1"], "start line",
                with_trace, "" if with_trace else "`netpath trace` does not exist in this checkout yet"),
        # attribution costs only when asked for: the same drops program keyed by socket (and its cgroup)
        Variant("netpath drops --by socket", "netpath",
                [*np, "drops", "--json", "--interval", "1", "--by", "reason,location,iface,proto,socket"],
                "start line"),
        # the dropped packets themselves (issue 20): the default cap and snaplen, into a file replaced each launch
        Variant("netpath drops --pcap", "netpath",
                [*np, "drops", "--json", "--interval", "1", "--pcap", str(PCAP_FILE), "--force"], "start line"),
        # the exporter's default profile; its ready line goes to stderr, hence the shell
        Variant("netpath export", "other", ["sh", "-c", f"exec {shlex.join(np)} export --listen 127.0.0.1:{EXPORT_PORT}"
                                            " 2>&1"], "serving http://",
                netpath_has("export"), "" if netpath_has("export") else "no `netpath export` in this checkout"),
        # the exporter's other profiles: drops only (the default before issue 21), and every per-packet stage
        *(Variant(f"netpath export --stages {st}", "other",
                  ["sh", "-c", f"exec {shlex.join(np)} export --listen 127.0.0.1:{EXPORT_PORT} --stages {st} 2>&1"],
                  "serving http://", netpath_has("export"),
                  "" if netpath_has("export") else "no `netpath export` in this checkout")
          for st in ("none", "socket_queue", "packet")),
        Variant("netpath trace --stages all", "netpath", [*np, "trace", "--json", "--interval", "1", "--stages", "all"],
                "start line", with_trace, "" if with_trace else "no `netpath trace` in this checkout"),
        Variant("netpath trace --exact", "netpath", [*np, "trace", "--json", "--interval", "1", "--exact"],
                "start line", with_trace, "" if with_trace else "no `netpath trace` in this checkout"),
        Variant("bpftrace drops", "bpftrace", [*bt, str(BT_DIR / "drops.bt")], "Attaching N probes",
                bt_ok, "" if bt_ok else bt_why),
        Variant("bpftrace stages", "bpftrace", [*bt, str(BT_DIR / "stages.bt")], "Attaching N probes",
                bt_ok, "" if bt_ok else bt_why),
    ]
    base = os.environ.get("BENCH_BASELINE", "")  # an unpacked older checkout (git archive REV | tar -x -C DIR)
    if base and Path(base, "netpath").is_dir():
        tag = os.environ.get("BENCH_BASELINE_NAME", Path(base).name)
        out += [
            Variant(f"{tag} drops", "netpath", [*np, "drops", "--json", "--interval", "1"], "start line", cwd=base),
            Variant(f"{tag} trace", "netpath", [*np, "trace", "--json", "--interval", "1"], "start line", cwd=base),
            Variant(f"{tag} export", "other", ["sh", "-c", f"exec {shlex.join(np)} export --listen "
                                                     f"127.0.0.1:{EXPORT_PORT} 2>&1"], "serving http://", cwd=base),
            # the exporter's drops-only profile: its cost is the drops program's
            Variant(f"{tag} export --stages none", "other",
                    ["sh", "-c", f"exec {shlex.join(np)} export --listen 127.0.0.1:{EXPORT_PORT} --stages none 2>&1"],
                    "serving http://", cwd=base),
        ]
    return out


class Scraper:
    """GET /metrics once a second while the workload runs, as a Prometheus scraping every second would: the
    exporter's figures then include its reading and encoding, not only its hooks. Counts scrapes and failures."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.done = threading.Event()
        self.ok = 0
        self.failed = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.done.wait(1.0):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    resp.read()
                self.ok += 1
            except OSError:
                self.failed += 1

    def __enter__(self) -> Scraper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def scraped(v: Variant) -> bool:
    """The exporter's variants (this tree's and a baseline's) are scraped every second during the workload."""
    return v.ready == "serving http://"


class Running:
    """A launched tool: stdout read on a thread, start-up timed to its ready line."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.t_launch = time.monotonic()
        self.t_ready: float | None = None
        talks = bool(variant.stdin_lines or variant.stop_lines)
        self.proc = subprocess.Popen(variant.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=variant.cwd or REPO, start_new_session=True,
                                     stdin=subprocess.PIPE if talks else None,
                                     env={**os.environ, **variant.env} if variant.env else None)
        self._type(variant.stdin_lines, close=False)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.cpu_mark = 0.0

    def _type(self, lines: tuple[str, ...], close: bool) -> None:
        if self.proc.stdin is None:
            return
        try:
            for line in lines:
                self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            if close:
                self.proc.stdin.close()
        except BrokenPipeError:
            pass

    def _is_ready(self, line: str) -> bool:
        if self.variant.kind == "bpftrace":
            return line.startswith("Attaching ")
        if self.variant.kind == "other":
            return self.variant.ready in line
        if line.startswith("{"):
            try:
                return json.loads(line).get("type") == "start"
            except json.JSONDecodeError:
                return False
        return False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            self.lines.append(line)
            if not self.ready.is_set() and self._is_ready(line):
                self.t_ready = time.monotonic()
                self.ready.set()
        self.ready.set()

    def wait_ready(self, timeout: float = 60.0) -> float:
        self.ready.wait(timeout)
        if self.t_ready is None:
            err = self.stop()  # stop() has read stderr already
            raise RuntimeError(f"{self.variant.name} did not become ready: rc={self.proc.returncode} {err[-500:]}")
        return self.t_ready - self.t_launch

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def hwm_mb(self) -> float:
        return proc_hwm_kb(self.proc.pid) / 1024

    def stop(self, timeout: float = 30.0) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self._type(self.variant.stop_lines, close=True)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return self.proc.stderr.read() if self.proc.stderr else ""

    def records(self) -> list[dict[str, object]]:
        out = []
        for line in self.lines:
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out

    def summary(self) -> dict[str, object] | None:
        return next((r for r in reversed(self.records()) if r.get("type") == "summary"), None)

    def bt_drops(self, names: dict[int, str]) -> dict[str, int]:
        """bpftrace drops.bt output summed per reason name."""
        out: dict[str, int] = {}
        for line in self.lines:
            m = BT_DROP_LINE.match(line.strip())
            if not m:
                continue
            raw = m.group(1).strip()
            reason = names.get(int(raw), raw) if raw.isdigit() else raw.removeprefix("SKB_DROP_REASON_")
            out[reason] = out.get(reason, 0) + int(m.group(3))
        return out


def netpath_drop_count(summary: dict[str, object] | None, netns_inode: int, reason: str) -> int | None:
    if summary is None:
        return None
    rows = summary.get("rows") or []
    return sum(int(r["count"]) for r in rows  # type: ignore[union-attr]
               if r.get("reason") == reason and r.get("netns") in (netns_inode, None))  # type: ignore[union-attr]


def netpath_lost(summary: dict[str, object] | None) -> dict[str, int] | None:
    """Every health field whose name says something was lost or skipped."""
    if summary is None:
        return None
    health = summary.get("health") or {}
    return {k: int(v) for k, v in health.items()  # type: ignore[union-attr]
            if isinstance(v, int) and any(w in k for w in ("lost", "skipped", "full", "drop"))}


def py_spy(pid: int, seconds: int, out: Path) -> list[tuple[str, int]]:
    """Profile the netpath process with py-spy; the hottest frames (own samples)."""
    pyspy = Path(sys.executable).parent / "py-spy"
    if not pyspy.exists():
        return [("py-spy not installed", 0)]
    res = sh(str(pyspy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200", "--format",
             "raw", "--nonblocking", "--output", str(out), check=False, timeout=seconds + 60)
    if res.returncode != 0 or not out.exists():
        return [(f"py-spy failed: {res.stderr.strip()[-200:]}", 0)]
    leaf: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        total += int(n)
        # own time: the deepest frame
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + int(n)
    ranked = sorted(leaf.items(), key=lambda kv: -kv[1])[:8]
    return [("TOTAL samples", total), *ranked]


def startup_profile(argv: list[str], out: Path) -> list[tuple[str, int]]:
    """py-spy over a netpath launch to its first interval: inclusive samples per netpath/bcc function."""
    pyspy = Path(sys.executable).parent / "py-spy"
    if not pyspy.exists():
        return [("py-spy not installed", 0)]
    res = sh(str(pyspy), "record", "--rate", "500", "--format", "raw", "--output", str(out), "--", *argv,
             check=False, timeout=120)
    if not out.exists():
        return [(f"py-spy failed: {res.stderr.strip()[-200:]}", 0)]
    incl: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        for frame in set(stack.split(";")):
            if any(k in frame for k in ("netpath/", "bcc/", "pyroute2/")) and "__main__" not in frame:
                name = re.sub(r":\d+\)$", ")", frame)
                incl[name] = incl.get(name, 0) + int(n)
    ranked = sorted(incl.items(), key=lambda kv: -kv[1])[:20]
    return [("TOTAL samples (2 ms each)", total), *ranked]
