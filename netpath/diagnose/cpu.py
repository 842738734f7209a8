"""Rules about the CPUs that receive: the per-CPU backlog, the NET_RX softirq's budget, how the work is
spread, and how long a raised softirq waits.

/proc/net/softnet_stat is host-wide (one row per CPU): a run narrowed to one namespace or interface cannot
tell whose drops its columns count, so those never rise above info there on their own.
"""

from __future__ import annotations

from netpath.diagnose.observe import Observation, by_iface, knob, ns_where, sysctl_int
from netpath.model import Evidence, Finding, FindingWhere, Knob, NicSettings

IMBALANCE_SHARE = 0.9  # one CPU did at least this share of the receive work ...
IMBALANCE_MIN_PACKETS = 10_000  # ... over at least this many packets in the window
SOFTIRQ_INFO_NS = 1_000_000  # softirq_wait p99
SOFTIRQ_WARN_NS = 10_000_000


def backlog_overflow(obs: Observation) -> list[Finding]:
    """enqueue_to_backlog (net/core/dev.c) drops with CPU_BACKLOG and counts softnet `dropped` both when the
    queue is past netdev_max_backlog and when skb_flow_limit says one flow holds too much of it; the
    flow-limit drops are also counted in softnet's flow_limit column (11th), so the two are told apart
    there (Documentation/networking/scaling.rst, "Flow Limit")."""
    rows = obs.rows("CPU_BACKLOG")
    softnet = {cpu: cols.get("dropped", 0) for cpu, cols in obs.window.softnet.items() if cols.get("dropped", 0)}
    flow = {cpu: cols.get("flow_limit", 0) for cpu, cols in obs.window.softnet.items() if cols.get("flow_limit", 0)}
    n = sum(r.count for r in rows)
    total, flow_total = sum(softnet.values()), sum(flow.values())
    if not n and (not total or obs.scoped):  # softnet is host-wide: a narrowed run needs its own drops
        return []
    evidence = [Evidence("packets dropped: per-CPU input backlog full", n, "kfree_skb reason CPU_BACKLOG"),
                Evidence("softnet backlog drops, all CPUs", total, "/proc/net/softnet_stat dropped (column 2)"),
                Evidence("of them, by the flow limit (one flow holding the backlog)", flow_total,
                         "/proc/net/softnet_stat flow_limit_count (column 11)")]
    for cpu, d in sorted(softnet.items()):
        evidence.append(Evidence(f"softnet drops on CPU {cpu}", d, f"/proc/net/softnet_stat dropped, CPU {cpu}"))
    first = by_iface(rows)[0][0] if rows else None
    mostly_flow = flow_total and flow_total * 2 >= total
    knobs = [knob(obs.settings, "net.core.netdev_max_backlog", "raise it (e.g. to 2-4x) for bursts; spread the "
                  "load with RPS if one CPU takes it all"),
             knob(obs.settings, "net.core.dev_weight", "packets one backlog poll may take"),
             knob(obs.settings, "net.core.flow_limit_cpu_bitmap",
                  "CPUs where one big flow may be dropped to protect the others: " + (
                      "the flow limit dropped most of these, so a single flow floods the backlog"
                      if mostly_flow else "clear it to stop flow-limit drops")),
             knob(obs.settings, "net.core.flow_limit_table_len", "flows tracked per CPU by the flow limit")]
    return [Finding(
        "backlog-overflow", obs.grade("loss", max(n, total)),
        "the per-CPU input backlog overflows: packets dropped before the stack"
        + (" (mostly by the flow limit)" if mostly_flow else ""), tuple(evidence),
        FindingWhere(**ns_where(obs, first, first.iface if first else None)),  # type: ignore[arg-type]
        tuple(knobs),
        "packets handed to a CPU's backlog queue (RPS, veth, netif_rx) arrived faster than NET_RX drained it")]


def napi_budget_squeeze(obs: Observation) -> list[Finding]:
    """net_rx_action (net/core/dev.c) stops a run and counts time_squeeze when its packet budget
    (net.core.netdev_budget, shared by every NAPI poll of the run) is spent or netdev_budget_usecs has
    passed. Which one binds: a run that hit the packet budget processed at least netdev_budget packets, so
    on a CPU that processed P packets and was squeezed S times, at least S - P // netdev_budget runs stopped
    on time (P also counts runs that were not squeezed, so this is a lower bound). With the napi_poll stage
    traced, polls that used their whole weight say the drivers had more work queued."""
    squeeze = {cpu: cols.get("time_squeeze", 0) for cpu, cols in obs.window.softnet.items()
               if cols.get("time_squeeze", 0)}
    total = sum(squeeze.values())
    if not total:
        return []
    from netpath.diagnose.nic import ring_counters  # the loss a squeeze makes worse is the NIC ring's

    backlog = bool(obs.rows("CPU_BACKLOG")) if obs.scoped else any(
        cols.get("dropped", 0) for cols in obs.window.softnet.values())
    lost = bool(ring_counters(obs))
    budget = sysctl_int(obs.settings, "net.core.netdev_budget")
    on_time = 0
    if budget:
        for cpu, s in squeeze.items():
            processed = obs.window.softnet[cpu].get("processed", 0)
            on_time += max(s - processed // budget, 0)
    evidence = [Evidence("NET_RX runs that ran out of budget or time", total,
                         "/proc/net/softnet_stat time_squeeze (column 3)")]
    for cpu, s in sorted(squeeze.items()):
        evidence.append(Evidence(f"time_squeeze on CPU {cpu}", s, f"/proc/net/softnet_stat time_squeeze, CPU {cpu}"))
    if budget:
        evidence.append(Evidence("of them, at least this many stopped on time, not on packets", on_time,
                                 "time_squeeze - processed / netdev_budget, per CPU", "runs"))
    stage = obs.trace.stage("napi_poll") if obs.trace else None
    if stage is not None and stage.napi is not None and stage.napi.polls:
        evidence.append(Evidence("NAPI polls that used their whole weight", stage.napi.exhausted,
                                 "tracepoint napi:napi_poll work == budget", "polls"))
    # most runs must have stopped on time to say time binds: one tick passing in a short run (jiffies, HZ 250:
    # netdev_budget_usecs=2000 is a single jiffy) squeezes a CPU that processed nothing (the lab's 6.1 guest)
    binds = "time" if on_time * 2 > total else "packets"
    knobs = ((knob(obs.settings, "net.core.netdev_budget_usecs", "the limit that binds here: raise it so a run "
                   "may take longer, or find what makes each packet slow (XDP, tc, netfilter, GRO off)"),
              knob(obs.settings, "net.core.netdev_budget", "packets per run; raising it does not help while "
                   "runs stop on time"))
             if binds == "time" else
             (knob(obs.settings, "net.core.netdev_budget", "the limit that binds here: raise it (e.g. 600) so "
                   "one run processes more packets"),
              knob(obs.settings, "net.core.netdev_budget_usecs", "the time limit of a run (raise with the budget)")))
    return [Finding(
        "napi-budget-squeeze", "warn" if lost else "info",
        f"NET_RX softirq stops with work left ({'time' if binds == 'time' else 'packet budget'} exhausted)"
        + (", and the NIC ring overflowed" if lost else ", beside backlog drops" if backlog else ""),
        tuple(evidence), FindingWhere(**ns_where(obs)), knobs,  # type: ignore[arg-type]
        "the receive softirq hit its packet budget or time limit and deferred the rest to ksoftirqd; alone "
        "that is latency, with backlog or ring drops it is loss")]


def _busiest(obs: Observation) -> tuple[str | None, NicSettings | None]:
    busiest = max(obs.window.rx_packets.items(), key=lambda kv: kv[1], default=(None, 0))[0]
    return busiest, obs.settings.nic(busiest)


def _spread_knobs(iface: str | None, nic: NicSettings | None) -> list[Knob]:
    """Each knob only where it applies and was read. RPS applies to virtual devices too (net/core/dev.c:
    netif_rx_internal() and netif_receive_skb_internal() call get_rps_cpu(); veth hands packets over with
    netif_rx), but a device in another namespace has no sysfs entry here: no "unreadable" advice. IRQ
    affinity applies only to a device with IRQ lines of its own (a NIC), never to veth, bridge or lo."""
    knobs: list[Knob] = []
    if iface is None or nic is None:
        return knobs
    if nic.rps_cpus:
        knobs.append(Knob(f"/sys/class/net/{iface}/queues/rx-*/rps_cpus",
                          ", ".join(f"{q}={m}" for q, m in nic.rps_cpus),
                          "set a mask of several CPUs (RPS) to spread the protocol work"))
    if nic.irqs:
        knobs.append(Knob("/proc/irq/N/smp_affinity_list", ", ".join(f"{irq}:{aff}" for irq, aff in nic.irqs),
                          "spread the NIC queues' IRQs over CPUs (or let irqbalance do it)"))
    return knobs


def rx_imbalance(obs: Observation) -> list[Finding]:
    processed = {cpu: cols.get("processed", 0) for cpu, cols in obs.window.softnet.items()}
    total = sum(processed.values())
    if len(processed) < 2 or total < IMBALANCE_MIN_PACKETS:
        return []
    cpu, top = max(processed.items(), key=lambda kv: kv[1])
    if top < IMBALANCE_SHARE * total:
        return []
    # squeezes alone are napi-budget-squeeze's (latency); drops on the busy CPU make the imbalance harmful
    hurt = obs.window.softnet[cpu].get("dropped", 0)
    harmful = hurt > 0 and not obs.scoped  # host-wide numbers: a narrowed run cannot tell whose drops they were
    busiest, nic = _busiest(obs)
    return [Finding(
        "rx-imbalance", "warn" if harmful else "info",
        f"CPU {cpu} does {100 * top // total}% of the receive work", (
            Evidence(f"packets processed by CPU {cpu}", top, f"/proc/net/softnet_stat processed, CPU {cpu}"),
            Evidence("packets processed, all CPUs", total, "/proc/net/softnet_stat processed (column 1)"),
            Evidence(f"backlog drops on CPU {cpu}", hurt, f"/proc/net/softnet_stat dropped, CPU {cpu}")),
        FindingWhere(**ns_where(obs, iface=busiest), cpu=cpu),  # type: ignore[arg-type]
        tuple(_spread_knobs(busiest, nic)),
        "one CPU takes the receive softirq for nearly all packets while others idle; it saturates first")]


def softirq_wait(obs: Observation) -> list[Finding]:
    """A raised NET_RX waits while the CPU runs something else: other softirqs, a long IRQ-off section, or,
    once __do_softirq hands over, ksoftirqd behind other tasks. netdev_budget_usecs bounds one NET_RX run,
    not the wait before it; lowering it defers more to ksoftirqd and can lengthen the wait. What shortens
    it: fewer packets per CPU (IRQ affinity, RPS), NAPI in its own kthread that the scheduler can place
    (threaded NAPI, /sys/class/net/IFACE/threaded; Documentation/networking/napi.rst), or the application
    polling the device itself (busy polling: net.core.busy_read / busy_poll, ip-sysctl.rst)."""
    stage = obs.trace.stage("softirq_wait") if obs.trace else None
    if stage is None or stage.latency.count == 0 or stage.latency.p99_ns < SOFTIRQ_INFO_NS:
        return []
    lat = stage.latency
    busiest, nic = _busiest(obs)
    knobs = _spread_knobs(busiest, nic)
    if busiest is not None:
        knobs.append(Knob(f"/sys/class/net/{busiest}/threaded", nic.threaded if nic else None,
                          "1 runs this device's NAPI in a kthread the scheduler places and prioritises"))
    knobs += [knob(obs.settings, "net.core.busy_read", "microseconds a blocking read busy-polls the device "
                   "(0: off); or SO_BUSY_POLL per socket"),
              knob(obs.settings, "net.core.busy_poll", "the same for poll/select/epoll")]
    return [Finding(
        "softirq-wait", "warn" if lat.p99_ns >= SOFTIRQ_WARN_NS else "info",
        f"NET_RX softirqs wait {lat.p99_ns / 1e6:.1f} ms (p99) between being raised and running",
        # the runs are every NET_RX entry: /proc/softirqs NET_RX over the same window
        # (kstat_incr_softirqs_this_cpu, once per run in kernel/softirq.c; tests/vm/test_doctor_vm.py); the
        # timed ones are those whose raise netpath saw; the kernel keeps no wait time of its own, so the
        # times are netpath's histogram
        (Evidence("softirq runs", stage.count, "tracepoint irq:softirq_entry NET_RX", "runs"),
         Evidence("softirq runs timed", lat.count, "irq:softirq_raise -> irq:softirq_entry", "runs"),
         Evidence("p99 wait", lat.p99_ns, "irq:softirq_raise -> irq:softirq_entry", "ns"),
         Evidence("max wait", lat.max_ns, "irq:softirq_raise -> irq:softirq_entry", "ns")),
        FindingWhere(**ns_where(obs, iface=busiest)),  # type: ignore[arg-type]
        tuple(knobs),
        "the receive softirq was raised but ran late: the CPU was busy with other work or ksoftirqd "
        "was not scheduled")]
