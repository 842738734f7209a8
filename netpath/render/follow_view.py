"""netpath follow for people: one block per packet, one line per hop, 80 columns."""

from __future__ import annotations

import textwrap

from netpath.model import Fate, Flow, FollowedPacket, FollowSnapshot, Hop
from netpath.render.drops_view import owner_text

# offset, cpu, netns, device, hook, length: 2+9+1+3+1+14+1+14+1+23+1+6 = 76 columns
HEADER = f"  {'+time':>9} {'cpu':>3} {'netns':<14} {'device':<14} {'hook':<23} {'len':>6}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "~"


def flow_text(f: Flow) -> str:
    if f.family is None:
        return "(no IP header)"
    if f.sport is not None:
        s = f"[{f.saddr}]" if f.family == 6 else f.saddr
        d = f"[{f.daddr}]" if f.family == 6 else f.daddr
        return f"{f.proto} {s}:{f.sport} > {d}:{f.dport}"
    return f"{f.proto} {f.saddr} > {f.daddr}"


def offset_text(ns: int) -> str:
    if ns < 10_000_000:
        return f"{ns / 1e3:.1f}us"
    return f"{ns / 1e6:.1f}ms"


def _netns(label: str | None, inode: int | None) -> str:
    return label or (str(inode) if inode else "?")


def hook_text(h: Hop) -> str:
    """The hook without its category; nf_hook_slow with the netfilter family and hook it ran."""
    hook = h.hook.split(":", 1)[-1]
    return f"nf {h.nf_hook}" if h.nf_hook else hook


def hop_lines(h: Hop) -> list[str]:
    mark = "*" if h.changed else " "
    hook = hook_text(h)
    line = (f"{mark} {offset_text(h.offset_ns):>9} {h.cpu:>3} {_clip(_netns(h.netns_label, h.netns), 14):<14} "
            f"{_clip(h.iface or '-', 14):<14} {_clip(hook, 23):<23} {h.length:>6}")
    out = [line]
    if h.changed:
        out.append(_clip(f"      rewritten: {flow_text(h.flow)}", 80))
    return out


def fate_text(f: Fate) -> str:
    where = (f" on {f.iface}" if f.iface else "") + (f" in {_netns(f.netns_label, f.netns)}" if f.netns else "")
    if f.kind == "delivered":
        if f.owner is not None and f.owner.pid is None and f.owner.sock is None:
            cgroup = f" (cgroup {f.owner.cgroup})" if f.owner.cgroup else ""
            return f"delivered to a socket no process holds yet{cgroup}{where}"
        return f"delivered to {owner_text(f.owner) or 'a reader'}{where}"
    if f.kind == "dropped":
        return f"dropped: {f.reason or 'reason unknown'} at {f.location}{where}"
    if f.kind == "sent":
        return f"sent out of {f.iface or '?'} in {_netns(f.netns_label, f.netns)}"
    if f.kind == "gro_merged":
        return f"merged by GRO into another skb{where}"
    if f.kind == "consumed":
        return f"consumed at {f.location}{where}"
    if f.kind == "segmented":
        return f"cut into segments by GSO at {f.location} (each a packet of its own){where}"
    if f.kind == "freed":
        return f"freed by {f.location} (no skb tracepoint there){where}"
    if f.kind == "untracked":
        return "freed where no tracepoint shows it (its address was reused)"
    return "still in flight when the run ended"


def packet_lines(p: FollowedPacket) -> list[str]:
    clone = f" (clone of {p.clone_of})" if p.clone_of else ""
    head = f"packet {p.id}{clone}: {flow_text(p.first)}  ({len(p.hops)} hops)"
    lines = [_clip(head, 80), HEADER]
    for h in p.hops:
        lines += hop_lines(h)
    lines += textwrap.wrap(fate_text(p.fate), 80, initial_indent="  fate: ", subsequent_indent="        ",
                           break_on_hyphens=False)
    return lines


def summary_lines(snap: FollowSnapshot, stop_reason: str) -> list[str]:
    h = snap.health
    lines = [f"summary ({stop_reason}, {snap.elapsed_ns / 1e9:.1f}s): {snap.followed} packets ended, "
             f"{len(snap.in_flight)} in flight"]
    lines.append(f"health: started {h.started}, table full {h.table_full}, lost hops {h.lost_hops}, "
                 f"hops cut {h.hops_cut}, untracked {h.untracked}")
    if h.clones or h.clones_unseen:
        lines.append(f"clones: followed {h.clones}, unseen (buffer table full) {h.clones_unseen}")
    return [_clip(line, 80) for line in lines]
