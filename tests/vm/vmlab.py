"""Helpers for the VM tier (tests that run inside the kernel lab guest, see vm/README.md).

Everything here only touches namespaces and interfaces it creates itself, with addresses in
10.200.0.0/16 inside those namespaces.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from netpath_testlib import link_mac

IN_VM = os.environ.get("NETPATH_VM") == "1"
SKIP_REASON = (
    "VM tier: runs only inside the kernel lab guest (NETPATH_VM=1 is set by vm/run.sh); run `make -f mk/vm.mk test-vm`"
)

_SUFFIX = re.compile(r"^(?:\.(?:isra|constprop|part)\.\d+)+$")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], check=False, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res


@cache
def _kallsyms_text() -> dict[str, list[str]]:
    """base name -> [full names] for text symbols of vmlinux (not modules)."""
    out: dict[str, list[str]] = {}
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) != 3 or parts[1] not in ("t", "T"):
                continue
            name = parts[2]
            base = name.split(".", 1)[0]
            if base != name and not _SUFFIX.match(name[len(base) :]):
                continue
            out.setdefault(base, []).append(name)
    return out


def resolve_symbols(name: str) -> list[str]:
    """The symbols to attach a kprobe to for function `name`: the exact symbol if present, plus any
    compiler clones (`name.isra.0`, `name.constprop.0`, `name.part.0`). Empty if none exists."""
    names = _kallsyms_text().get(name, [])
    exact = [n for n in names if n == name]
    return exact + sorted(n for n in names if n != name)


def kernel_config() -> dict[str, str]:
    path = Path(f"/boot/config-{os.uname().release}")
    cfg: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                k, v = line.split("=", 1)
                cfg[k] = v
    return cfg


@dataclass
class NetnsPair:
    """Two fresh namespaces `a` and `b` joined by a veth pair: a/`if_a` (`addr_a`) <-> b/`if_b` (`addr_b`)."""

    a: str
    b: str
    if_a: str
    if_b: str
    addr_a: str
    addr_b: str
    prefix: int = 24

    def cmd(self, ns: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def run(
        self, ns: str, argv: list[str], timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(self.cmd(ns, argv), check=False, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{argv} in {ns} exited {res.returncode}: {res.stderr.strip()}")
        return res

    def popen(self, ns: str, argv: list[str], **kw: object) -> subprocess.Popen[str]:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.cmd(ns, argv), text=True, **kw)  # type: ignore[call-overload]

    def python(self, ns: str, code: str, timeout: float = 120) -> str:
        return self.run(ns, [sys.executable, "-c", code], timeout=timeout).stdout

    def ifindex(self, ns: str, ifname: str) -> int:
        out = ip("-n", ns, "-o", "link", "show", "dev", ifname).stdout
        return int(out.split(":", 1)[0])


@contextmanager
def netns_pair(subnet: int | None = None) -> Iterator[NetnsPair]:
    """Create namespaces npa<tag>/npb<tag> and a veth pair between them (10.200.<subnet>.1/.2/24);
    the neighbour entries are static so no ARP round trip precedes the first packet."""
    tag = uuid.uuid4().hex[:6]
    n = subnet if subnet is not None else int(tag[:2], 16)
    pair = NetnsPair(
        a=f"npa{tag}", b=f"npb{tag}", if_a=f"va{tag}", if_b=f"vb{tag}", addr_a=f"10.200.{n}.1", addr_b=f"10.200.{n}.2"
    )
    ip("netns", "add", pair.a)
    try:
        ip("netns", "add", pair.b)
        ip("-n", pair.a, "link", "add", pair.if_a, "type", "veth", "peer", "name", pair.if_b, "netns", pair.b)
        for ns, dev, addr in ((pair.a, pair.if_a, pair.addr_a), (pair.b, pair.if_b, pair.addr_b)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "addr", "add", f"{addr}/{pair.prefix}", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        mac = {ns: link_mac(dev, ns) for ns, dev in ((pair.a, pair.if_a), (pair.b, pair.if_b))}
        ip("-n", pair.a, "neigh", "replace", pair.addr_b, "lladdr", mac[pair.b], "dev", pair.if_a, "nud", "permanent")
        ip("-n", pair.b, "neigh", "replace", pair.addr_a, "lladdr", mac[pair.a], "dev", pair.if_b, "nud", "permanent")
        yield pair
    finally:
        ip("netns", "del", pair.a, check=False)  # deleting a namespace deletes its veth end (and the peer)
        ip("netns", "del", pair.b, check=False)


UDP_SINK = r"""
import socket, sys, time
addr, port, want, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((addr, port))
print("ready", flush=True)
n = 0
deadline = time.monotonic() + timeout
s.settimeout(1.0)
while n < want and time.monotonic() < deadline:
    try:
        s.recv(65536)
        n += 1
    except socket.timeout:
        pass
print(n, flush=True)
"""

UDP_SEND = r"""
import socket, sys, time
addr, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
burst, pause = int(sys.argv[5]), float(sys.argv[6])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
payload = b"n" * size
for i in range(count):
    s.sendto(payload, (addr, port))
    if burst and (i + 1) % burst == 0:
        time.sleep(pause)
"""


class UdpSink:
    """A UDP receiver running inside a namespace; `wait()` returns how many datagrams it got."""

    def __init__(self, pair: NetnsPair, ns: str, addr: str, port: int, want: int, timeout: float = 60) -> None:
        self.proc = pair.popen(ns, [sys.executable, "-c", UDP_SINK, addr, str(port), str(want), str(timeout)])
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 120)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.proc.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"UDP sink did not start: {line!r} {err}")

    def wait(self, timeout: float = 180) -> int:
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise AssertionError(f"UDP sink failed: {err}")
        return int(out.strip().splitlines()[-1])


def send_udp(pair: NetnsPair, ns: str, addr: str, port: int, count: int, size: int = 32, burst: int = 0,
             pause: float = 0.0) -> None:
    """`count` datagrams; with `burst`, a `pause` after every `burst` of them (a real NIC's
    receiver can fall behind a sender under TCG, where a veth's cannot)."""
    pair.run(ns, [sys.executable, "-c", UDP_SEND, addr, str(port), str(count), str(size), str(burst), str(pause)])


TCP_SERVER = r"""
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port)); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    n += len(b)
print(n, flush=True)
"""

TCP_CLIENT = r"""
import socket, sys
addr, port, nbytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((addr, port), timeout=60)
s.sendall(b"t" * nbytes); s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
"""


def tcp_transfer(pair: NetnsPair, server_ns: str, server_addr: str, port: int, client_ns: str, nbytes: int) -> int:
    """Send nbytes over one TCP connection client_ns -> server_ns; returns bytes the server read."""
    srv = pair.popen(server_ns, [sys.executable, "-c", TCP_SERVER, server_addr, str(port)])
    assert srv.stdout is not None
    ready, _, _ = select.select([srv.stdout], [], [], 120)
    if not ready or srv.stdout.readline().strip() != "ready":
        srv.kill()
        raise AssertionError("TCP server did not start")
    pair.run(client_ns, [sys.executable, "-c", TCP_CLIENT, server_addr, str(port), str(nbytes)])
    out, err = srv.communicate(timeout=120)
    assert srv.returncode == 0, err
    return int(out.strip().splitlines()[-1])


def wait_until(pred, timeout: float = 10.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


# BCC 0.26 (Debian's python3-bpfcc) force-includes its own copy of uapi/linux/bpf.h, which predates
# struct bpf_rb_root/bpf_rb_node (6.3), bpf_refcount (6.4) and bpf_wq (6.10). The 6.12 kernel's
# include/linux/bpf.h takes __alignof__ of them, so any program that (indirectly) includes
# linux/bpf.h -- e.g. via linux/skbuff.h or net/sock.h -- fails to compile against the real 6.12
# headers. Prepend this to such a program's text (before its #includes) to supply them.
BCC_UAPI_COMPAT = r"""
#include <linux/version.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
struct bpf_rb_root { __u64 __opaque[2]; } __attribute__((aligned(8)));
struct bpf_rb_node { __u64 __opaque[4]; } __attribute__((aligned(8)));
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
struct bpf_refcount { __u32 __opaque[1]; } __attribute__((aligned(4)));
#endif
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 10, 0)
struct bpf_wq { __u64 __opaque[2]; } __attribute__((aligned(8)));
#endif
"""


# --- the real-NIC lab: two virtio-net NICs joined by a qemu hub (vm/run.sh, VM_REALNIC) ---

REALNIC_MACS = ("52:54:00:6e:70:01", "52:54:00:6e:70:02")


def nic_by_mac(mac: str) -> str | None:
    """The root-namespace interface with this MAC, if it is here (not moved to a namespace)."""
    for dev in Path("/sys/class/net").iterdir():
        try:
            if (dev / "address").read_text().strip() == mac:
                return dev.name
        except OSError:
            continue
    return None


def virtio_bus_name(ifname: str) -> str:
    """virtio8 for a virtio-net interface of the root namespace: the name its IRQ lines carry."""
    return Path(f"/sys/class/net/{ifname}/device").resolve().name


def irq_lines(prefix: str) -> dict[int, str]:
    """IRQ number -> action for the /proc/interrupts lines whose action starts with prefix."""
    out = {}
    for line in Path("/proc/interrupts").read_text().splitlines()[1:]:
        head, _, rest = line.partition(":")
        if head.strip().isdigit() and rest.split() and rest.split()[-1].startswith(prefix):
            out[int(head)] = rest.split()[-1]
    return out


def irq_counts(irqs: list[int]) -> dict[int, list[int]]:
    """IRQ number -> per-CPU counts from /proc/interrupts."""
    lines = Path("/proc/interrupts").read_text().splitlines()
    ncpu = len(lines[0].split())
    out = {}
    for line in lines[1:]:
        head, _, rest = line.partition(":")
        if head.strip().isdigit() and int(head) in irqs:
            out[int(head)] = [int(x) for x in rest.split()[:ncpu]]
    return out


def softnet() -> list[list[int]]:
    """/proc/net/softnet_stat, one row of columns per online CPU (0 processed, 1 dropped,
    2 time_squeeze, 9 received_rps)."""
    return [[int(c, 16) for c in line.split()] for line in Path("/proc/net/softnet_stat").read_text().splitlines()]


def ethtool_stats(pair: NetnsPair, ns: str, dev: str) -> dict[str, int]:
    """`ethtool -S` as the ethtool tool prints it: the ground truth for netpath's ioctl read."""
    out = {}
    for line in pair.run(ns, ["ethtool", "-S", dev]).stdout.splitlines()[1:]:
        name, _, value = line.strip().rpartition(":")
        if value.strip().isdigit():
            out[name.strip()] = int(value)
    return out


@dataclass
class RealNics(NetnsPair):
    """NetnsPair over the two virtio-net NICs; `bus_a`/`bus_b` are their virtio device names and
    `input_a`/`input_b` their receive-queue IRQ lines."""

    bus_a: str = ""
    bus_b: str = ""
    input_a: tuple[int, ...] = ()
    input_b: tuple[int, ...] = ()


@contextmanager
def _nics_in_namespaces(pair: NetnsPair, macs: tuple[str, str], what: str) -> Iterator[None]:
    """Move the two root-namespace NICs with these MACs into pair.a/pair.b, renamed pair.if_a/if_b, IPv6
    off before up and static neighbours, so the only frames on the wire are the ones a test sends.
    Deleting the namespaces returns the NICs (waited for, so the next user finds them)."""
    devs = [nic_by_mac(m) for m in macs]
    if None in devs:
        raise AssertionError(f"the lab guest has no {what} NICs {macs} (vm/run.sh: VM_REALNIC, VM_E1000, VM_RTL8139)")
    ip("netns", "add", pair.a)
    try:
        ip("netns", "add", pair.b)
        ends = ((devs[0], pair.a, pair.if_a, pair.addr_a), (devs[1], pair.b, pair.if_b, pair.addr_b))
        for dev, ns, name, addr in ends:
            ip("link", "set", "dev", str(dev), "down")
            ip("link", "set", "dev", str(dev), "netns", ns, "name", name)
            ip("-n", ns, "link", "set", "lo", "up")
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{name}.disable_ipv6=1"],
                           check=True, capture_output=True)
            ip("-n", ns, "addr", "add", f"{addr}/{pair.prefix}", "dev", name)
            ip("-n", ns, "link", "set", name, "up")
        mac = {pair.a: link_mac(pair.if_a, pair.a), pair.b: link_mac(pair.if_b, pair.b)}
        ip("-n", pair.a, "neigh", "replace", pair.addr_b, "lladdr", mac[pair.b], "dev", pair.if_a, "nud", "permanent")
        ip("-n", pair.b, "neigh", "replace", pair.addr_a, "lladdr", mac[pair.a], "dev", pair.if_b, "nud", "permanent")
        yield
    finally:
        ip("netns", "del", pair.a, check=False)
        ip("netns", "del", pair.b, check=False)
        # namespace teardown is asynchronous: wait for the NICs to be back for the next user
        wait_until(lambda: all(nic_by_mac(m) for m in macs), timeout=60)


@contextmanager
def realnic_pair(subnet: int = 250) -> Iterator[RealNics]:
    """Move the lab's two virtio-net NICs (joined to each other by qemu) into fresh namespaces
    npa<tag>/npb<tag>, renamed rna<tag>/rnb<tag> (see _nics_in_namespaces)."""
    devs = [nic_by_mac(m) for m in REALNIC_MACS]
    if None in devs:
        raise AssertionError(f"the lab guest has no virtio-net NICs {REALNIC_MACS} (vm/run.sh VM_REALNIC=1)")
    tag = uuid.uuid4().hex[:6]
    bus = [virtio_bus_name(d) for d in devs]  # type: ignore[arg-type]
    pair = RealNics(a=f"npa{tag}", b=f"npb{tag}", if_a=f"rna{tag}", if_b=f"rnb{tag}",
                    addr_a=f"10.200.{subnet}.1", addr_b=f"10.200.{subnet}.2", bus_a=bus[0], bus_b=bus[1],
                    input_a=tuple(irq_lines(f"{bus[0]}-input")), input_b=tuple(irq_lines(f"{bus[1]}-input")))
    with _nics_in_namespaces(pair, REALNIC_MACS, "virtio-net"):
        yield pair


# The second pair (vm/run.sh, VM_E1000=1): qemu's emulated e1000 on its own hub, the NIC
# whose full receive ring the guest can see (RNBC/MPC: rx_no_buffer_count, rx_missed_errors), though
# qemu never clears those registers on read, so the guest's counters grow at every read (vm/README.md).
E1000_MACS = ("52:54:00:6e:71:01", "52:54:00:6e:71:02")


def e1000_present() -> bool:
    subprocess.run(["modprobe", "e1000"], check=False, capture_output=True)
    return wait_until(lambda: all(nic_by_mac(m) for m in E1000_MACS), timeout=10)


def wait_carrier(pair: NetnsPair, timeout: float = 30) -> bool:
    """Both ends' carrier up: e1000's link comes up from its watchdog, a moment after `ip link set up`."""
    def up(ns: str, dev: str) -> bool:
        return pair.run(ns, ["cat", f"/sys/class/net/{dev}/carrier"], check=False).stdout.strip() == "1"
    return wait_until(lambda: up(pair.a, pair.if_a) and up(pair.b, pair.if_b), timeout=timeout, interval=0.5)


@contextmanager
def e1000_pair(subnet: int = 249) -> Iterator[NetnsPair]:
    """The lab's two e1000 NICs in fresh namespaces npa<tag>/npb<tag>, renamed rea<tag>/reb<tag>, as
    realnic_pair does for the virtio-net pair; yields once both carriers are up."""
    if not e1000_present():
        raise AssertionError(f"the lab guest has no e1000 NICs {E1000_MACS} (vm/run.sh VM_E1000=1)")
    tag = uuid.uuid4().hex[:6]
    pair = NetnsPair(a=f"npa{tag}", b=f"npb{tag}", if_a=f"rea{tag}", if_b=f"reb{tag}",
                     addr_a=f"10.200.{subnet}.1", addr_b=f"10.200.{subnet}.2")
    with _nics_in_namespaces(pair, E1000_MACS, "e1000"):
        if not wait_carrier(pair):
            raise AssertionError("the e1000 pair's carrier did not come up")
        yield pair


# The third pair (vm/run.sh, VM_RTL8139=1, on by default): qemu's rtl8139 on its own hub, driven by
# 8139cp (C+ mode), the one qemu NIC that drops a frame for a full receive ring and counts it exactly
# (MissPkt: ethtool -S rx_fifo; RxMissed: the link's rx_missed_errors). 8139too claims the same PCI id:
# the pair is moved to 8139cp if udev loaded 8139too first.
RTL8139_MACS = ("52:54:00:6e:72:01", "52:54:00:6e:72:02")


def _bind_8139cp(mac: str) -> None:
    dev = nic_by_mac(mac)
    if dev is None:
        return
    drv = Path(f"/sys/class/net/{dev}/device/driver")
    if drv.resolve().name == "8139cp":
        return
    pci = Path(f"/sys/class/net/{dev}/device").resolve().name
    (drv / "unbind").write_text(pci)
    Path("/sys/bus/pci/drivers/8139cp/bind").write_text(pci)


def rtl8139_present() -> bool:
    subprocess.run(["modprobe", "8139cp"], check=False, capture_output=True)
    if not wait_until(lambda: all(nic_by_mac(m) for m in RTL8139_MACS), timeout=10):
        return False
    for m in RTL8139_MACS:
        _bind_8139cp(m)
    return wait_until(lambda: all(nic_by_mac(m) for m in RTL8139_MACS), timeout=10)


@contextmanager
def rtl8139_pair(subnet: int = 248) -> Iterator[NetnsPair]:
    """The lab's two rtl8139 NICs (8139cp) in fresh namespaces npa<tag>/npb<tag>, renamed rta<tag>/rtb<tag>,
    as realnic_pair does for the virtio-net pair; yields once both carriers are up."""
    if not rtl8139_present():
        raise AssertionError(f"the lab guest has no rtl8139 NICs {RTL8139_MACS} (vm/run.sh VM_RTL8139=1)")
    tag = uuid.uuid4().hex[:6]
    pair = NetnsPair(a=f"npa{tag}", b=f"npb{tag}", if_a=f"rta{tag}", if_b=f"rtb{tag}",
                     addr_a=f"10.200.{subnet}.1", addr_b=f"10.200.{subnet}.2")
    with _nics_in_namespaces(pair, RTL8139_MACS, "rtl8139"):
        if not wait_carrier(pair):
            raise AssertionError("the rtl8139 pair's carrier did not come up")
        yield pair


def pktgen(pair: NetnsPair, ns: str, dev: str, dst: str, dst_mac: str, count: int, udp_port: int,
           size: int = 60, cpu: int = 0) -> None:
    """Send `count` UDP frames from `dev` with the kernel's packet generator (pktgen), which
    keeps a NIC's receive ring fuller than any user-space sender under TCG; `cpu`: the pktgen
    thread (kpktgend_N, bound to CPU N) that sends them."""
    subprocess.run(["modprobe", "pktgen"], check=True, capture_output=True)
    thread = f"kpktgend_{cpu}"
    cmds = [
        (thread, "rem_device_all"), (thread, f"add_device {dev}"),
        (dev, f"count {count}"), (dev, "clone_skb 0"), (dev, f"pkt_size {size}"), (dev, "delay 0"),
        (dev, f"dst {dst}"), (dev, f"dst_mac {dst_mac}"), (dev, f"udp_dst_min {udp_port}"),
        (dev, f"udp_dst_max {udp_port}"), ("pgctrl", "start"),
    ]
    script = "; ".join(f"echo '{c}' > /proc/net/pktgen/{f}" for f, c in cmds)
    pair.run(ns, ["sh", "-c", script], timeout=600)


LOAD_RX_PROGRAMS = r"""
import sys
from bcc import BPF
from pyroute2 import IPRoute
src, dev, drop, abort = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
b = BPF(src_file=src, cflags=[f"-DDROP_PORT={drop}", f"-DABORT_PORT={abort}"])
xdp = b.load_func("xdp_drop_port", BPF.XDP)
tc = b.load_func("tc_rx_pass", BPF.SCHED_CLS)
b.attach_xdp(dev, xdp, 0)
with IPRoute() as ipr:
    idx = ipr.link_lookup(ifname=dev)[0]
    ipr.tc("add", "clsact", idx)
    ipr.tc("add-filter", "bpf", idx, ":1", fd=tc.fd, name=tc.name.decode(), parent="ffff:fff2",
           classid=1, direct_action=True)
print("attached", flush=True)
"""


def attach_rx_programs(pair: NetnsPair, ns: str, dev: str, drop_port: int, abort_port: int) -> None:
    """XDP (drop/abort by UDP port) and a pass-all tc ingress program on `dev`; both stay
    attached after the loader exits, until detach_rx_programs."""
    src = str(Path(__file__).with_name("xdp_rx_test.c"))
    out = pair.run(ns, [sys.executable, "-c", LOAD_RX_PROGRAMS, src, dev, str(drop_port), str(abort_port)],
                   timeout=600).stdout
    assert "attached" in out, out


def detach_rx_programs(pair: NetnsPair, ns: str, dev: str) -> None:
    ip("-n", ns, "link", "set", "dev", dev, "xdp", "off", check=False)
    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "clsact"], check=False,
                   capture_output=True)
