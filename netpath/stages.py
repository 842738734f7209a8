"""The RX path as data: every stage `netpath trace` measures, in path order.

`Stage` is the one owner of every fact about a stage: the ways it can be
measured (`HookSet`s) in preference order (tracepoints first, then kprobes;
fentry is never chosen: BCC's kfunc programs need kernel headers), whether the
C samples its timing, which of its hooks load as tp_btf, its part of a slow
packet's breakdown, its role in the hand-off, and whether the filters narrow
it. Every list other modules use is derived at the bottom of this file; no
module outside this one compares stage names. `netpath.plan` picks the first
hook set this kernel can attach; nothing here touches the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PER_PACKET = "per_packet"
PER_INVOCATION = "per_invocation"


@dataclass(frozen=True)
class HookSet:
    """One way to measure a stage: every `required` hook must exist; `optional` ones add coverage."""

    method: str  # raw_tracepoint, tracepoint, kprobe
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    define: str = ""  # the -D flags (comma-separated) that compile this variant into its C unit
    note: str = ""  # how the stage is measured with this hook set
    tracepoints: tuple[str, ...] = ()  # tracepoints a kprobe set also needs
    # optional hooks that only stamp the hand-off or forget a freed skb's per-skb state: with the kernel's
    # receive timestamp (skb->tstamp) as the hand-off time they have no job, and the plan leaves them out
    handoff_hooks: tuple[str, ...] = ()
    tstamp_note: str = ""  # how the stage is measured when the hand-off comes from skb->tstamp
    # tracepoints of this set the C can load as BTF-typed raw tracepoints (NP_BTF_PROBE) in the
    # receive-timestamp build: plain loads of skb and socket fields instead of probe reads
    tp_btf: tuple[str, ...] = ()
    # its handler shares C with the typed hooks but gets untyped pointers (a kprobe on sock_def_readable):
    # a build with it loads no hook as tp_btf (bpf/trace_common.c refuses the mix)
    untyped: bool = False

    @property
    def hooks(self) -> tuple[str, ...]:
        return self.required + self.optional + self.tracepoints

    @property
    def defines(self) -> tuple[str, ...]:
        return tuple(d for d in self.define.split(",") if d)


@dataclass(frozen=True)
class SlowSlot:
    """One part of a slow packet's breakdown: np_slow_event.stage_ns[index] (enum np_slow_slot)."""

    index: int
    name: str  # the key in the slow event's JSON stages_ns
    short: str  # its label on a slow line of the table


SLOW_RX = SlowSlot(0, "netif_receive_skb", "rx")
SLOW_IP = SlowSlot(1, "ip_rcv", "ip")
SLOW_LOCAL = SlowSlot(2, "ip_local_deliver", "local")
SLOW_TRANSPORT = SlowSlot(3, "transport", "l4")  # TCP or UDP, whichever the packet took
SLOW_STACK = SlowSlot(4, "stack_total", "stack")
SLOW_QUEUE = SlowSlot(5, "socket_queue", "queue")


@dataclass(frozen=True)
class Stage:
    id: str
    c_name: str  # its enum np_stage member is STAGE_<c_name> (netpath/contract.py generates the enum)
    kind: str
    filterable: bool  # can --iface/--proto/--port/--host narrow it?
    summary: str
    choices: tuple[HookSet, ...] = field(default_factory=tuple)
    # per-packet stages timed between kprobe checkpoints kept in the per-skb map: their presence keeps
    # every skb in that map, so the hand-off cannot come from skb->tstamp
    checkpoint: bool = False
    # the C times 1 in N of its runs when built sampled (SAMPLE_SHIFT) and keeps the exact count in
    # np_cpu_counters.seen; unsampled stages (hardirq, gro, the kprobe checkpoints) time every run
    sampled: bool = False
    # the C counts every run in np_cpu_counters.seen in every build (np_seen_always), because some runs
    # cannot be timed at all: the row's count comes from there, the timed ones from the histogram
    seen_always: bool = False
    slow: SlowSlot | None = None  # its part of a --slower packet's breakdown
    napi: bool = False  # its rows carry the NAPI poll counters (work, budget, exhaustion)
    owners: bool = False  # --per-socket breaks it down by the reading process
    # the C unit in bpf/ that implements it (netpath.collect.trace.c_units adds the units it builds on)
    c_unit: str = ""

    @property
    def index(self) -> int:
        """Its position in path order: the np_stage value and the JSON order."""
        return STAGE_IDS.index(self.id)


# netif_receive_skb's hand-off hooks: where the driver hands the skb over, and its free (forget its state)
_HANDOFF = ("net:netif_rx", "net:napi_gro_receive_entry", "net:netif_receive_skb_entry",
            "net:netif_receive_skb_list_entry", "skb:kfree_skb")


def _kp(name: str, *optional: str, note: str) -> HookSet:
    return HookSet("kprobe", (name,), optional, "", note)  # bpf/trace_kprobe.c always compiles its table


STAGES: tuple[Stage, ...] = (
    Stage("hardirq", "HARDIRQ", PER_INVOCATION, False, "NIC hard IRQ handler run time", (
        HookSet("raw_tracepoint", ("irq:irq_handler_entry", "irq:irq_handler_exit"), (), "USE_HARDIRQ",
                "irq_handler_entry -> irq_handler_exit on the same CPU, NIC IRQ lines only"),
    ), c_unit="trace_irq.c"),
    Stage("softirq_wait", "SOFTIRQ_WAIT", PER_INVOCATION, False,
          "NET_RX softirq raised -> softirq starts running", (
        HookSet("raw_tracepoint", ("irq:softirq_raise", "irq:softirq_entry"), (), "USE_SOFTIRQ_WAIT",
                "first softirq_raise(NET_RX) -> softirq_entry(NET_RX) on the same CPU"),
    ), sampled=True, seen_always=True, c_unit="trace_irq.c"),
    Stage("net_rx_action", "NET_RX_ACTION", PER_INVOCATION, False, "NET_RX softirq run time per invocation", (
        HookSet("raw_tracepoint", ("irq:softirq_entry", "irq:softirq_exit"), (), "USE_NETRX_TP",
                "softirq_entry(NET_RX) -> softirq_exit(NET_RX) on the same CPU"),
        HookSet("kprobe", ("net_rx_action",), (), "", "kprobe -> kretprobe net_rx_action"),
    ), sampled=True, c_unit="trace_irq.c"),
    Stage("napi_poll", "NAPI_POLL", PER_INVOCATION, False,
          "driver poll: time, work against budget, budget exhaustion", (
        HookSet("raw_tracepoint", ("napi:napi_poll",), ("irq:softirq_entry", "irq:softirq_exit"), "USE_NAPI",
                "napi:napi_poll gives work and budget; poll time is measured from the start of the NET_RX "
                "softirq or the end of the previous poll on that CPU"),
    ), sampled=True, napi=True, c_unit="trace_irq.c"),
    Stage("gro", "GRO", PER_INVOCATION, True, "napi_gro_receive run time per packet", (
        HookSet("raw_tracepoint", ("net:napi_gro_receive_entry", "net:napi_gro_receive_exit"), (), "USE_GRO",
                "napi_gro_receive_entry -> napi_gro_receive_exit on the same CPU"),
    ), c_unit="trace_skb.c"),
    Stage("netif_receive_skb", "NETIF_RECEIVE_SKB", PER_PACKET, True,
          "driver hand-off -> entry into the protocol stack", (
        HookSet("raw_tracepoint", ("net:netif_receive_skb",), _HANDOFF, "USE_CORE",
                "netif_rx / napi_gro_receive_entry / netif_receive_skb_entry -> net:netif_receive_skb "
                "(__netif_receive_skb_core), per skb",
                handoff_hooks=_HANDOFF, tp_btf=("net:netif_receive_skb",),
                tstamp_note="skb->tstamp (the kernel's software RX timestamp, taken at netif_rx / "
                            "netif_receive_skb while netpath holds RX timestamping on) -> net:netif_receive_skb "
                            "(__netif_receive_skb_core), per skb"),
    ), sampled=True, slow=SLOW_RX, c_unit="trace_skb.c"),
    Stage("ip_rcv", "IP_RCV", PER_PACKET, True, "netif_receive_skb -> ip_rcv / ipv6_rcv", (
        _kp("ip_rcv", "ipv6_rcv", note="net:netif_receive_skb -> kprobe ip_rcv/ipv6_rcv"),
    ), checkpoint=True, slow=SLOW_IP, c_unit="trace_kprobe.c"),
    Stage("ip_local_deliver", "IP_LOCAL_DELIVER", PER_PACKET, True, "ip_rcv -> local delivery", (
        _kp("ip_local_deliver", "ip6_input",
            note="kprobe ip_rcv -> kprobe ip_local_deliver (ipv6_rcv -> ip6_input)"),
    ), checkpoint=True, slow=SLOW_LOCAL, c_unit="trace_kprobe.c"),
    Stage("tcp_v4_rcv", "TCP_RCV", PER_PACKET, True, "local delivery -> TCP", (
        _kp("tcp_v4_rcv", "tcp_v6_rcv",
            note="kprobe ip_local_deliver/ip6_input -> kprobe tcp_v4_rcv/tcp_v6_rcv"),
    ), checkpoint=True, slow=SLOW_TRANSPORT, c_unit="trace_kprobe.c"),
    Stage("udp_rcv", "UDP_RCV", PER_PACKET, True, "local delivery -> UDP", (
        _kp("udp_rcv", "udpv6_rcv",
            note="kprobe ip_local_deliver/ip6_input -> kprobe udp_rcv/udpv6_rcv"),
    ), checkpoint=True, slow=SLOW_TRANSPORT, c_unit="trace_kprobe.c"),
    Stage("socket_queue", "SOCKET_QUEUE", PER_PACKET, True,
          "socket woken (sk_data_ready: each UDP datagram; TCP at SO_RCVLOWAT) -> read by the application", (
        HookSet("raw_tracepoint", ("sock:sk_data_ready", "skb:skb_copy_datagram_iovec", "sock:sock_recv_length"),
                ("skb:consume_skb", "skb:kfree_skb"), "USE_SOCKQ",
                "sock:sk_data_ready (the skb at the tail of sk_receive_queue) -> first "
                "skb:skb_copy_datagram_iovec (TCP) or sock:sock_recv_length popping the socket's FIFO (UDP; "
                "without netif_receive_skb, sampled: the read that takes a watched datagram)",
                handoff_hooks=("skb:consume_skb", "skb:kfree_skb"),
                tp_btf=("sock:sk_data_ready", "sock:sock_recv_length")),
        HookSet("raw_tracepoint", ("sock:sk_data_ready", "skb:skb_copy_datagram_iovec", "skb:consume_skb"),
                ("skb:kfree_skb",), "USE_SOCKQ",
                "sock:sk_data_ready (the skb at the tail of sk_receive_queue) -> first "
                "skb:skb_copy_datagram_iovec (TCP) or skb:consume_skb after the UDP copy",
                handoff_hooks=("skb:kfree_skb",), tp_btf=("sock:sk_data_ready",)),
        HookSet("kprobe", ("sock_def_readable",), (), "USE_SOCKQ,USE_KP_DATA_READY",
                "kprobe sock_def_readable (the skb at the tail of sk_receive_queue) -> first "
                "skb:skb_copy_datagram_iovec (TCP) or skb:consume_skb after the UDP copy",
                ("skb:skb_copy_datagram_iovec", "skb:consume_skb"), untyped=True),
    ), sampled=True, seen_always=True, slow=SLOW_QUEUE, owners=True, c_unit="trace_read.c"),
    Stage("stack_total", "STACK_TOTAL", PER_PACKET, True, "netif_receive_skb -> socket enqueue", (
        HookSet("raw_tracepoint", ("net:netif_receive_skb", "sock:sk_data_ready"), (), "USE_STACK_TOTAL",
                "net:netif_receive_skb -> sock:sk_data_ready for the same skb",
                tp_btf=("net:netif_receive_skb", "sock:sk_data_ready")),
        HookSet("kprobe", ("sock_def_readable",), (), "USE_STACK_TOTAL,USE_KP_DATA_READY",
                "net:netif_receive_skb -> kprobe sock_def_readable for the same skb", ("net:netif_receive_skb",),
                untyped=True),
    ), sampled=True, slow=SLOW_STACK, c_unit="trace_sock.c"),
)

STAGE_IDS: tuple[str, ...] = tuple(s.id for s in STAGES)
# what `netpath trace` runs unless --stages says otherwise: the packet's own journey. The per-invocation
# stages hook every softirq, NAPI poll and IRQ, which on a software device (veth, loopback) is every
# packet: 4 more hook runs each, a floor of 0.89 of a drop storm's rate even with empty programs (make bench).
PACKET_STAGES: tuple[str, ...] = tuple(s.id for s in STAGES if s.kind == PER_PACKET)
UNFILTERED: tuple[str, ...] = tuple(s.id for s in STAGES if not s.filterable)
SAMPLED: tuple[str, ...] = tuple(s.id for s in STAGES if s.sampled)
# a slow packet's breakdown, in np_slow_event.stage_ns[] order
SLOW_SLOTS: tuple[SlowSlot, ...] = tuple(sorted({s.slow for s in STAGES if s.slow}, key=lambda slot: slot.index))
# every hook some stage can load as tp_btf, in path order
TP_BTF_HOOKS: tuple[str, ...] = tuple(dict.fromkeys(h for s in STAGES for hs in s.choices for h in hs.tp_btf))


def tp_btf_names(hook: str) -> tuple[str, str]:
    """(the C function NP_BTF_PROBE defines, the tracepoint it attaches to) for a tp_btf hook."""
    event = hook.split(":", 1)[1]
    return f"np_btf_{event}", event


def by_id(stage_id: str) -> Stage:
    return STAGES[STAGE_IDS.index(stage_id)]
