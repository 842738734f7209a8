"""netpath trace: build bpf/trace.c from the attach plan, load it, read its maps."""

from __future__ import annotations

import ctypes
import ipaddress
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netpath import bpf, netns
from netpath.collect import hist
from netpath.errors import MissingCapability
from netpath.filter_defines import filter_defines
from netpath.kernel import offsets as kernel_offsets
from netpath.kernel.facts import KernelFacts
from netpath.plan import AttachPlan
from netpath.stages import STAGES

MAX_SKBS = 65536
HIST_ROWS = 16384
NEEDED = ("OFF_SKB_DEV", "OFF_SKB_HEAD", "OFF_SKB_DATA", "OFF_SKB_PROTOCOL", "OFF_SKB_NETWORK_HEADER",
          "OFF_SKB_SKB_IIF", "OFF_DEV_IFINDEX", "OFF_DEV_ND_NET", "OFF_NET_NS_INUM", "OFF_SK_NET",
          "OFF_SK_RCVQ", "OFF_SK_RCVQ_PREV", "OFF_NAPI_DEV", "OFF_SK_FAMILY", "OFF_SK_PROTOCOL")

# enum np_hook in bpf/trace.c, in order; the names are what health.probe_hits reports
HOOK_NAMES = (
    "irq:irq_handler_entry", "irq:irq_handler_exit", "irq:softirq_raise", "irq:softirq_entry",
    "irq:softirq_exit", "napi:napi_poll", "net:napi_gro_receive_entry", "net:napi_gro_receive_exit",
    "net:netif_rx", "net:netif_receive_skb_entry", "net:netif_receive_skb_list_entry", "net:netif_receive_skb",
    "sock:sk_data_ready", "skb:skb_copy_datagram_iovec", "skb:consume_skb", "skb:kfree_skb",
    "sock:sock_recv_length",
    "ip_rcv", "ipv6_rcv", "ip_local_deliver", "ip6_input", "tcp_v4_rcv", "tcp_v6_rcv", "udp_rcv", "udpv6_rcv",
    "net_rx_action", "net_rx_action:return", "sock_def_readable",
)
RING_SLOTS = 128  # datagrams timed per UDP socket queue; a power of two
STAT_NAMES = ("lost_rows", "lost_skbs", "slow_sent", "missed_enqueue", "ring_overrun")
KPROBE_FNS: dict[str, list[tuple[str, str]]] = {
    "ip_rcv": [("entry", "kp_ip_rcv")],
    "ipv6_rcv": [("entry", "kp_ipv6_rcv")],
    "ip_local_deliver": [("entry", "kp_ip_local_deliver")],
    "ip6_input": [("entry", "kp_ip6_input")],
    "tcp_v4_rcv": [("entry", "kp_tcp_v4_rcv")],
    "tcp_v6_rcv": [("entry", "kp_tcp_v6_rcv")],
    "udp_rcv": [("entry", "kp_udp_rcv")],
    "udpv6_rcv": [("entry", "kp_udpv6_rcv")],
    "net_rx_action": [("entry", "kp_net_rx_action"), ("return", "kr_net_rx_action")],
    "sock_def_readable": [("entry", "kp_sock_def_readable")],
}
PER_SKB_DEFINES = ("USE_CORE", "USE_STACK_TOTAL", "USE_SOCKQ", "USE_KP_IP_RCV", "USE_KP_IP_LOCAL", "USE_KP_TCP",
                   "USE_KP_UDP")

HIST_KEY = struct.Struct("<HHIII")
NAPI_KEY = struct.Struct("<III")
# struct np_slow_event
SLOW_FORMAT = struct.Struct("<Q6QIIII16s16sHHBBH16s")
SLOW_STAGES = ("netif_receive_skb", "ip_rcv", "ip_local_deliver", "transport", "stack_total", "socket_queue")


@dataclass
class TraceQuery:
    netns: netns.Netns | None = None
    iface_keys: list[tuple[int, int]] = field(default_factory=list)
    proto: str | None = None
    port: int | None = None
    host: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    per_iface: bool = False
    per_cpu: bool = False
    slower_ns: int = 0


# neighbouring fields bpf/trace.c fetches with one probe read, beyond the shared ones
TRACE_SPANS: kernel_offsets.SpanGroups = {
    "SKB_RX_SPAN": (("OFF_SKB_PROTOCOL", "OFF_SKB_HEAD", "OFF_SKB_DATA"), 64),
    "SK_SPAN": (("OFF_SK_FAMILY", "OFF_SK_NET", "OFF_SK_RCVQ_PREV"), 192),
}


def trace_spans(offsets: dict[str, int]) -> dict[str, int]:
    return kernel_offsets.spans(offsets, TRACE_SPANS)


def program_source(query: TraceQuery, plan: AttachPlan, offsets: dict[str, int]) -> bpf.ProgramSource:
    """Pure: bpf/trace.c and every number it is compiled with."""
    missing = [n for n in NEEDED if n not in offsets]
    if missing:
        raise MissingCapability(f"this kernel's BTF lacks struct fields netpath reads: {', '.join(missing)}")
    defines = {name: offsets[name] for name in NEEDED}
    defines.update(kernel_offsets.spans(offsets))
    defines.update(trace_spans(offsets))
    defines.update(plan.defines())
    defines["TRACK_SKBS"] = int(any(d in defines for d in PER_SKB_DEFINES))
    defines["MAX_SKBS"] = MAX_SKBS
    defines["RING"] = RING_SLOTS
    defines["HIST_ROWS"] = HIST_ROWS
    defines["BY_IFACE"] = int(query.per_iface)
    defines["BY_CPU"] = int(query.per_cpu)
    defines["SLOWER_NS"] = int(query.slower_ns)
    defines.update(filter_defines(query.netns, query.iface_keys, query.proto, query.port, query.host))
    return bpf.ProgramSource(["where.c", "trace.c"], defines)


_IRQ_LINE = re.compile(r"^\s*(\d+):(?:\s+\d+)+\s+(.*)$")


def nic_irqs(proc_interrupts: str, devices: dict[str, tuple[int, str | None]]) -> dict[int, int]:
    """IRQ number -> ifindex for the NIC interrupt lines in /proc/interrupts.

    `devices`: iface name -> (ifindex, bus device name such as virtio2 or 0000:00:03.0).
    A line is a NIC line when its action names the interface (eth0-rx-0, ens5-TxRx-1)
    or is a virtio device's input queue (virtio2-input.0).
    """
    out: dict[int, int] = {}
    for line in proc_interrupts.splitlines():
        m = _IRQ_LINE.match(line)
        if not m:
            continue
        action = m.group(2).split()[-1] if m.group(2).split() else ""
        for name, (ifindex, busdev) in devices.items():
            if re.match(rf"^{re.escape(name)}([-_:@].*)?$", action) or (
                busdev and busdev.startswith("virtio") and action.startswith(f"{busdev}-input")
            ):
                out[int(m.group(1))] = ifindex
                break
    return out


def local_devices(sysfs: Path = Path("/sys/class/net")) -> dict[str, tuple[int, str | None]]:
    out: dict[str, tuple[int, str | None]] = {}
    try:
        entries = list(sysfs.iterdir())
    except OSError:
        return out
    for entry in entries:
        try:
            index = int((entry / "ifindex").read_text())
        except (OSError, ValueError):
            continue
        dev = entry / "device"
        busdev = dev.resolve().name if dev.exists() else None
        out[entry.name] = (index, busdev)
    # A NIC moved into another namespace leaves this one's /sys/class/net, but its interrupt lines
    # stay: keep every virtio-net device of the bus (ifindex 0: not known from here). The key has a
    # '/', which no interface name can, so only the device's input lines match it, not its
    # config or output lines.
    try:
        bound = list((sysfs.parent.parent / "bus/virtio/drivers/virtio_net").glob("virtio*"))
    except OSError:
        bound = []
    seen = {busdev for _, busdev in out.values()}
    for dev in bound:
        if dev.name not in seen:
            out[f"{dev.name}/"] = (0, dev.name)
    return out


@dataclass
class SlowPacket:
    ts_ns: int
    cpu: int
    pid: int
    comm: str
    ifindex: int
    netns: int
    family: int
    proto: str | None
    saddr: str | None
    daddr: str | None
    sport: int | None
    dport: int | None
    stages_ns: dict[str, int]


def decode_slow(raw: bytes) -> SlowPacket:
    f = SLOW_FORMAT.unpack(raw[: SLOW_FORMAT.size])
    ts, stage_ns = f[0], f[1:7]
    cpu, pid, ifindex, ns_inode, saddr, daddr, sport, dport, family, l4, _pad, comm = f[7:]

    def addr(b: bytes) -> str | None:
        if family == 4:
            return str(ipaddress.IPv4Address(b[:4]))
        if family == 6:
            return str(ipaddress.IPv6Address(b))
        return None

    proto = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}.get(l4, f"ipproto-{l4}") if family else None
    return SlowPacket(ts, cpu, pid, comm.split(b"\0")[0].decode(errors="replace"), ifindex, ns_inode, family,
                      proto, addr(saddr), addr(daddr), sport if family else None, dport if family else None,
                      {name: int(v) for name, v in zip(SLOW_STAGES, stage_ns, strict=True) if v})


HistKey = tuple[int, int, int, int]  # stage index, ifindex, netns, cpu


@dataclass
class Reading:
    """Cumulative slot counts, this interval's maxima, NAPI counters and hook hits."""

    slots: dict[HistKey, dict[int, int]]
    maxima: dict[HistKey, int]
    napi: dict[tuple[int, int, int], dict[str, int]]
    hits: dict[str, int]
    stats: dict[str, int]


class TraceCollector:
    def __init__(self, query: TraceQuery, plan: AttachPlan, facts: KernelFacts, source: bpf.ProgramSource) -> None:
        self.query = query
        self.plan = plan
        self.facts = facts
        self.source = source
        self.prog: Any = None
        self.slow: list[SlowPacket] = []
        self.slow_lost = 0
        self.failed: list[dict[str, str]] = []  # planned hooks the kernel refused at attach time
        self._attached: list[dict[str, str]] = []

    def start(self) -> None:
        self.prog = bpf.compile_program(self.source, self.facts)
        irqs = nic_irqs(_read("/proc/interrupts"), local_devices())
        table = self.prog["nic_irqs"]
        for irq, ifindex in irqs.items():
            table[table.Key(irq)] = table.Leaf(ifindex)
        if self.query.iface_keys:
            filt = self.prog["iface_filter"]
            for ns_inode, ifindex in self.query.iface_keys:
                filt[filt.Key((ns_inode << 32) | ifindex)] = filt.Leaf(1)
        for hook, symbol in self.plan.kprobes():
            for kind, fn in KPROBE_FNS.get(hook, []):
                try:
                    if kind == "entry":
                        self.prog.attach_kprobe(event=symbol, fn_name=fn)
                    else:
                        self.prog.attach_kretprobe(event=symbol, fn_name=fn)
                except Exception as exc:  # bcc raises bare Exception; the rest of the plan still runs
                    self.failed.append({"stage": self._stage_of(hook), "hook": symbol,
                                        "reason": f"kprobe {symbol} did not attach: {exc}"})
                    continue
                self._attached.append({"hook": symbol if kind == "entry" else f"{symbol}:return",
                                       "method": "kretprobe" if kind == "return" else "kprobe"})
        tps = [{"hook": tp, "method": "raw_tracepoint"} for tp in self.plan.tracepoints()]
        self._attached = tps + self._attached
        if self.query.slower_ns:
            self.prog["slow"].open_perf_buffer(self._on_slow, page_cnt=64, lost_cb=self._on_lost)

    def _stage_of(self, hook: str) -> str:
        return next((c.stage.id for c in self.plan.available if hook in c.hooks), hook)

    def attached(self) -> list[dict[str, str]]:
        return list(self._attached)

    def read(self) -> Reading:
        if self.query.per_iface:
            slots, maxima = self._read_hash()
        else:
            slots, maxima = self._read_arrays()
        state = self.prog["cpustate"]
        per_cpu = state.getvalue(state.Key(0))  # hook hits, and the NAPI counters without --per-iface
        napi: dict[tuple[int, int, int], dict[str, int]] = {}
        if self.query.per_iface:
            for key, values in self.prog["napi_stats"].items():
                ifindex, ns_inode, cpu = NAPI_KEY.unpack(bytes(key)[: NAPI_KEY.size])
                napi[(ifindex, ns_inode, cpu)] = _napi_sum(values)
        else:
            by_cpu: dict[tuple[int, int, int], list[Any]] = {}
            for cpu, value in enumerate(per_cpu):
                if value.napi.polls:
                    by_cpu.setdefault((0, 0, cpu if self.query.per_cpu else 0), []).append(value.napi)
            napi = {key: _napi_sum(values) for key, values in by_cpu.items()}
        counts = [sum(int(v.hits[i]) for v in per_cpu) for i in range(len(HOOK_NAMES) + len(STAT_NAMES))]
        wanted = set(self.plan.tracepoints()) | {h for h, _ in self.plan.kprobes()}
        hits = {name: counts[i] for i, name in enumerate(HOOK_NAMES) if name.split(":return")[0] in wanted}
        stats = dict(zip(STAT_NAMES, counts[len(HOOK_NAMES):], strict=True))
        return Reading(slots, maxima, napi, hits, stats)

    def _read_arrays(self) -> tuple[dict[HistKey, dict[int, int]], dict[HistKey, int]]:
        """Per-CPU arrays indexed by stage: slots cumulative, maxima zeroed after each read."""
        slots: dict[HistKey, dict[int, int]] = {}
        maxima: dict[HistKey, int] = {}
        table, max_table = self.prog["stage_hist"], self.prog["stage_max"]
        for stage in STAGE_BY_INDEX:
            per_cpu = table.getvalue(table.Key(stage))
            maxes = max_table.getvalue(max_table.Key(stage))
            max_table[max_table.Key(stage)] = max_table.Leaf(*([0] * len(maxes)))
            for cpu, value in enumerate(per_cpu):
                counts = {i: int(n) for i, n in enumerate(value.slots) if n}
                if not counts:
                    continue
                key = (stage, 0, 0, cpu if self.query.per_cpu else 0)
                into = slots.setdefault(key, {})
                for slot, n in counts.items():
                    into[slot] = into.get(slot, 0) + n
                maxima[key] = max(maxima.get(key, 0), int(maxes[cpu]))
        return slots, maxima

    def _read_hash(self) -> tuple[dict[HistKey, dict[int, int]], dict[HistKey, int]]:
        slots: dict[HistKey, dict[int, int]] = {}
        maxima: dict[HistKey, int] = {}
        table = self.prog["hist"]
        max_keys = []
        for key, values in table.items():
            raw = bytes(key)
            stage, slot, ifindex, ns_inode, cpu = HIST_KEY.unpack(raw[: HIST_KEY.size])
            hk = (stage, ifindex, ns_inode, cpu)
            if slot == hist.MAX_SLOT:
                maxima[hk] = max(int(v) for v in values)
                max_keys.append(key)
            else:
                slots.setdefault(hk, {})[slot] = sum(int(v) for v in values)
        for key in max_keys:  # maxima are per interval
            try:
                del table[key]
            except KeyError:
                pass
        return slots, maxima

    def poll(self, timeout_s: float) -> None:
        if self.query.slower_ns:
            self.prog.perf_buffer_poll(timeout=max(int(timeout_s * 1000), 1))
        else:
            time.sleep(timeout_s)

    def _on_slow(self, _cpu: int, data: Any, size: int) -> None:
        raw = ctypes.string_at(data, min(size, SLOW_FORMAT.size))
        if len(raw) >= SLOW_FORMAT.size:
            self.slow.append(decode_slow(raw))

    def _on_lost(self, lost: int) -> None:
        self.slow_lost += lost

    def close(self) -> None:
        if self.prog is not None:
            self.prog.cleanup()
            self.prog = None


def _napi_sum(values: list[Any]) -> dict[str, int]:
    return {
        "polls": sum(int(v.polls) for v in values),
        "work": sum(int(v.work) for v in values),
        "exhausted": sum(int(v.exhausted) for v in values),
        "budget": max(int(v.budget) for v in values),
        "max_work": max(int(v.max_work) for v in values),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


STAGE_BY_INDEX = {s.index: s for s in STAGES}
