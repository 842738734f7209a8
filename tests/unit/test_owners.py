"""Naming a socket inode, a holder and a reader from /proc shapes, without root."""

from __future__ import annotations

import os
from pathlib import Path

from netpath.collect import owners
from netpath.kernel.cgroups import CgroupTree
from netpath.model import SockInfo

DATA = Path(__file__).resolve().parent / "data"
UDP = (DATA / "proc-net-udp").read_text()  # captured shapes: a bound socket, a listener, header
UDP6 = (DATA / "proc-net-udp6").read_text()


def test_proc_net_addresses_are_host_order_words():
    v4 = owners.parse_proc_net(UDP, "udp", 4)
    assert v4 == {68055: SockInfo(68055, "udp", 4, "10.201.1.2", 40801)}  # inode 0: no socket, skipped
    v6 = owners.parse_proc_net(UDP6, "udp6", 6)
    assert v6 == {4242: SockInfo(4242, "udp", 6, "::1", 53)}
    assert owners.parse_proc_net("header only\n", "tcp", 4) == {}


def test_socket_holders_from_a_proc_tree(tmp_path):
    for pid, comm, links in ((300, "dnsd", ["socket:[68055]", "pipe:[1]"]), (100, "init", ["/dev/null"]),
                             (200, "dnsd-worker", ["socket:[68055]", "socket:[777]"])):
        fd = tmp_path / str(pid) / "fd"
        fd.mkdir(parents=True)
        (tmp_path / str(pid) / "comm").write_text(comm + "\n")
        for i, target in enumerate(links):
            os.symlink(target, fd / str(i))
    (tmp_path / "self").mkdir()
    held = owners.socket_holders(tmp_path)
    assert held == {68055: (200, "dnsd-worker"), 777: (200, "dnsd-worker")}  # the lowest pid holding it


def test_owner_of_a_socket_and_of_a_reader(tmp_path, monkeypatch):
    cg = tmp_path / "system.slice" / "dns.service"
    cg.mkdir(parents=True)
    (cg / "cgroup.procs").write_text("")
    resolver = owners.OwnerResolver(CgroupTree(tmp_path))
    monkeypatch.setattr(owners, "socket_holders", lambda: {68055: (321, "dnsd")})
    monkeypatch.setattr(owners.OwnerResolver, "_read_socks",
                        staticmethod(lambda _ns: owners.parse_proc_net(UDP, "udp", 4)))
    who = resolver.of_socket(68055, cg.stat().st_ino, None)
    assert (who.pid, who.comm, who.cgroup, who.container) == (321, "dnsd", "/system.slice/dns.service",
                                                             "systemd:dns.service")
    assert who.sock is not None and who.sock.lport == 40801
    nobody = resolver.of_socket(0, 0, None)
    assert (nobody.sock, nobody.pid, nobody.cgroup, nobody.container) == (None, None, None, None)
    monkeypatch.setattr(owners, "process_comm", lambda pid, proc=None: "reader")
    reader = resolver.of_reader(555, cg.stat().st_ino)
    assert (reader.pid, reader.comm, reader.sock) == (555, "reader", None)
