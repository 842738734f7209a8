"""The JSON contract (schema netpath/1): every object netpath prints, built from the model here only."""

from __future__ import annotations

from typing import Any

from netpath.model import (
    Counter,
    Diagnosis,
    DoctorStart,
    DropRow,
    DropSample,
    DropSnapshot,
    DropsStart,
    Fate,
    Finding,
    Flow,
    FollowedPacket,
    FollowSnapshot,
    FollowStart,
    Hop,
    Latency,
    Napi,
    Owner,
    ProbeRow,
    SlowPacket,
    Snapshot,
    SockInfo,
    StageRow,
    Start,
    TraceSnapshot,
    Unavailable,
    Verdict,
    Where,
)

SCHEMA = "netpath/1"
Record = dict[str, Any]


def record(kind: str, **fields: Any) -> Record:
    return {"schema": SCHEMA, "type": kind, **fields}


# ---------------------------------------------------------------- drops


def sock(info: SockInfo | None) -> Record | None:
    if info is None:
        return None
    return {"inode": info.inode, "proto": info.proto, "family": info.family, "laddr": info.laddr,
            "lport": info.lport}


def owner(o: Owner | None) -> Record:
    o = o or Owner()
    return {"sock": sock(o.sock), "pid": o.pid, "comm": o.comm, "cgroup": o.cgroup, "container": o.container,
            "pod": o.pod, "pod_namespace": o.pod_namespace}


def drop_row(row: DropRow, with_flow: bool, with_owner: bool = False) -> Record:
    out: Record = {
        "reason": row.reason,
        "reason_code": row.reason_code,
        "location": row.location,
        "iface": row.iface,
        "ifindex": row.ifindex,
        "netns": row.netns,
    }
    if row.netns_label is not None:
        out["netns_label"] = row.netns_label
    if row.placed_by is not None:
        out["placed_by"] = row.placed_by
    out.update(proto=row.proto, count=row.count)
    if with_flow:
        out.update(family=row.family, saddr=row.saddr, daddr=row.daddr, sport=row.sport, dport=row.dport)
    if with_owner:
        out.update(owner(row.owner))
    if row.stack is not None:
        out["stack"] = row.stack
    return out


def counter(c: Counter) -> Record:
    out: Record = {"source": c.source, "name": c.name}
    if c.iface is not None:
        out["iface"] = c.iface
    if c.cpu is not None:
        out["cpu"] = c.cpu
    if c.netns is not None:  # another namespace's counter: where, and whose
        out.update(netns=c.netns, netns_label=c.netns_label, pod=c.pod, pod_namespace=c.pod_namespace)
    out["count"] = c.count
    return out


def _drops_body(snap: DropSnapshot) -> Record:
    h = snap.health
    out: Record = {
        "rows": [drop_row(r, snap.flow_keyed, snap.owner_keyed) for r in snap.rows],
        "counters": [counter(c) for c in snap.counters],
        "total": snap.total,
        "health": {
            "probe_hits": dict(h.probe_hits),
            "matched": h.matched,
            "lost_rows": h.lost_rows,
            "samples": h.samples,
            "lost_samples": h.lost_samples,
            "skipped_samples": h.skipped_samples,
        },
    }
    if h.no_device:  # present only when some drop's namespace could not be recovered
        out["health"]["no_device"] = h.no_device
    if h.pcap is not None:  # only while --pcap captures
        out["health"].update(pcap_written=h.pcap.written, pcap_skipped=h.pcap.skipped, pcap_lost=h.pcap.lost,
                             pcap_unwritten=h.pcap.unwritten, pcap_error=h.pcap.error)
    if snap.other_rows:
        out["other_rows"] = snap.other_rows
        out["other_count"] = snap.other_count
    if snap.warnings:
        out["warnings"] = list(snap.warnings)
    if snap.netns_counters:  # host-wide runs: other namespaces' drop counters that rose (summary: run totals)
        out["netns_counters"] = [counter(c) for c in snap.netns_counters]
    if snap.counter_only:  # present only when drop counters rose and no drop event matched
        out["counter_only"] = [f"{c.source}:{c.name}" for c in snap.counter_only]
    return out


def drop_sample(sample: DropSample) -> Record:
    # pid/comm here are the task the drop happened in; the receiving socket's holder is under "owner"
    return record("sample", command="drops", ts_ns=sample.ts_ns, cpu=sample.cpu, pid=sample.pid,
                  comm=sample.comm, len=sample.len, **drop_row(sample.row, True), owner=owner(sample.row.owner))


# ---------------------------------------------------------------- trace


def latency(lat: Latency) -> Record:
    return {
        "count": lat.count,
        "p50_ns": lat.p50_ns,
        "p90_ns": lat.p90_ns,
        "p99_ns": lat.p99_ns,
        "max_ns": lat.max_ns,
        "sum_ns": lat.sum_ns,
        "mean_ns": lat.mean_ns,
        "buckets": [{"lo_ns": b.lo_ns, "hi_ns": b.hi_ns, "count": b.count} for b in lat.buckets],
    }


def napi(n: Napi) -> Record:
    return {"polls": n.polls, "work": n.work, "budget": n.budget, "exhausted": n.exhausted, "max_work": n.max_work}


def _where(where: Where, per_iface: bool, per_cpu: bool, with_netns: bool) -> Record:
    out: Record = {"iface": where.iface, "ifindex": where.ifindex} if per_iface else {}
    if per_iface and with_netns:
        out["netns"] = where.netns
    if per_cpu:
        out["cpu"] = where.cpu
    return out


def stage_row(row: StageRow, per_iface: bool, per_cpu: bool) -> Record:
    out: Record = {"stage": row.stage, "hook": row.hook, "method": row.method, **latency(row.latency),
                   "count": row.count, "timed": row.latency.count, "sample_every": row.sample_every}
    if row.parts:
        out["breakdown"] = [{**_where(w, per_iface, per_cpu, True), **latency(lat)} for w, lat in row.parts]
    if row.owners:
        out["by_socket"] = [{k: v for k, v in owner(o).items() if k != "sock"} | latency(lat) for o, lat in row.owners]
    if row.napi is not None:
        out["napi"] = napi(row.napi)
        if row.napi_parts:
            out["napi_breakdown"] = [{**_where(w, per_iface, per_cpu, False), **napi(n)} for w, n in row.napi_parts]
    return out


def unavailable(item: Unavailable) -> Record:
    out: Record = {"stage": item.stage} if item.stage is not None else {}
    return {**out, "hook": item.hook, "reason": item.reason}


def _trace_body(snap: TraceSnapshot) -> Record:
    h = snap.health
    return {
        "stages": [stage_row(s, snap.per_iface, snap.per_cpu) for s in snap.stages],
        "unavailable": [unavailable(u) for u in snap.unavailable],
        "softnet": dict(snap.softnet),
        "health": {
            "probe_hits": dict(h.probe_hits),
            "lost_samples": h.lost_samples,
            "lost_skbs": h.lost_skbs,
            "slow_sent": h.slow_sent,
            "missed_enqueue": h.missed_enqueue,
            "ring_overrun": h.ring_overrun,
            "lost_events": h.lost_events,
            "unseen_enqueue": h.unseen_enqueue,
            "unseen_read": h.unseen_read,
            "unstamped": h.unstamped,
        },
    }


def slow_packet(pkt: SlowPacket) -> Record:
    return record("slow", command="trace", ts_ns=pkt.ts_ns, cpu=pkt.cpu, pid=pkt.pid, comm=pkt.comm, iface=pkt.iface,
                  ifindex=pkt.ifindex, netns=pkt.netns, family=pkt.family or None, proto=pkt.proto,
                  saddr=pkt.saddr, daddr=pkt.daddr, sport=pkt.sport, dport=pkt.dport, stages_ns=pkt.stages_ns)


# ---------------------------------------------------------------- follow


def flow(f: Flow) -> Record:
    return {"family": f.family, "proto": f.proto, "saddr": f.saddr, "daddr": f.daddr, "sport": f.sport,
            "dport": f.dport}


def hop(h: Hop) -> Record:
    return {"offset_ns": h.offset_ns, "cpu": h.cpu, "hook": h.hook, "netns": h.netns,
            "netns_cookie": h.netns_cookie, "netns_label": h.netns_label, "iface": h.iface, "ifindex": h.ifindex,
            "len": h.length, **flow(h.flow), "changed": h.changed, "rc": h.rc, "nf_hook": h.nf_hook}


def fate(f: Fate) -> Record:
    who = None
    if f.owner is not None:
        who = {"pid": f.owner.pid, "comm": f.owner.comm, "cgroup": f.owner.cgroup, "container": f.owner.container}
    return {"kind": f.kind, "hook": f.hook, "reason": f.reason, "reason_code": f.reason_code, "location": f.location,
            "netns": f.netns, "netns_label": f.netns_label, "iface": f.iface, "ifindex": f.ifindex, "owner": who}


def packet(p: FollowedPacket) -> Record:
    return record("packet", id=p.id, clone_of=p.clone_of, skb=f"0x{p.skb:x}", first=flow(p.first),
                  hops=[hop(h) for h in p.hops], fate=fate(p.fate))


def _follow_body(snap: FollowSnapshot) -> Record:
    h = snap.health
    return {"followed": snap.followed, "in_flight": len(snap.in_flight),
            "health": {"probe_hits": dict(h.probe_hits), "started": h.started, "table_full": h.table_full,
                       "lost_hops": h.lost_hops, "hops_cut": h.hops_cut, "untracked": h.untracked,
                       "clones": h.clones, "clones_unseen": h.clones_unseen}}


# ---------------------------------------------------------------- lines


def event(item: DropSample | SlowPacket | FollowedPacket) -> Record:
    if isinstance(item, FollowedPacket):
        return packet(item)
    return drop_sample(item) if isinstance(item, DropSample) else slow_packet(item)


def _body(snap: Snapshot) -> Record:
    if isinstance(snap, DropSnapshot):
        return _drops_body(snap)
    if isinstance(snap, TraceSnapshot):
        return _trace_body(snap)
    if isinstance(snap, FollowSnapshot):
        return _follow_body(snap)
    return {}  # a doctor's progress: its findings are records of their own (finding())


def _command(snap: Snapshot) -> str:
    if isinstance(snap, FollowSnapshot):
        return "follow"
    return "drops" if isinstance(snap, DropSnapshot) else "trace" if isinstance(snap, TraceSnapshot) else "doctor"


def interval(snap: Snapshot, seq: int) -> Record:
    return record("interval", command=_command(snap), seq=seq, elapsed_ns=snap.elapsed_ns,
                  interval_ns=snap.interval_ns, **_body(snap))


def summary(snap: Snapshot, stop_reason: str, verdicts: list[Verdict] | None) -> Record:
    if isinstance(snap, DropSnapshot):
        threshold: object = {**verdicts[0].spec, "crossed": verdicts[0].crossed} if verdicts else None
    else:
        threshold = [{**v.spec, "crossed": v.crossed, "value_ns": v.value} for v in verdicts] if verdicts else None
    return record("summary", command=_command(snap), stop_reason=stop_reason, elapsed_ns=snap.elapsed_ns,
                  **_body(snap), threshold=threshold)


def probe_row(row: ProbeRow) -> Record:
    return {"command": row.command, "stage": row.stage, "hook": row.hook, "method": row.method,
            "available": row.available, "reason": row.reason}


def start(info: Start) -> Record:
    f = info.filters
    attached = [{"hook": a.hook, "method": a.method, **({"program": a.program} if a.program else {})}
                for a in info.attached]
    unavail = [unavailable(u) for u in info.unavailable]
    if isinstance(info, DoctorStart):
        return record("start", command="doctor", kernel=info.kernel, headers=info.headers, attached=attached,
                      unavailable=unavail, rules=list(info.rules),
                      filters={"netns": f.netns, "iface": list(f.ifaces), "proto": f.proto, "port": f.port,
                               "host": f.host})
    if isinstance(info, FollowStart):
        return record("start", command="follow", kernel=info.kernel, headers=info.headers, attached=attached,
                      unavailable=unavail, count=info.count,
                      filters={"netns": f.netns, "iface": list(f.ifaces), "proto": f.proto, "port": f.port,
                               "host": f.host})
    if isinstance(info, DropsStart):
        return record("start", command="drops", kernel=info.kernel, headers=info.headers, attached=attached,
                      unavailable=unavail, group_by=list(info.group_by),
                      filters={"netns": f.netns, "iface": list(f.ifaces), "proto": f.proto, "port": f.port,
                               "host": f.host, "reason_code": info.reason_code,
                               **({"cgroup": f.cgroup} if f.cgroup is not None else {})})
    return record("start", command=info.command, kernel=info.kernel, headers=info.headers, stages=list(info.stages),
                  attached=attached, unavailable=unavail,
                  filters={"netns": f.netns, "iface_keys": [list(k) for k in f.iface_keys], "proto": f.proto,
                           "port": f.port, "host": f.host, "unfiltered_stages": list(info.unfiltered_stages)},
                  per_iface=info.per_iface, per_cpu=info.per_cpu, slower_ns=info.slower_ns or None,
                  fail_on_latency=list(info.fail_on_latency),
                  **({"handoff": info.handoff} if info.handoff else {}), sample_every=info.sample_every,
                  not_selected=list(info.not_selected))


# ---------------------------------------------------------------- doctor


def finding(f: Finding) -> Record:
    """One diagnosis (netpath-doctor(8), FINDINGS): the where fields are all present, null when unknown."""
    w = f.where
    return record(
        "finding", id=f.id, severity=f.severity, title=f.title,
        evidence=[{"name": e.name, "value": e.value, "unit": e.unit, "counter": e.counter} for e in f.evidence],
        where={"iface": w.iface, "netns": w.netns, "netns_label": w.netns_label, "pid": w.pid, "comm": w.comm,
               "cgroup": w.cgroup, "container": w.container, "pod": w.pod,
               "pod_namespace": w.pod_namespace, "laddr": w.laddr, "lport": w.lport, "proto": w.proto,
               "cpu": w.cpu},
        knobs=[{"name": k.name, "value": k.value, "advice": k.advice} for k in f.knobs],
        why=f.why, explains=list(f.explains))


def doctor_summary(diag: Diagnosis, stop_reason: str, counts: dict[str, int], fail_on: str | None,
                   crossed: bool) -> Record:
    return record("summary", command="doctor", stop_reason=stop_reason, elapsed_ns=diag.elapsed_ns,
                  findings=counts, checked=list(diag.checked), drops_seen=diag.drops_seen,
                  unavailable=[unavailable(u) for u in diag.unavailable],
                  threshold={"fail_on": fail_on, "crossed": crossed} if fail_on else None)
