"""What every command reports, as plain data with finished numbers.

Sessions (netpath/collect) build these from map readings: percentiles,
means and buckets computed, interface names resolved. Renderers
(netpath/render) only format them; nothing here reads the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------- shared


@dataclass(frozen=True)
class Attached:
    hook: str
    method: str
    program: str | None = None


@dataclass(frozen=True)
class Unavailable:
    """A hook or stage this kernel could not attach, and why."""

    hook: str
    reason: str
    stage: str | None = None


@dataclass(frozen=True)
class Filters:
    """The filters a session runs with, as the start line reports them."""

    netns: int | None = None
    ifaces: tuple[str, ...] = ()
    iface_keys: tuple[tuple[int, int], ...] = ()  # (netns inode, ifindex)
    proto: str | None = None
    port: int | None = None
    host: str | None = None
    cgroup: int | None = None  # cgroup v2 id


@dataclass(frozen=True, kw_only=True)
class StartBase:
    """Everything attached: what every command's `start` line says."""

    kernel: str
    headers: str
    attached: tuple[Attached, ...]
    unavailable: tuple[Unavailable, ...]
    filters: Filters


@dataclass(frozen=True, kw_only=True)
class DropsStart(StartBase):
    command: str = "drops"
    group_by: tuple[str, ...] = ()
    reason_code: int | None = None


@dataclass(frozen=True, kw_only=True)
class TraceStart(StartBase):
    command: str = "trace"
    stages: tuple[str, ...] = ()
    unfiltered_stages: tuple[str, ...] = ()
    per_iface: bool = False
    per_cpu: bool = False
    slower_ns: int = 0
    fail_on_latency: tuple[dict[str, object], ...] = ()
    handoff: str | None = None  # where the hand-off time comes from ("skb_tstamp" or "hooks")
    sample_every: int = 1  # 1 in how many NET_RX runs and packets is timed
    not_selected: tuple[str, ...] = ()  # stages --stages left out


@dataclass(frozen=True, kw_only=True)
class DoctorStart(StartBase):
    command: str = "doctor"
    rules: tuple[str, ...] = ()  # the rule ids it evaluates


@dataclass(frozen=True, kw_only=True)
class FollowStart(StartBase):
    command: str = "follow"
    count: int = 10  # packets to follow


Start = DropsStart | TraceStart | DoctorStart | FollowStart


@dataclass(frozen=True)
class ProbeRow:
    """One line of `netpath probes`: a stage (or the drops hook) and how this kernel would attach it."""

    stage: str
    hook: str
    method: str | None
    available: bool
    reason: str
    command: str = "trace"


@dataclass(frozen=True)
class Verdict:
    """One --fail-on threshold at the end of a run."""

    spec: dict[str, object]  # the threshold as the user gave it, in numbers
    crossed: bool
    value: int | None = None  # the measured value that crossed it


# ---------------------------------------------------------------- attribution


@dataclass(frozen=True)
class SockInfo:
    """A socket as /proc/net lists it."""

    inode: int
    proto: str  # udp, tcp, raw, udplite
    family: int  # 4 or 6
    laddr: str
    lport: int


@dataclass(frozen=True)
class Owner:
    """Whose packet: the socket (where the kernel knows it), its holder, its cgroup and the container."""

    sock: SockInfo | None = None
    pid: int | None = None
    comm: str | None = None
    cgroup: str | None = None  # path in the cgroup v2 hierarchy
    container: str | None = None  # the runtime's name (netpath.runtimes), else from the cgroup path (containers)
    pod: str | None = None  # Kubernetes pod and its namespace, from the runtime's labels
    pod_namespace: str | None = None


# ---------------------------------------------------------------- drops


@dataclass(frozen=True)
class DropRow:
    reason: str | None
    reason_code: int | None
    location: str | None
    iface: str | None
    ifindex: int | None
    netns: int | None
    proto: str | None
    count: int
    family: int | None = None
    saddr: str | None = None
    daddr: str | None = None
    sport: int | None = None
    dport: int | None = None
    stack: list[str] | None = None
    interval_count: int | None = None  # live view: this interval's part of a run-total row
    owner: Owner | None = None  # rows grouped by socket or cgroup (and samples)
    netns_label: str | None = None  # the namespace for people: its ip netns name, else who runs in it
    # what named the namespace: device, socket, fragment_queue (an expiring queue's own), reader (the task
    # reading the socket); None when the row has none
    placed_by: str | None = None


@dataclass(frozen=True)
class Counter:
    source: str  # link, softnet, qdisc, snmp
    name: str
    count: int
    iface: str | None = None
    cpu: int | None = None
    # another namespace's counter (collect/netns_rx.py): its inode and name, and the pod whose it is
    netns: int | None = None
    netns_label: str | None = None
    pod: str | None = None
    pod_namespace: str | None = None


@dataclass(frozen=True)
class DropSample:
    ts_ns: int
    cpu: int
    pid: int
    comm: str
    len: int
    row: DropRow


@dataclass(frozen=True)
class CapturedPacket:
    """A dropped packet's bytes (drops --pcap), with where and why it died in `row`."""

    ts_ns: int  # wall clock, ns since the epoch
    cpu: int
    linktype: int  # pcapng link type: 1 Ethernet, 101 raw IP
    orig_len: int  # the packet's length from its first captured byte
    data: bytes  # at most the snaplen
    snaplen: int
    row: DropRow


@dataclass(frozen=True)
class PcapHealth:
    """What a capture did with the matched drops: written + skipped + lost + unwritten = matched (once drained)."""

    written: int = 0  # packets in the pcapng file (whole blocks that reached it)
    skipped: int = 0  # not sent: --pcap-max reached or the in-kernel rate limit
    lost: int = 0  # the ring buffer had no room
    unwritten: int = 0  # captured, but the file stopped taking blocks (a full disk, RLIMIT_FSIZE)
    error: str | None = None  # why the file stopped growing: capture stopped there, counting went on


@dataclass(kw_only=True)
class DropHealth:
    """netpath drops' own account of itself for one interval or the whole run; the fields are the JSON's."""

    probe_hits: dict[str, int] = field(default_factory=dict)
    matched: int = 0
    lost_rows: int = 0  # drops not counted in a row because the aggregation map was full
    samples: int = 0
    lost_samples: int = 0  # perf buffer overflow
    skipped_samples: int = 0  # over the per-CPU sample budget
    # drops whose namespace could not be found (skb->dev gone and no socket or fragment queue to ask): they
    # have no interface or namespace, so --netns and --iface cannot match them
    no_device: int = 0
    pcap: PcapHealth | None = None  # only while --pcap captures


@dataclass
class DropSnapshot:
    """total is the exact count of matching drops; rows are those that found room in the map (health.lost_rows)."""

    rows: list[DropRow]
    counters: list[Counter]
    health: DropHealth
    total: int
    elapsed_ns: int
    other_rows: int = 0  # rows beyond --top, folded out of `rows`
    other_count: int = 0
    flow_keyed: bool = False  # rows carry the 5-tuple
    owner_keyed: bool = False  # rows carry the receiving socket's owner
    interval_ns: int = 0
    interval_total: int = 0  # live view: drops this interval, while rows hold run totals
    warnings: list[str] = field(default_factory=list)  # what changed under the run (a namespace deleted)
    # drop counters that rose while no drop event matched: rows and total say 0 for them
    counter_only: list[Counter] = field(default_factory=list)
    where_filtered: bool = False  # --netns or --iface: drops with no device (health.no_device) are left out
    # the SNMP, netstat and conntrack drop counters of every other namespace (host-wide runs only), each
    # with its netns; `netns_own`: the run's own namespace's are among them too (the exporter's zero series)
    netns_counters: list[Counter] = field(default_factory=list)
    netns_own: bool = False


# ---------------------------------------------------------------- trace


@dataclass(frozen=True)
class Bucket:
    lo_ns: int
    hi_ns: int
    count: int


@dataclass(frozen=True)
class Latency:
    count: int = 0
    p50_ns: int = 0
    p90_ns: int = 0
    p99_ns: int = 0
    max_ns: int = 0
    sum_ns: int = 0
    mean_ns: int = 0
    buckets: tuple[Bucket, ...] = ()  # log2: [2^i, 2^(i+1)), the first from 0


@dataclass(frozen=True)
class Where:
    """Which part of a stage a breakdown row is: interface and/or CPU."""

    iface: str | None = None
    ifindex: int | None = None
    netns: int | None = None
    cpu: int | None = None


@dataclass(frozen=True)
class Napi:
    polls: int = 0
    work: int = 0
    budget: int = 0
    exhausted: int = 0
    max_work: int = 0


@dataclass(frozen=True)
class StageRow:
    stage: str
    hook: str
    method: str | None
    latency: Latency
    parts: tuple[tuple[Where, Latency], ...] = ()
    napi: Napi | None = None
    napi_parts: tuple[tuple[Where, Napi], ...] = ()
    owners: tuple[tuple[Owner, Latency], ...] = ()  # socket_queue per reading process (--per-socket)
    seen: int | None = None  # sampled timing: every packet (or run) of the stage; latency.count is the timed ones
    sample_every: int = 1  # 1 in how many is timed

    @property
    def count(self) -> int:
        """Exact: every packet (or run) the stage saw, timed or not."""
        return self.latency.count if self.seen is None else self.seen


@dataclass(frozen=True, kw_only=True)
class TraceHealth:
    """netpath trace's own account of itself; every field but ring_slots is the JSON health field."""

    probe_hits: dict[str, int] = field(default_factory=dict)
    lost_samples: int = 0  # histogram map full
    lost_skbs: int = 0  # per-skb map full
    slow_sent: int = 0
    missed_enqueue: int = 0  # datagrams read before their wakeup: not timed
    ring_overrun: int = 0  # datagrams past a socket's ring: not timed
    lost_events: int = 0  # slow events the perf buffer lost
    ring_slots: int = 0  # the per-socket ring size, for the message
    unseen_enqueue: int = 0  # datagrams enqueued that netif_receive_skb did not follow: no stack_total
    unseen_read: int = 0  # UDP reads with no enqueue seen for them: no socket_queue
    unstamped: int = 0  # rx timestamps: packets at netif_receive_skb without a usable skb->tstamp: not timed


@dataclass(frozen=True)
class TraceSnapshot:
    stages: tuple[StageRow, ...]
    unavailable: tuple[Unavailable, ...]
    softnet: dict[str, int]
    health: TraceHealth
    elapsed_ns: int
    interval_ns: int = 0
    per_iface: bool = False
    per_cpu: bool = False
    not_selected: tuple[str, ...] = ()  # stages --stages left out

    def stage(self, stage_id: str) -> StageRow | None:
        return next((s for s in self.stages if s.stage == stage_id), None)


@dataclass(frozen=True)
class SlowPacket:
    ts_ns: int
    cpu: int
    pid: int
    comm: str
    iface: str | None
    ifindex: int
    netns: int
    family: int
    proto: str | None
    saddr: str | None
    daddr: str | None
    sport: int | None
    dport: int | None
    stages_ns: dict[str, int]
    short_names: dict[str, str] = field(default_factory=dict)  # stages_ns key -> its label on a slow line




# ---------------------------------------------------------------- doctor: settings and findings


@dataclass(frozen=True)
class SocketState:
    """One socket as sock_diag reports it, read at the end of a doctor run."""

    proto: str  # tcp, udp
    family: int  # 4 or 6
    laddr: str
    lport: int
    inode: int
    listening: bool
    rqueue: int  # listen: the current accept backlog; else bytes queued
    wqueue: int  # listen: the backlog's maximum (listen()'s argument, capped by somaxconn)
    rcvbuf: int | None = None  # skmeminfo: SO_RCVBUF as the kernel holds it (doubled)
    rmem_alloc: int | None = None
    drops: int | None = None  # skmeminfo: sk_drops (since the socket was made)
    cgroup_id: int | None = None


@dataclass(frozen=True)
class NicSettings:
    """What ethtool, sysfs and /proc say about one interface's receive side."""

    iface: str
    rx_ring: int | None = None
    rx_ring_max: int | None = None
    offloads: tuple[tuple[str, str], ...] = ()  # (feature, "on"/"off"), ethtool -k
    rps_cpus: tuple[tuple[str, str], ...] = ()  # (rx queue, hex mask); () when unreadable
    irqs: tuple[tuple[int, str], ...] = ()  # (irq, smp_affinity_list)
    driver: str | None = None  # ethtool -i: the driver's name (nic-ring-overrun's per-driver table)
    threaded: str | None = None  # /sys/class/net/IFACE/threaded: NAPI in its own kthread ("1") or softirq ("0")


@dataclass(frozen=True)
class Settings:
    """The knobs the doctor's rules name, read at the end of the run, in the namespace the run looked at."""

    netns: int | None
    netns_label: str | None
    sysctls: dict[str, str] = field(default_factory=dict)  # "net.core.rmem_max" -> "212992"
    sockets: tuple[SocketState, ...] = ()
    nics: tuple[NicSettings, ...] = ()
    online_cpus: int = 1
    netfilter_rules: int | None = None  # iptables/nftables rules that drop (DROP/REJECT/drop), when readable
    tc_ingress: dict[str, int] = field(default_factory=dict)  # iface -> tc filters on its ingress hook
    tc_egress: dict[str, int] = field(default_factory=dict)  # iface -> tc filters on its egress hook
    # levels read at the end: sockstat ("sockstat.UDP.mem", pages), conntrack entries
    levels: dict[str, int] = field(default_factory=dict)
    # TCP listeners' SYN queues at the end: (local address, port, half-open requests), from sock_diag
    syn_queues: tuple[tuple[str, int, int], ...] = ()

    def sysctl(self, name: str) -> str | None:
        return self.sysctls.get(name)

    def nic(self, iface: str | None) -> NicSettings | None:
        return next((n for n in self.nics if n.iface == iface), None)


@dataclass(frozen=True)
class Window:
    """Counters the rules read beyond the drops session's, as deltas over the doctor's window."""

    snmp: dict[str, int] = field(default_factory=dict)  # nstat names: IpReasmFails, TcpExtIPReversePathFilter, ...
    conntrack: dict[str, int] = field(default_factory=dict)  # /proc/net/stat/nf_conntrack columns, CPUs summed
    softnet: dict[int, dict[str, int]] = field(default_factory=dict)  # cpu -> processed, dropped, time_squeeze
    rx_packets: dict[str, int] = field(default_factory=dict)  # iface -> packets received
    carrier_changes: dict[str, int] = field(default_factory=dict)  # iface -> link down/up transitions


@dataclass(frozen=True)
class NetnsCounters:
    """One network namespace's SNMP, netstat and conntrack counters: cumulative values as read
    (collect/netns_counters.read_every_namespace), or a window's deltas (netns_counters.window).

    Identity is the cookie (net->net_cookie, never reused; 0 before Linux 5.14), the inode is for
    people and for drop rows, which carry it."""

    inode: int
    cookie: int
    label: str  # its ip netns name, "host", else what runs in it (comm[pid]), in the untrusted-name form
    named: bool = False  # it has an /run/netns name
    snmp: dict[str, int] = field(default_factory=dict)  # nstat names: UdpRcvbufErrors, TcpExtListenOverflows, ...
    conntrack: dict[str, int] = field(default_factory=dict)  # /proc/net/stat/nf_conntrack, CPUs summed
    # levels, not counters, read at the same instant (a window keeps the end's): nf_conntrack_count and _max,
    # sockstat's inuse/mem (mem in pages), conntrack stat's entries
    levels: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Evidence:
    """One number behind a finding: what it counts and the kernel counter it equals (None: no counter has it)."""

    name: str
    value: int
    counter: str | None = None  # e.g. "nstat UdpRcvbufErrors", "/proc/net/softnet_stat dropped"
    unit: str = "packets"


@dataclass(frozen=True)
class FindingWhere:
    iface: str | None = None
    netns: int | None = None
    netns_label: str | None = None
    pid: int | None = None
    comm: str | None = None
    cgroup: str | None = None
    container: str | None = None
    pod: str | None = None
    pod_namespace: str | None = None
    laddr: str | None = None
    lport: int | None = None
    proto: str | None = None
    cpu: int | None = None


@dataclass(frozen=True)
class Knob:
    name: str  # the setting's exact name: net.core.rmem_max, ethtool -G eth0 rx, SO_RCVBUF
    value: str | None  # read now; None when it could not be read
    advice: str  # which way to move it


@dataclass(frozen=True)
class Finding:
    id: str
    severity: str  # info, warn, crit
    title: str
    evidence: tuple[Evidence, ...]
    where: FindingWhere
    knobs: tuple[Knob, ...]
    why: str
    explains: tuple[str, ...] = ()  # ids of other rules whose signals this finding's cause explains (folded in)


@dataclass(frozen=True)
class Diagnosis:
    """A doctor run: its findings worst first (empty in the progress snapshots before the end)."""

    findings: tuple[Finding, ...]
    checked: tuple[str, ...]  # rule ids evaluated
    elapsed_ns: int
    drops_seen: int = 0  # every drop the window counted
    unavailable: tuple[Unavailable, ...] = ()  # parts that could not run (trace stages), and why
    final: bool = True
    interval_ns: int = 0


# ---------------------------------------------------------------- follow


@dataclass(frozen=True)
class Flow:
    """A packet's addresses as read at one hop; family None when the hook could not read them."""

    family: int | None = None
    proto: str | None = None
    saddr: str | None = None
    daddr: str | None = None
    sport: int | None = None
    dport: int | None = None


@dataclass(frozen=True)
class Hop:
    """One tracepoint a followed skb passed."""

    offset_ns: int  # since the packet's first hop
    cpu: int
    hook: str  # "cat:event"
    netns: int | None  # inode
    netns_cookie: int | None
    netns_label: str | None
    iface: str | None
    ifindex: int | None
    length: int
    flow: Flow
    changed: bool = False  # the addresses or ports differ from the last hop that read them
    rc: int | None = None  # net_dev_xmit's return code, napi_gro_receive_exit's result
    nf_hook: str | None = None  # nf_hook_slow: the netfilter family and hook ("ipv4 PREROUTING")


@dataclass(frozen=True)
class Fate:
    """How a followed packet ended."""

    kind: str  # contract.FOLLOW_FATES
    hook: str | None = None  # where it ended
    reason: str | None = None  # dropped: the kernel's drop reason
    reason_code: int | None = None
    location: str | None = None  # dropped, consumed: func+0xoff
    netns: int | None = None
    netns_label: str | None = None
    iface: str | None = None  # dropped: where it died; sent: the device it left by
    ifindex: int | None = None
    owner: Owner | None = None  # delivered: the process that read it


@dataclass(frozen=True)
class FollowedPacket:
    id: int
    skb: int  # the sk_buff's address (the key it was followed by)
    first: Flow
    hops: tuple[Hop, ...]
    fate: Fate
    clone_of: int | None = None  # a clone: the id of the followed packet whose data buffer it shares


@dataclass(frozen=True)
class FollowHealth:
    probe_hits: dict[str, int]
    started: int = 0  # packets followed
    table_full: int = 0  # matching packets not followed: the followed table was full
    lost_hops: int = 0  # hops the ring had no room for
    hops_cut: int = 0  # hops past the per-packet limit
    untracked: int = 0  # packets whose address was reused after a free no tracepoint shows
    clones: int = 0  # clones of followed packets followed (each a packet of its own)
    clones_unseen: int = 0  # originals whose clones could not be looked for: the heads table was full


@dataclass
class FollowSnapshot:
    health: FollowHealth
    elapsed_ns: int
    followed: int  # packets ended so far (for an interval: in it)
    interval_ns: int = 0
    in_flight: tuple[FollowedPacket, ...] = ()  # the summary: packets still going when the run ended
    late: tuple[FollowedPacket, ...] = ()  # the summary: packets that ended, their owner looked up at the end


Event = DropSample | SlowPacket | CapturedPacket | FollowedPacket
Snapshot = DropSnapshot | TraceSnapshot | Diagnosis | FollowSnapshot
