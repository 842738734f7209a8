"""Rules about the NIC: its receive ring and port buffers (per driver), and damage on the link.

Every driver names its drop counters its own way, and the same word means different things (a "discard"
is a full ring on one NIC and a full port buffer on another), so nic-ring-overrun carries a table per
driver: which `ethtool -S` counter counts what, and so which knob helps. Drivers not in the table fall
back to the kernel's own link stats (rx_missed_errors, rx_fifo_errors, rx_over_errors: what the driver
reports through ndo_get_stats64, include/uapi/linux/if_link.h), the netdev qstats (rx-hw-drops,
rx-hw-drop-overruns, rx-alloc-fail: Documentation/netlink/specs/netdev.yaml) and names that say "missed"
or "no buffer".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from netpath.diagnose.observe import Observation, knob, ns_where
from netpath.model import Counter, Evidence, Finding, FindingWhere, Knob, NicSettings


@dataclass(frozen=True)
class DriverCounter:
    pattern: str  # a regex on the ethtool -S name (per-queue names included)
    kind: str  # ring: no free RX descriptor; port: the NIC's own buffer; policer: a cloud allowance; alloc
    meaning: str


def _dc(pattern: str, kind: str, meaning: str) -> DriverCounter:
    return DriverCounter(pattern, kind, meaning)


RING = "the driver had no free receive descriptor: the host did not refill the ring in time"
PORT = "the NIC's own packet buffer overflowed before the host could take the packets (PCIe, too few queues)"
ALLOC = "the driver could not allocate a buffer to refill the ring (memory)"

# driver (as ethtool -i names it) -> its receive drop counters. Sources: each driver's documentation under
# Documentation/networking/device_drivers/ethernet/ (mlx5/counters.rst, intel/ixgbe.rst, intel/ice.rst,
# amazon/ena.rst) and its ethtool strings table.
DRIVERS: dict[str, tuple[DriverCounter, ...]] = {
    "mlx5_core": (_dc(r"^rx_out_of_buffer$", "ring", RING + " (no receive WQE)"),
                  _dc(r"^rx_discards_phy$", "port", PORT),
                  _dc(r"^rx\d*_buff_alloc_err$", "alloc", ALLOC)),
    "ixgbe": (_dc(r"^rx_no_dma_resources$", "ring", RING),
              _dc(r"^rx_missed_errors$", "port", PORT + " (packet buffer full)"),
              _dc(r"^alloc_rx_buff_failed$", "alloc", ALLOC)),
    "igb": (_dc(r"^rx_no_buffer_count$", "ring", RING),
            _dc(r"^rx_missed_errors$", "port", PORT),
            _dc(r"^rx_queue_\d+_alloc_failed$", "alloc", ALLOC)),
    # e1000e (82571-82574, ICH/PCH): drivers/net/ethernet/intel/e1000e/netdev.c's e1000e_update_stats adds
    # RNBC into stats.rnbc and MPC into stats.mpc, which ethtool.c names rx_no_buffer_count and
    # rx_missed_errors. qemu's emulated e1000e never moves either (it holds the frame back, vm/README.md).
    "e1000e": (_dc(r"^rx_no_buffer_count$", "ring", RING),
               _dc(r"^rx_missed_errors$", "port", PORT)),
    # e1000 (82540-82547, and qemu's emulated e1000): drivers/net/ethernet/intel/e1000/e1000_ethtool.c names
    # stats.rnbc rx_no_buffer_count and stats.mpc rx_missed_errors; e1000_main.c's e1000_update_stats adds
    # the RNBC (receive descriptor ring empty) and MPC (missed: packet buffer full) registers into them and
    # copies mpc into the link's rx_missed_errors. One queue only, so no per-queue names.
    "e1000": (_dc(r"^rx_no_buffer_count$", "ring", RING),
              _dc(r"^rx_missed_errors$", "port", PORT + " (packet buffer full)")),
    # 8139cp (RealTek 8139C+, and qemu's emulated rtl8139): drivers/net/ethernet/realtek/8139cp.c's
    # cp_get_ethtool_stats dumps the chip's tally counters; rx_fifo is its 16-bit MissPkt, a frame dropped
    # with no free receive descriptor (or FIFO room); __cp_get_stats adds RxMissed into the link's
    # rx_missed_errors. One 64-descriptor ring, which ethtool -G cannot change.
    "8139cp": (_dc(r"^rx_fifo$", "ring", RING + " (one fixed 64-descriptor ring: keep its IRQ's CPU free)"),),
    "i40e": (_dc(r"^port\.rx_dropped$", "ring", RING + " (port: no descriptor on any queue)"),
             _dc(r"^rx_dropped$", "ring", RING + " (this VSI's queues)"),
             _dc(r"^rx-\d+\.rx_alloc_buff_failed$|^rx_alloc_fail$", "alloc", ALLOC)),
    "ice": (_dc(r"^port\.rx_dropped$", "ring", RING + " (port: no descriptor on any queue)"),
            _dc(r"^rx_dropped$", "ring", RING + " (this VSI's queues)"),
            _dc(r"^rx_buf_failed$|^rx_page_failed$", "alloc", ALLOC)),
    "ena": (_dc(r"^bw_in_allowance_exceeded$", "policer", "the instance's inbound bandwidth allowance was "
                "exceeded: the cloud dropped the packets before the NIC"),
            _dc(r"^pps_allowance_exceeded$", "policer", "the instance's packets-per-second allowance was exceeded"),
            _dc(r"^conntrack_allowance_exceeded$", "policer", "the instance's tracked-connection allowance "
                "was exceeded"),
            _dc(r"^linklocal_allowance_exceeded$", "policer", "too many packets to link-local services (DNS, "
                "metadata)"),
            _dc(r"^queue_\d+_rx_page_alloc_fail$", "alloc", ALLOC)),
    "bnxt_en": (_dc(r"^\[\d+\]: rx_discards$|^rx_total_discard_pkts$", "ring", RING),
                _dc(r"^\[\d+\]: rx_buf_errors$", "ring", "receive buffer errors (ring reset)"),
                _dc(r"^rx_discard_packets_cos\d$", "port", PORT)),
    "virtio_net": (_dc(r"^rx\d+_drops$|^rx_queue_\d+_drops$", "ring", "the guest driver dropped the packets "
                       "(no buffer or memory to build them); a full ring is dropped by the host's backend and "
                       "is not seen here"),),
}
FALLBACK = re.compile(r"missed|no_?buf|no_dma|out_of_buffer|fifo|overrun", re.IGNORECASE)
RING_LINK = ("rx_missed", "rx_fifo", "rx_over")
RING_QSTATS = ("rx-hw-drops", "rx-hw-drop-overruns", "rx-alloc-fail")


def classify(driver: str | None, name: str) -> DriverCounter | None:
    """What an ethtool -S counter of this driver counts, None when it is not a receive-drop counter."""
    for dc in DRIVERS.get(driver or "", ()):
        if re.search(dc.pattern, name):
            return dc
    if driver not in DRIVERS and FALLBACK.search(name):
        return DriverCounter(name, "ring", "a driver counter of missed or unbuffered packets")
    return None


# Drivers whose receive-drop counters also count what their XDP program dropped: virtio_net's
# receive_small and receive_mergeable (drivers/net/virtio_net.c, 6.1 and 6.12 alike) send an XDP_DROP or
# XDP_ABORTED verdict to err_xdp, which counts the queue's xdp_drops and falls through to the error path
# that counts its drops: the same packet in both; virtnet_stats then adds every queue's drops to the
# link's rx_dropped (ndo_get_stats64). Those are xdp-drop's, not a ring's or an unexplained drop.
# driver -> ((source, drop counter regex, the XDP counter: a re.Match.expand template of the same queue's,
# or a regex of every queue's), ...)
XDP_ALSO_COUNTED: dict[str, tuple[tuple[str, str, str], ...]] = {
    "virtio_net": (("ethtool", r"^rx(\d+)_drops$", r"rx\1_xdp_drops"),
                   ("ethtool", r"^rx_queue_(\d+)_drops$", r"rx_queue_\1_xdp_drops"),
                   ("link", r"^rx_dropped$", r"^rx\d+_xdp_drops$|^rx_queue_\d+_xdp_drops$")),
}


def xdp_part(obs: Observation, c: Counter) -> tuple[int, str | None]:
    """How much of a driver drop counter is XDP drops the driver also counts there, and the XDP counter's
    name ((0, None) for drivers that count them apart)."""
    nic = obs.settings.nic(c.iface)
    for source, pattern, xdp in XDP_ALSO_COUNTED.get((nic.driver if nic else None) or "", ()):
        m = re.match(pattern, c.name) if c.source == source else None
        if m is None:
            continue
        mine = [x for x in obs.counters("xdp") if x.iface == c.iface]
        if xdp.startswith("^"):  # every queue's
            return min(sum(x.count for x in mine if re.match(xdp, x.name)), c.count), "xdp_drops"
        name = m.expand(xdp)
        return min(sum(x.count for x in mine if x.name == name), c.count), name
    return 0, None


def ring_counters(obs: Observation) -> list[Counter]:
    """The counters nic-ring-overrun claims: link stats, qstats and the drivers' ethtool -S (less the XDP
    drops a driver also counts in them)."""
    out = obs.counters("link", RING_LINK)
    out += [c for c in obs.counters("qstats") if any(c.name.endswith(n) for n in RING_QSTATS)]
    for c in obs.counters("ethtool"):
        nic = obs.settings.nic(c.iface)
        if classify(nic.driver if nic else None, c.name) is not None:
            xdp, _name = xdp_part(obs, c)
            if c.count > xdp:
                out.append(replace(c, count=c.count - xdp))
    return out


def _less_xdp(obs: Observation, c: Counter) -> str:
    """The XDP counter taken off a driver drop counter, for the evidence's counter name."""
    raw = next((x for x in obs.counters(c.source, (c.name,)) if x.iface == c.iface), c)
    _xdp, name = xdp_part(obs, raw)
    return f" - {name}" if name and raw.count != c.count else ""


def _ring_knobs(obs: Observation, iface: str, nic: NicSettings | None, kinds: set[str]) -> list[Knob]:
    ring = None if nic is None or nic.rx_ring is None else f"{nic.rx_ring} (max {nic.rx_ring_max})"
    at_max = nic is not None and nic.rx_ring is not None and nic.rx_ring >= (nic.rx_ring_max or 0)
    knobs = []
    if "policer" in kinds:
        knobs.append(Knob("the instance's network allowance", None, "the cloud provider's limit, not the host's: "
                          "a larger instance type, or spread the traffic over more instances"))
    if kinds & {"ring", "port"} or not kinds:
        # at the maximum, only a faster drain helps: more queues where the NIC has them, else RPS moves the
        # protocol work off the polling CPU (Documentation/networking/scaling.rst: RPS for single-queue NICs)
        knobs.append(Knob(f"ethtool -G {iface} rx", ring, "raise the RX ring toward its maximum"
                          + ("; it is at the maximum: spread the work instead, with more queues (ethtool -L) "
                             f"where the NIC has them, else RPS (/sys/class/net/{iface}/queues/rx-*/rps_cpus)"
                             if at_max else "")))
        knobs.append(knob(obs.settings, "net.core.netdev_budget", "a bigger budget drains the ring faster"))
    if "port" in kinds:
        knobs.append(Knob(f"ethtool -L {iface}", None, "more queues (and RSS spreading them over CPUs) take "
                          "packets off the port faster; check PCIe link width and pause frames (ethtool -a)"))
    if "alloc" in kinds:
        knobs.append(knob(obs.settings, "vm.min_free_kbytes", "memory reserved for atomic allocations such as "
                          "RX refills"))
    return knobs


def nic_ring_overrun(obs: Observation) -> list[Finding]:
    by_dev: dict[str, list[Counter]] = {}
    for c in ring_counters(obs):
        by_dev.setdefault(c.iface or "?", []).append(c)
    out = []
    source = {"link": "ip -s link", "qstats": "netdev qstats", "ethtool": "ethtool -S"}
    for iface, counters in sorted(by_dev.items()):
        n = max(c.count for c in counters)
        nic = obs.settings.nic(iface)
        driver = nic.driver if nic else None
        meanings = [(c, classify(driver, c.name) if c.source == "ethtool" else None) for c in counters]
        kinds = {dc.kind for _c, dc in meanings if dc is not None} or {"ring"}
        evidence = tuple(Evidence(f"{c.source} {c.name}" + (f": {dc.meaning}" if dc else ""), c.count,
                                  f"{source.get(c.source, c.source)} {c.name}" + _less_xdp(obs, c))
                         for c, dc in meanings)
        what = "the cloud's allowance drops packets" if kinds == {"policer"} else (
            "its port buffer overflows" if kinds == {"port"} else "its receive ring overflows")
        out.append(Finding(
            "nic-ring-overrun", obs.grade("loss", n, obs.received(iface)),
            f"{iface} ({driver or 'driver unknown'}): {what}, the NIC drops packets", evidence,
            FindingWhere(**ns_where(obs, iface=iface)),  # type: ignore[arg-type]
            tuple(_ring_knobs(obs, iface, nic, kinds)),
            "packets were dropped before the stack saw them: " + "; ".join(sorted({dc.meaning for _c, dc in meanings
                                                                                 if dc is not None}) or [RING])))
    return out


# ---------------------------------------------------------------- damage on the link

LINK_DAMAGE = ("rx_crc", "rx_frame", "rx_length")


def link_errors(obs: Observation) -> list[Finding]:
    """The link stats of frames the NIC received damaged (rx_crc_errors: bad FCS, rx_frame_errors: alignment,
    rx_length_errors: a length that does not match; struct rtnl_link_stats64, if_link.h) and carrier
    changes (IFLA_CARRIER_CHANGES: the link went down and up)."""
    by_dev: dict[str, list[Counter]] = {}
    for c in obs.counters("link", LINK_DAMAGE):
        by_dev.setdefault(c.iface or "?", []).append(c)
    for iface in obs.window.carrier_changes:
        by_dev.setdefault(iface, [])
    out = []
    for iface, counters in sorted(by_dev.items()):
        damaged = sum(c.count for c in counters)
        flaps = obs.window.carrier_changes.get(iface, 0)
        evidence = [Evidence(f"frames received with {c.name.removeprefix('rx_')} errors", c.count,
                             f"ip -s link {c.name}_errors") for c in counters]
        evidence.append(Evidence("carrier changes (link down or up)", flaps, f"/sys/class/net/{iface}/carrier_changes",
                                 "changes"))
        for c in obs.counters("link", ("rx_dropped",)):
            if c.iface == iface:
                evidence.append(Evidence("packets the device dropped (all causes)", c.count, "ip -s link rx_dropped"))
        severity = obs.grade("damage", damaged, obs.received(iface)) if damaged else "warn"
        out.append(Finding(
            "link-errors", severity, f"{iface}: " + ", ".join(
                ([f"{damaged:,} damaged frames"] if damaged else []) + ([f"{flaps} carrier changes"] if flaps else [])),
            tuple(evidence), FindingWhere(**ns_where(obs, iface=iface)),  # type: ignore[arg-type]
            (Knob(f"ethtool {iface}", None, "check speed/duplex and autonegotiation on both ends; replace the "
                  "cable or optic and check the peer port's error counters"),),
            "frames arrived damaged (bad FCS, alignment or length: the wire, an optic or the peer) or the link "
            "went down: the stack never saw them, or lost everything while the link was down"))
    return out
