"""Rules about sockets: receive buffers, TCP receive queues, accept and SYN queues, protocol memory, and the
headroom warning before any of them drops.

Where the advice depends on how the kernel counts, the comment says where it was checked (Linux 6.18:
Documentation/networking/ip-sysctl.rst and the function that counts).
"""

from __future__ import annotations

from netpath.diagnose.observe import (
    Observation,
    by_owner,
    knob,
    ns_where,
    owner_where,
    socket_of,
    sysctl_int,
    who,
)
from netpath.model import DropRow, Evidence, Finding, FindingWhere, Knob, Owner, Settings, SocketState

HEADROOM_SHARE = 0.8  # socket-headroom: a receive queue or accept queue at or above this share of its limit
HEADROOM_MAX_FINDINGS = 8  # the fullest sockets, one finding each


def rcvbuf_knobs(settings: Settings, sock: SocketState | None, tcp: bool) -> list[Knob]:
    """The receive-buffer knobs that apply to this socket's protocol.

    UDP (and every non-TCP socket): the buffer is SO_RCVBUF. sk_setsockopt(SO_RCVBUF) -> __sock_set_rcvbuf
    (net/core/sock.c) caps the request at net.core.rmem_max and stores twice it, so a socket can hold at
    most 2 x rmem_max; sockets that never call it get net.core.rmem_default.

    TCP: the buffer is autotuned (tcp_rcv_space_adjust, net/ipv4/tcp_input.c) up to tcp_rmem's third value,
    and only while SOCK_RCVBUF_LOCK is clear: setting SO_RCVBUF sets the lock and turns autotuning off.
    ip-sysctl.rst, tcp_rmem: "Calling setsockopt() with SO_RCVBUF disables automatic tuning of that
    socket's receive buffer size". sock_diag carries no userlocks (inet_diag_msg, INET_DIAG_SKMEMINFO), so
    the lock is inferred only when the buffer is above tcp_rmem's max, where autotuning never puts it."""
    rcvbuf = sock.rcvbuf if sock is not None else None
    rmem_max = sysctl_int(settings, "net.core.rmem_max")
    if tcp:
        tcp_max = sysctl_int(settings, "net.ipv4.tcp_rmem", 2)
        locked = rcvbuf is not None and tcp_max is not None and rcvbuf > tcp_max
        return [
            knob(settings, "net.ipv4.tcp_rmem", "raise the third value (the autotuning cap, in bytes); "
                 "rmem_max does not limit autotuned TCP sockets"),
            Knob("SO_RCVBUF", str(rcvbuf) if rcvbuf is not None else None,
                 ("above tcp_rmem's max, so the application set it: a fixed SO_RCVBUF turns autotuning off "
                  "(SOCK_RCVBUF_LOCK); remove the setsockopt or raise it")
                 if locked else "leave it unset on TCP: setting it turns receive autotuning off "
                 "(SOCK_RCVBUF_LOCK; sock_diag cannot show the lock, check the application)"),
            knob(settings, "net.ipv4.tcp_moderate_rcvbuf", "1 lets the kernel grow the buffer (autotuning)"),
        ]
    capped = rcvbuf is not None and rmem_max is not None and rcvbuf >= 2 * rmem_max
    return [
        Knob("SO_RCVBUF", str(rcvbuf) if rcvbuf is not None else None,
             "raise it in the application (setsockopt; the kernel stores twice the value asked, at most "
             "2 x net.core.rmem_max)" + ("; it is at that cap" if capped else "")),
        knob(settings, "net.core.rmem_max", "raise it first: SO_RCVBUF requests are capped at it"
             if capped else "SO_RCVBUF requests are capped at it (the buffer at twice it)"),
        knob(settings, "net.core.rmem_default", "the buffer of sockets that never set SO_RCVBUF"),
    ]


def socket_rcvbuf_overflow(obs: Observation) -> list[Finding]:
    """SOCKET_RCVBUFF: UDP's __udp_enqueue_schedule_skb (rmem above sk_rcvbuf, UdpRcvbufErrors) and
    sock_queue_rcv_skb for raw/ICMP sockets. TCP's receive-queue drops are tcp-rcvq-drop's."""
    rows = obs.rows("SOCKET_RCVBUFF")
    if not rows:
        return []
    udp_errors = obs.snmp("UdpRcvbufErrors", "Udp6RcvbufErrors")
    delivered = obs.snmp("UdpInDatagrams", "Udp6InDatagrams")
    out = []
    for owner, row, n in by_owner(rows):
        settings = obs.settings_for(row.netns)
        where = ns_where(obs, row) | owner_where(owner)
        sock = socket_of(settings, owner)
        tcp = row.proto == "tcp"
        evidence = [Evidence("dropped at the socket's receive buffer", n, "kfree_skb reason SOCKET_RCVBUFF")]
        if row.proto != "tcp":
            evidence.append(Evidence("UDP receive-buffer errors, all sockets", udp_errors,
                                     "nstat UdpRcvbufErrors + Udp6RcvbufErrors"))
        if sock is not None and sock.rmem_alloc is not None:
            evidence.append(Evidence("bytes queued now", sock.rmem_alloc, "sock_diag skmeminfo rmem_alloc", "bytes"))
        evidence.append(Evidence("drops per second", round(obs.rate(n)), None, "packets/s"))
        out.append(Finding(
            "socket-rcvbuf-overflow", obs.grade("loss", n, delivered + n if delivered else None),
            f"{who(where)} drops {'segments' if tcp else 'datagrams'} at its full receive buffer",
            tuple(evidence), FindingWhere(**where),  # type: ignore[arg-type]
            tuple(rcvbuf_knobs(settings, sock, tcp)),
            "the application reads slower than data arrives and its buffer is full, so the kernel throws away "
            "what it was sent"))
    return out


# ---------------------------------------------------------------- TCP receive queue


# the TCP receive-side drops of tcp_data_queue / tcp_data_queue_ofo / tcp_add_backlog (net/ipv4/tcp_input.c,
# tcp_ipv4.c): PROTO_MEM when tcp_try_rmem_schedule fails after pruning (TCPRcvQDrop), TCP_ZEROWINDOW
# (TCPZeroWindowDrop), TCP_OFO_DROP (TCPOFODrop), SOCKET_BACKLOG when the backlog a busy owner leaves
# is over sk_rcvbuf + sk_sndbuf (TCPBacklogDrop), TCP_OFO_QUEUE_PRUNE (tcp_prune_ofo_queue)
TCP_RCVQ_REASONS = ("SOCKET_BACKLOG", "TCP_ZEROWINDOW", "TCP_OFO_DROP", "TCP_OFO_QUEUE_PRUNE", "PROTO_MEM")
TCP_RCVQ_COUNTERS = ("TcpExtTCPRcvQDrop", "TcpExtTCPZeroWindowDrop", "TcpExtTCPOFODrop", "TcpExtTCPBacklogDrop",
                     "TcpExtPruneCalled", "TcpExtRcvPruned", "TcpExtOfoPruned", "TcpExtRcvCollapsed")
TCP_RCVQ_DROPS = ("TcpExtTCPRcvQDrop", "TcpExtTCPZeroWindowDrop", "TcpExtTCPOFODrop", "TcpExtTCPBacklogDrop")


def tcp_rcvq_drop(obs: Observation) -> list[Finding]:
    rows = [r for r in obs.rows(*TCP_RCVQ_REASONS) if r.proto == "tcp" or r.reason != "PROTO_MEM"]
    counted = obs.snmp(*TCP_RCVQ_DROPS)
    if not rows and not counted:
        return []
    groups: list[tuple[Owner | None, DropRow | None, int]] = [*by_owner(rows)] or [(None, None, counted)]
    received = obs.snmp("TcpInSegs") or None
    evidence_all = [Evidence(name.removeprefix("TcpExt"), obs.snmp(name), f"nstat {name}", "segments"
                             if "Drop" in name else "events") for name in TCP_RCVQ_COUNTERS if obs.snmp(name)]
    out = []
    for owner, row, n in groups:
        settings = obs.settings_for(row.netns if row else None)
        where = ns_where(obs, row) | owner_where(owner)
        sock = socket_of(settings, owner)
        evidence = []
        if row is not None:
            reasons = sorted({r.reason or "?" for r in rows if r.owner == owner and r.netns == row.netns})
            evidence.append(Evidence("segments dropped at this socket", n, ("kfree_skb reason " if len(reasons) == 1
                                     else "kfree_skb reasons ") + "/".join(reasons), "segments"))
        evidence += evidence_all
        if sock is not None and sock.rmem_alloc is not None and sock.rcvbuf:
            evidence.append(Evidence("bytes queued now, of its buffer", sock.rmem_alloc,
                                     f"sock_diag skmeminfo rmem_alloc (rcvbuf {sock.rcvbuf})", "bytes"))
        knobs = rcvbuf_knobs(settings, sock, tcp=True)
        knobs.append(knob(settings, "net.ipv4.tcp_mem", "pages for all TCP sockets (min, pressure, max): "
                          "PROTO_MEM drops past its max"))
        out.append(Finding(
            "tcp-rcvq-drop", obs.grade("loss", n, received),
            f"{who(where)} drops TCP segments at its receive queue",
            tuple(evidence), FindingWhere(**where), tuple(knobs),  # type: ignore[arg-type]
            "segments arrived while the socket's receive memory was exhausted (the reader is slow, the buffer is "
            "small or fixed, or TCP memory is short): the kernel pruned and collapsed the queue, then dropped; "
            "the sender retransmits, so it is lost time, not lost data"))
    return out


# ---------------------------------------------------------------- accept queue and SYN queue


def _listener_for(settings: Settings, owner: Owner | None) -> SocketState | None:
    sock = socket_of(settings, owner)
    if sock is not None:
        return sock
    # listen(0) keeps a backlog of 0 and a queue of 1 (sk_acceptq_is_full: ack_backlog > max_ack_backlog)
    full = [s for s in settings.sockets if s.proto == "tcp" and s.listening and s.rqueue and s.rqueue >= s.wqueue]
    return full[0] if len(full) == 1 else None


def listen_overflow(obs: Observation) -> list[Finding]:
    """The accept queue: tcp_conn_request and tcp_v4_syn_recv_sock (net/ipv4/tcp_input.c, tcp_ipv4.c) count
    ListenOverflows when sk_acceptq_is_full (sk_ack_backlog > sk_max_ack_backlog, the listen() backlog
    capped by net.core.somaxconn). tcp_max_syn_backlog has nothing to do with it: that is the SYN queue's
    (syn-queue-overflow)."""
    overflows = obs.snmp("TcpExtListenOverflows")
    rows = obs.rows("TCP_LISTEN_OVERFLOW")
    if not rows and not overflows:
        return []
    groups: list[tuple[Owner | None, DropRow | None, int]] = [*by_owner(rows)] or [(None, None, overflows)]
    attempts = obs.snmp("TcpPassiveOpens") + overflows  # accepted handshakes and the refused ones
    out = []
    for owner, row, n in groups:
        settings = obs.settings_for(row.netns if row else None)
        listener = _listener_for(settings, owner)
        where = ns_where(obs, row) | owner_where(owner)
        if listener is not None and not where.get("lport"):
            where |= {"laddr": listener.laddr, "lport": listener.lport, "proto": "tcp"}
        evidence = [Evidence("connection attempts dropped: accept queue full", overflows,
                             "nstat TcpExtListenOverflows")]
        if rows:
            evidence.insert(0, Evidence("packets dropped at this listener", n, "kfree_skb reason TCP_LISTEN_OVERFLOW"))
        evidence.append(Evidence("connections accepted by the kernel", obs.snmp("TcpPassiveOpens"),
                                 "nstat TcpPassiveOpens", "connections"))
        if listener is not None:
            evidence.append(Evidence("accept queue now", listener.rqueue, "sock_diag idiag_rqueue", "connections"))
        knobs = (Knob("listen() backlog", str(listener.wqueue) if listener else None,
                      "raise the backlog the application passes to listen(), or accept() faster"),
                 knob(settings, "net.core.somaxconn", "caps every listen() backlog: raise it with the backlog"))
        out.append(Finding(
            "listen-overflow", obs.grade("refused", max(n, overflows), attempts or None),
            f"{who(where)} cannot accept connections fast enough: accept queue full",
            tuple(evidence), FindingWhere(**where), knobs,  # type: ignore[arg-type]
            "the listener's accept queue is full (the application does not call accept() fast enough), so "
            "the kernel drops handshakes; clients wait for a retransmit (1 s, 3 s, ...) or give up"))
    return out


def _full_syn_queue(settings: Settings, listeners: list[SocketState]) -> tuple[SocketState, int] | None:
    """The listener whose SYN queue is full at the end (its half-open requests, sock_diag's SYN_RECV dump, at
    or above its backlog: inet_csk_reqsk_queue_is_full), the fullest first. The counters say only that some
    SYN queue overflowed; the requests still queued say whose (they wait there for their SYN-ACK retransmits,
    net.ipv4.tcp_synack_retries, about a minute by default)."""
    wild = ("0.0.0.0", "::")
    for laddr, lport, n in settings.syn_queues:
        sock = next((s for s in listeners if s.lport == lport and s.laddr == laddr), None) or next(
            (s for s in listeners if s.lport == lport and s.laddr in wild), None)
        if sock is not None and n >= sock.wqueue:
            return sock, n
    return None


def syn_queue_overflow(obs: Observation) -> list[Finding]:
    """The SYN queue: tcp_conn_request (net/ipv4/tcp_input.c) calls tcp_syn_flood_action when
    inet_csk_reqsk_queue_is_full (half-open requests >= the listen backlog); that counts TCPReqQFullDoCookies
    and answers with a syncookie when net.ipv4.tcp_syncookies allows, else TCPReqQFullDrop and drops. Every
    drop there (and tcp_max_syn_backlog's, which applies only with syncookies off) goes through
    tcp_listendrop: ListenDrops - ListenOverflows is the SYN side's whole count."""
    full_drop = obs.snmp("TcpExtTCPReqQFullDrop")
    cookies = obs.snmp("TcpExtTCPReqQFullDoCookies")
    beyond = max(obs.snmp("TcpExtListenDrops") - obs.snmp("TcpExtListenOverflows"), 0)
    if not (full_drop or cookies or beyond):
        return []
    settings = obs.settings
    listeners = [s for s in settings.sockets if s.proto == "tcp" and s.listening]
    where = ns_where(obs)
    full = _full_syn_queue(settings, listeners)
    listener = full[0] if full else listeners[0] if len(listeners) == 1 else None
    if listener is not None:  # the one whose SYN queue is full now, else the only listener there is
        where |= {"laddr": listener.laddr, "lport": listener.lport, "proto": "tcp"}
    syncookies = settings.sysctl("net.ipv4.tcp_syncookies")
    lost = max(full_drop, beyond)
    evidence = [
        Evidence("SYNs dropped: SYN queue full, no syncookies", full_drop, "nstat TcpExtTCPReqQFullDrop"),
        Evidence("SYNs answered with a syncookie: SYN queue full", cookies, "nstat TcpExtTCPReqQFullDoCookies"),
        Evidence("listen drops beyond accept-queue overflows", beyond,
                 "nstat TcpExtListenDrops - TcpExtListenOverflows"),
        Evidence("connections accepted by the kernel", obs.snmp("TcpPassiveOpens"), "nstat TcpPassiveOpens",
                 "connections")]
    if full:
        evidence += [Evidence(f"half-open requests at {full[0].laddr}:{full[0].lport} now", full[1],
                              "sock_diag SYN_RECV requests (ss -tn state syn-recv)", "requests"),
                     Evidence("its SYN queue's limit (the listen backlog)", full[0].wqueue, "sock_diag idiag_wqueue",
                              "requests")]
    knobs = (Knob("listen() backlog", str(listener.wqueue) if listener is not None else None,
                  "also the SYN queue's size (inet_csk_reqsk_queue_is_full): raise it in the application"),
             knob(settings, "net.core.somaxconn", "caps the backlog, and so the SYN queue"),
             knob(settings, "net.ipv4.tcp_syncookies", "1 (the default) answers a full SYN queue with cookies "
                  "instead of dropping" + ("; it is off here" if syncookies == "0" else "")),
             knob(settings, "net.ipv4.tcp_max_syn_backlog", "matters only with tcp_syncookies=0: then requests "
                  "beyond three quarters of it from unproven peers are dropped"))
    severity = obs.grade("refused", lost, obs.snmp("TcpPassiveOpens") + lost or None) if lost else "info"
    return [Finding(
        "syn-queue-overflow", severity,
        "the SYN queue overflows: handshakes " + ("dropped" if lost else "answered with syncookies"),
        tuple(evidence), FindingWhere(**where), knobs,  # type: ignore[arg-type]
        "more half-open connections than the listen backlog allows (a burst of connects, a SYN flood, or "
        "clients that do not finish the handshake); with syncookies they are still served (without TCP "
        "options the cookie cannot carry), without them they are dropped")]


# ---------------------------------------------------------------- no listener, slow reader


def no_listener(obs: Observation) -> list[Finding]:
    from netpath.diagnose.observe import by_iface

    rows = obs.rows("NO_SOCKET")
    out = []
    for row, n in by_iface(rows):
        by_proto: dict[str, int] = {}
        for r in rows:
            if (r.netns, r.iface) == (row.netns, row.iface):
                by_proto[r.proto or "?"] = by_proto.get(r.proto or "?", 0) + r.count
        evidence = [Evidence("packets to a port nobody listens on", n, "kfree_skb reason NO_SOCKET")]
        if "udp" in by_proto:
            evidence.append(Evidence("UDP datagrams to closed ports, all interfaces",
                                     obs.snmp("UdpNoPorts", "Udp6NoPorts"), "nstat UdpNoPorts + Udp6NoPorts"))
        protos = ", ".join(f"{p} {c:,}" for p, c in sorted(by_proto.items()))
        out.append(Finding(
            "no-listener", "info", f"packets to closed ports ({protos})", tuple(evidence),
            FindingWhere(**ns_where(obs, row)), (),  # type: ignore[arg-type]
            "no socket is bound to the destination port (a service down, or a scan); the kernel answers with "
            "an RST or ICMP port unreachable and nothing an application asked for is lost"))
    return out


SLOW_READER_INFO_NS = 10_000_000  # socket_queue p99 per reader
SLOW_READER_WARN_NS = 100_000_000
SLOW_READER_MIN = 20  # packets timed for that reader


def slow_reader(obs: Observation) -> list[Finding]:
    stage = obs.trace.stage("socket_queue") if obs.trace else None
    if stage is None:
        return []
    out = []
    for owner, lat in stage.owners:
        if lat.count < SLOW_READER_MIN or lat.p99_ns < SLOW_READER_INFO_NS:
            continue
        where = ns_where(obs) | owner_where(owner)
        sock = socket_of(obs.settings, owner)
        out.append(Finding(
            "slow-reader", "warn" if lat.p99_ns >= SLOW_READER_WARN_NS else "info",
            f"{who(where)} reads its data late: p99 {lat.p99_ns / 1e6:.1f} ms in the socket queue",
            (Evidence("packets timed in the socket queue", lat.count, None),
             Evidence("p99 time in the socket queue", lat.p99_ns, None, "ns"),
             Evidence("max time in the socket queue", lat.max_ns, None, "ns")),
            FindingWhere(**where),  # type: ignore[arg-type]
            (Knob("SO_RCVBUF", str(sock.rcvbuf) if sock and sock.rcvbuf is not None else None,
                  "a larger buffer only lets data wait longer: make the reader faster (more threads, "
                  "SO_REUSEPORT)"),),
            "packets sit in the socket's receive queue waiting for the application to read them"))
    return out


# ---------------------------------------------------------------- protocol memory


def _pressure(settings: Settings, name: str) -> int | None:
    """tcp_mem / udp_mem's second value: the pressure threshold, in pages."""
    return sysctl_int(settings, name, 1)


def proto_mem_pressure(obs: Observation) -> list[Finding]:
    """UDP: __udp_enqueue_schedule_skb charges each datagram with __sk_mem_raise_allocated against udp_mem;
    when that fails it returns -ENOBUFS and __udp_queue_rcv_skb counts UdpMemErrors with reason PROTO_MEM
    (net/ipv4/udp.c). TCP: tcp_enter_memory_pressure counts TCPMemoryPressures when allocated pages pass
    tcp_mem[1] (net/ipv4/tcp.c). ip-sysctl.rst: udp_mem and tcp_mem are in pages, for all sockets of the
    protocol, host-wide; sockstat's "mem" is the same page count.

    Linux 6.18 queues UDP datagrams on per-NUMA producer lists ("udp: remove busylock and add per NUMA
    queues") and drops a batch that fails the memory charge with PROTO_MEM without counting UdpMemErrors
    (counted again by "udp: add drop count for packets in udp_prod_queue", after 6.18): the drop events
    and the socket's own sk_drops (sock_diag skmeminfo, /proc/net/udp drops) count them, so both are in
    the evidence beside UdpMemErrors."""
    settings = obs.settings
    udp_err = obs.snmp("UdpMemErrors", "Udp6MemErrors")
    tcp_press = obs.snmp("TcpExtTCPMemoryPressures")
    udp_rows = sum(r.count for r in obs.rows("PROTO_MEM") if r.proto != "tcp")
    udp_mem, tcp_mem = settings.levels.get("sockstat.UDP.mem"), settings.levels.get("sockstat.TCP.mem")
    udp_press = _pressure(settings, "net.ipv4.udp_mem")
    tcp_pr = _pressure(settings, "net.ipv4.tcp_mem")
    # sockstat's mem is host-wide: judged once, in the run's own scope, not again in every namespace
    host_levels = not obs.other_namespace
    near_udp = host_levels and udp_mem is not None and udp_press is not None and udp_mem >= udp_press
    near_tcp = host_levels and tcp_mem is not None and tcp_pr is not None and tcp_mem >= tcp_pr
    if not (udp_err or tcp_press or udp_rows or near_udp or near_tcp):
        return []
    lost = max(udp_err, udp_rows)
    evidence = [Evidence("UDP datagrams dropped: protocol memory exhausted", udp_err,
                         "nstat UdpMemErrors + Udp6MemErrors"),
                Evidence("times TCP entered memory pressure", tcp_press, "nstat TcpExtTCPMemoryPressures", "events")]
    if udp_rows:
        evidence.insert(0, Evidence("datagrams dropped for protocol memory", udp_rows, "kfree_skb reason PROTO_MEM"))
        for owner, row, _n in by_owner([r for r in obs.rows("PROTO_MEM") if r.proto != "tcp"])[:3]:
            sock = socket_of(obs.settings_for(row.netns), owner)
            if sock is not None and sock.drops is not None:
                evidence.append(Evidence(f"drops at the socket on port {sock.lport} since it was made", sock.drops,
                                         "sock_diag skmeminfo drops (/proc/net/udp drops)"))
    if udp_mem is not None:
        evidence.append(Evidence("UDP memory in use now", udp_mem, "/proc/net/sockstat UDP mem", "pages"))
    if tcp_mem is not None:
        evidence.append(Evidence("TCP memory in use now", tcp_mem, "/proc/net/sockstat TCP mem", "pages"))
    severity = obs.grade("loss", lost, obs.snmp("UdpInDatagrams") + lost or None) if lost else (
        "warn" if tcp_press else "info")
    which = "UDP" if (udp_err or udp_rows or near_udp) else "TCP"
    return [Finding(
        "proto-mem-pressure", severity,
        f"{which} socket memory is " + ("exhausted: datagrams dropped" if lost else "under pressure"),
        tuple(evidence), FindingWhere(**ns_where(obs)),  # type: ignore[arg-type]
        (knob(settings, "net.ipv4.udp_mem", "pages for all UDP sockets (min, pressure, max): raise the max, or "
              "find the sockets holding unread data (ss -uamp)"),
         knob(settings, "net.ipv4.tcp_mem", "pages for all TCP sockets (min, pressure, max): above the "
              "pressure value every socket's buffer is trimmed")),
        "all sockets of the protocol together hold as much memory as the host allows; the kernel then refuses "
        "new data for every socket, not only the slow one")]


# ---------------------------------------------------------------- headroom: the warning before the drops


def socket_headroom(obs: Observation) -> list[Finding]:
    """sock_diag at the end of the window: receive queues (skmeminfo rmem_alloc against rcvbuf, the test
    __udp_enqueue_schedule_skb and tcp_try_rmem_schedule drop on) and accept queues (idiag_rqueue against
    idiag_wqueue, sk_acceptq_is_full's test) at or above HEADROOM_SHARE. Only sockets that did not already
    drop in the window: those have their own finding."""
    dropped = {(r.owner.sock.inode) for r in (obs.drops.rows if obs.drops else []) if r.owner and r.owner.sock}
    settings = obs.settings
    full = []
    for s in settings.sockets:
        if s.inode in dropped:
            continue
        if s.listening and s.wqueue and s.rqueue >= HEADROOM_SHARE * s.wqueue:
            full.append((s.rqueue / s.wqueue, s, "accept"))
        elif not s.listening and s.rcvbuf and s.rmem_alloc is not None and s.rmem_alloc >= HEADROOM_SHARE * s.rcvbuf:
            full.append((s.rmem_alloc / s.rcvbuf, s, "receive"))
    out = []
    knobs: tuple[Knob, ...]
    for share, s, kind in sorted(full, key=lambda f: -f[0])[:HEADROOM_MAX_FINDINGS]:
        where = ns_where(obs) | {"laddr": s.laddr, "lport": s.lport, "proto": s.proto}
        if kind == "accept":
            evidence = (Evidence("connections waiting in the accept queue", s.rqueue, "sock_diag idiag_rqueue",
                                 "connections"),
                        Evidence("the accept queue's limit (listen() backlog)", s.wqueue, "sock_diag idiag_wqueue",
                                 "connections"))
            knobs = (Knob("listen() backlog", str(s.wqueue), "raise it, or accept() faster"),
                     knob(settings, "net.core.somaxconn", "caps the backlog"))
        else:
            evidence = (Evidence("bytes waiting in the receive queue", s.rmem_alloc or 0,
                                 "sock_diag skmeminfo rmem_alloc", "bytes"),
                        Evidence("the receive buffer", s.rcvbuf or 0, "sock_diag skmeminfo rcvbuf", "bytes"))
            knobs = tuple(rcvbuf_knobs(settings, s, s.proto == "tcp"))
        out.append(Finding(
            "socket-headroom", "warn",
            f"{who(where)}'s {kind} queue is {int(share * 100)}% full: the next burst is dropped",
            evidence, FindingWhere(**where), knobs,  # type: ignore[arg-type]
            f"the {kind} queue is close to its limit; nothing was dropped at this socket in the window, but it "
            "has no room left for a burst"))
    return out
