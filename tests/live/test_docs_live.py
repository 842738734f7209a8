"""Every netpath command line in README.md and the man pages' EXAMPLES runs here and exits as documented.

The lines are found, not listed (tests/doc_commands.py), so a command or page added later is run too.
Names a reader would replace are replaced by the test's own: the namespace it creates, its veth, a cgroup
that exists, a capture file in a temporary directory, a free port. Runs are cut to 1 s. Datagrams to a
closed port and a slow reader in the namespace keep every run busy. A line that cannot run on any
machine like this one (it needs TLS material the docs ask the reader to make) is left out by what it
needs, said in `NOT_HERE`, never by its text.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from doc_commands import command_lines, netpath_part
from netpath_testlib import REPO, free_udp_port, netpath_argv, veth_namespace

# options whose value a reader makes first (certificates, a web config): lines with them are not run
NOT_HERE = {"--web-config-file": "needs the TLS certificate and bcrypt hash the README makes first"}
RUN_S = "1"


def substitute(words: list[str], ns: str, ns_if: str, host_if: str, tmp: Path,
               saved: dict[str, str] | None = None) -> list[str]:
    """The documented argv with the reader's names replaced by this test's, and every run cut to 1 s.

    `saved` maps a documented `--save NAME` to the fresh file this run wrote, so a later `--load NAME` in the
    docs replays that one (a saved window is never overwritten, so each save needs a new file)."""
    saved = {} if saved is None else saved
    out: list[str] = []
    it = iter(words)
    in_ns = "--netns" in words
    for word in it:
        if word in ("--save", "--load"):
            value = next(it, "")
            if word == "--save":
                saved[value] = tempfile.mktemp(suffix=".json", dir=tmp)
            out += [word, saved.get(value, str(tmp / value))]
            continue
        if word in ("--netns", "--iface", "--cgroup", "--pcap", "--listen", "--duration"):
            value = next(it, "")
            out.append(word)
            if word == "--netns":
                out.append(ns)
            elif word == "--iface":
                out.append(ns_if if in_ns else host_if)
            elif word == "--cgroup":
                out.append("/")  # the root cgroup exists everywhere
            elif word == "--pcap":
                out.append("-" if value == "-" else tempfile.mktemp(suffix=".pcapng", dir=tmp))  # a new file each run
            elif word == "--listen":
                out.append(f"127.0.0.1:{free_udp_port()}")
            else:
                out.append(RUN_S)
            continue
        out.append(word)
    if (out[0] in ("drops", "trace", "export", "doctor") and "--duration" not in out and "--count" not in out
            and "--load" not in out):  # a replayed window has no duration of its own
        out += ["--duration", RUN_S]
    if out[0] == "follow" and "--duration" not in out:  # follow's --count is packets, which may never come here
        out += ["--duration", RUN_S]
    if out[0] == "export" and "--listen" not in out:  # never the default port another exporter may hold
        out += ["--listen", f"127.0.0.1:{free_udp_port()}"]
    if "--count" in out and "--interval" not in out:
        out += ["--interval", "0.5"]
    return out


def expected_exits(words: list[str]) -> set[int]:
    """0; a threshold option may be crossed by the traffic (1), as documented for every --fail-on."""
    return {0, 1} if any(w.startswith("--fail-on") for w in words) else {0}


def traffic(addr: str, stop: threading.Event) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while not stop.is_set():
            for port in (9, 53, 5353):
                s.sendto(b"x" * 16, (addr, port))
            time.sleep(0.01)


def documented_runs() -> list[tuple[str, str]]:
    seen: set[str] = set()
    out = []
    for where, line in command_lines():
        cmd = netpath_part(line).removeprefix("sudo ")
        if cmd not in seen:
            seen.add(cmd)
            out.append((where, cmd))
    return out


def test_every_documented_command_runs_and_exits_as_documented() -> None:
    runs = documented_runs()
    assert len(runs) > 20
    failures: list[str] = []
    skipped: list[str] = []
    saved: dict[str, str] = {}
    with veth_namespace("dc") as pair, tempfile.TemporaryDirectory() as tmp:
        stop = threading.Event()
        sender = threading.Thread(target=traffic, args=(pair.ns_addr, stop), daemon=True)
        sender.start()
        try:
            for where, cmd in runs:
                words = shlex.split(cmd.replace("$NS", pair.ns))[1:]  # without "netpath"
                needs = [why for opt, why in NOT_HERE.items() if opt in words]
                if needs:
                    skipped.append(f"{where}: {cmd}: {needs[0]}")
                    continue
                argv = substitute(words, pair.ns, pair.ns_if, pair.host_if, Path(tmp), saved) if words else []
                done = subprocess.run([*netpath_argv(), *argv], capture_output=True, timeout=120, cwd=tmp,
                                      env=dict(os.environ, COLUMNS="80"), check=False)  # bytes: --pcap - is pcapng
                err = done.stderr.decode(errors="replace")
                if done.returncode not in expected_exits(argv) or "Traceback" in err:
                    failures.append(f"{where}: netpath {' '.join(argv)} exited {done.returncode}: {err.strip()[-300:]}")
        finally:
            stop.set()
            sender.join()
    print(f"ran {len(runs) - len(skipped)} documented commands; not here: {skipped}", file=sys.stderr)
    assert not failures, "\n".join(failures)
    assert len(skipped) < len(runs) // 4


@pytest.mark.parametrize("argv, code", [([], 0), (["--help"], 0), (["drop"], 2), (["trace", "--bogus"], 2)])
def test_the_first_commands_a_newcomer_types(argv: list[str], code: int) -> None:
    done = subprocess.run([*netpath_argv(), *argv], capture_output=True, text=True, timeout=60, cwd=REPO,
                          check=False)
    assert done.returncode == code
    if code == 2:
        assert done.stderr.count("\n") == 1 and done.stdout == ""
    else:
        assert done.stdout.startswith("Usage: netpath") and done.stderr == ""
    assert re.search(r"Traceback", done.stderr) is None
