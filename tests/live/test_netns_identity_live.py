"""A deleted namespace's inode is reused within a second: rows and series stay apart by the namespace's
cookie, each under its own name (issue 22, class 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid

from netpath_testlib import REPO, NetpathRun, ip, netpath_argv, wait_served
from prometheus_client.parser import text_string_to_metric_families

CLOSED_PORT_DROPS = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                     "[s.sendto(b'x',('127.0.0.1',9)) for _ in range(int(sys.argv[1]))]")


COOKIE = ("import socket\ns=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n"
          "print(int.from_bytes(s.getsockopt(socket.SOL_SOCKET,71,8),'little'))")  # SO_NETNS_COOKIE


def make_ns(name: str) -> tuple[int, int]:
    """A namespace with lo up; (inode, cookie), read by the test itself."""
    ip("netns", "add", name)
    ip("-n", name, "link", "set", "lo", "up")
    cookie = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", COOKIE], capture_output=True,
                            text=True, check=True).stdout
    return os.stat(f"/run/netns/{name}").st_ino, int(cookie)


def drops_in(name: str, n: int) -> None:
    subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", CLOSED_PORT_DROPS, str(n)], check=True)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def test_a_reused_inode_never_merges_or_relabels_rows_or_series():
    tag = uuid.uuid4().hex[:5]
    port = 41000 + int(tag[:3], 16) % 2000
    run = NetpathRun(["drops", "--by", "reason,iface", "--json", "--interval", "0.5"])
    exporter = subprocess.Popen([*netpath_argv(), "export", "--listen", f"127.0.0.1:{port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    made: list[str] = []
    gone: dict[int, tuple[str, int]] = {}  # inode -> (name, cookie) of a deleted namespace
    reused: tuple[str, str, int] | None = None
    try:
        run.wait_start()
        wait_served(port)
        for i in range(40):
            name = f"npid{tag}{i}"
            inode, cookie = make_ns(name)
            made.append(name)
            if inode in gone:
                old_name, old_cookie = gone[inode]
                assert cookie != old_cookie  # the kernel never reuses a cookie
                drops_in(name, 7)
                time.sleep(0.8)
                scrape(port)
                reused = (old_name, name, inode)
                break
            drops_in(name, 5)
            time.sleep(0.8)  # an interval: the row is named while the namespace is there
            scrape(port)
            ip("netns", "del", name)
            gone[inode] = (name, cookie)
            time.sleep(0.3)
        assert reused is not None, "no namespace inode was reused in 40 tries"
        final = scrape(port)
        run.proc.send_signal(signal.SIGINT)
        rc, _records, err = run.finish()
    finally:
        exporter.terminate()
        exporter.communicate(timeout=30)
        for name in made:
            ip("netns", "del", name, check=False)
    assert rc == 0, err
    old_name, new_name, inode = reused
    rows = {(r["netns_label"], r["iface"]): r["count"] for r in run.summary()["rows"]
            if r["netns"] == inode and r["reason"] == "NO_SOCKET"}
    assert rows == {(old_name, "lo"): 5, (new_name, "lo"): 7}
    series = {s.labels["netns_label"]: s.value for fam in text_string_to_metric_families(final) for s in fam.samples
              if s.name == "netpath_drops_total" and s.labels.get("netns") == str(inode)
              and s.labels.get("reason") == "NO_SOCKET"}
    assert series == {old_name: 5.0, new_name: 7.0}
    assert os.path.exists(f"/run/netns/{new_name}") is False
