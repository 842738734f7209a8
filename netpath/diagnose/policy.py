"""Rules about decisions: netfilter rules, conntrack's own refusals, tc filters and qdiscs, rp_filter, XDP.

Conntrack's refusals reach kfree_skb as NETFILTER_DROP at nf_hook_slow, like a rule's verdict; the
conntrack counters (/proc/net/stat/nf_conntrack, per namespace) tell them apart. How each refused packet
is counted (net/netfilter/nf_conntrack_core.c, 6.1 to 6.18): nf_conntrack_in drops it when
__nf_conntrack_alloc finds the table full: `drop`; __nf_conntrack_confirm drops it when its entry cannot
be inserted: a clash nf_ct_resolve_clash cannot resolve (a NAT port another flow holds: get_unique_tuple in
nf_nat_core.c "might not be possible to get a unique tuple ... we will end up with a final duplicate in
__ip_conntrack_confirm and drop the packet") counts `drop` and `insert_failed`, a hash chain too long counts
`chaintoolong` and `insert_failed`, an entry dying meanwhile `insert_failed` alone. So a refused packet is
counted once in drop + chaintoolong, and a full table's share of `drop` is drop - (insert_failed -
chaintoolong). `early_drop` evicts an unassured entry to make room and drops no packet; `invalid` counts
packets conntrack could not track, which go on untracked (a rule matching ctstate INVALID may then drop
them). /proc prints chaintoolong under the column "chainlength" (kernel/procnet.py).
"""

from __future__ import annotations

from netpath.diagnose.nic import xdp_part
from netpath.diagnose.observe import Observation, by_iface, knob, ns_where
from netpath.model import Counter, Evidence, Finding, FindingWhere, Knob


def ct_refused(ct: dict[str, int]) -> int:
    """Packets conntrack itself dropped (each counted once: see the module's docstring)."""
    return max(ct.get("drop", 0) + ct.get("chaintoolong", 0), ct.get("insert_failed", 0))


def ct_table_full(ct: dict[str, int]) -> int:
    """Of `drop`, the packets refused because the table was full (not the insert clashes it also counts)."""
    return max(ct.get("drop", 0) - max(ct.get("insert_failed", 0) - ct.get("chaintoolong", 0), 0), 0)

CONNTRACK_NEAR_FULL = 0.8  # conntrack-near-full: entries at or above this share of nf_conntrack_max


def netfilter_drop(obs: Observation) -> list[Finding]:
    rows = obs.rows("NETFILTER_DROP")
    ct = obs.window.conntrack
    refused = ct_refused(ct)
    out = []
    for row, n in by_iface(rows):
        n_rules = max(n - refused, 0)  # conntrack's own refusals are conntrack-full's / conntrack-insert-failed's
        refused = max(refused - n, 0)
        if n_rules <= 0:
            continue
        received = obs.received(row.iface)
        evidence = [Evidence("packets dropped by a netfilter rule", n_rules, "kfree_skb reason NETFILTER_DROP"
                             if n_rules == n else "kfree_skb reason NETFILTER_DROP - conntrack's own refusals")]
        if n_rules != n:
            evidence.append(Evidence("netfilter drops, conntrack's included", n, "kfree_skb reason NETFILTER_DROP"))
        if ct.get("invalid"):
            evidence.append(Evidence("packets conntrack found invalid (a ctstate INVALID rule drops them)",
                                     ct["invalid"], "/proc/net/stat/nf_conntrack invalid"))
        if received:
            evidence.append(Evidence(f"packets received on {row.iface}", received, "link rx_packets"))
        rules = obs.settings_for(row.netns).netfilter_rules
        out.append(Finding(
            "netfilter-drop", obs.grade("policy", n_rules, received),
            f"a firewall rule drops received packets on {row.iface or '?'}", tuple(evidence),
            FindingWhere(**ns_where(obs, row)),  # type: ignore[arg-type]
            (Knob("iptables-save / nft list ruleset", None if rules is None else f"{rules} drop/reject rules",
                  "find the rule whose counter grows (iptables -L -v -n, nft list ruleset) and narrow or remove "
                  "it if the traffic is wanted"),),
            "an iptables/nftables rule in this namespace decided to drop these packets"))
    return out


# kfree_skb reasons of traffic control: a filter's verdict on ingress or egress (tcf_classify's TC_ACT_SHOT,
# net/sched/cls_api.c, net/core/dev.c sch_handle_ingress/egress) or a qdisc refusing to enqueue (QDISC_DROP
# and the qdisc-specific reasons, include/net/dropreason-core.h)
TC_FILTER_REASONS = ("TC_INGRESS", "TC_EGRESS", "TC_CHAIN_NOTFOUND", "TC_RECLASSIFY_LOOP", "TC_COOKIE_ERROR")
QDISC_REASONS = ("QDISC_DROP", "QDISC_OVERLIMIT", "QDISC_CONGESTED", "CAKE_FLOOD", "FQ_BAND_LIMIT",
                 "FQ_HORIZON_LIMIT", "FQ_FLOW_LIMIT")
TC_REASONS = TC_FILTER_REASONS + QDISC_REASONS


def _tc_knob(obs: Observation, netns: int | None, iface: str | None, reasons: set[str]) -> Knob:
    settings = obs.settings_for(netns)
    if reasons & set(QDISC_REASONS):
        return Knob(f"tc -s qdisc show dev {iface}", None, "the egress qdisc refused to queue: raise its limit "
                    "(tc qdisc change ... limit N) or the rate it drains at, or send less")
    if reasons <= {"TC_EGRESS"}:
        n = settings.tc_egress.get(iface or "")
        return Knob(f"tc filter show dev {iface} egress", None if n is None else f"{n} filters",
                    "find the egress filter with action drop and narrow or delete it if the traffic is wanted")
    n = settings.tc_ingress.get(iface or "")
    return Knob(f"tc filter show dev {iface} ingress", None if n is None else f"{n} filters",
                "find the filter with action drop and narrow or delete it if the traffic is wanted")


def _reasons_counter(reasons: set[str]) -> str:
    return f"kfree_skb reason {next(iter(reasons))}" if len(reasons) == 1 else "kfree_skb reasons " + "/".join(
        sorted(reasons))


def tc_drop(obs: Observation) -> list[Finding]:
    rows = obs.rows(*TC_REASONS)
    out = []
    for row, n in by_iface(rows):
        mine = [r for r in rows if (r.netns, r.iface) == (row.netns, row.iface)]
        reasons = {r.reason or "?" for r in mine}
        egress = bool(reasons & ({"TC_EGRESS"} | set(QDISC_REASONS)))
        evidence = [Evidence("packets dropped by " + ("a qdisc" if reasons & set(QDISC_REASONS) else "a tc filter"),
                             n, _reasons_counter(reasons))]
        if not egress:
            qdisc = sum(c.count for c in obs.counters("qdisc") if c.iface == row.iface and c.name.startswith(
                ("ingress", "clsact")))
            evidence.append(Evidence("ingress qdisc drops", qdisc, f"tc -s qdisc show dev {row.iface} ingress"))
        else:
            qdisc = sum(c.count for c in obs.counters("qdisc") if c.iface == row.iface and not c.name.startswith(
                ("ingress", "clsact")))
            evidence.append(Evidence("egress qdisc drops", qdisc, f"tc -s qdisc show dev {row.iface}"))
        received = obs.received(row.iface)
        out.append(Finding(
            "tc-drop", obs.grade("policy", n, received),
            f"{'an egress' if egress else 'an ingress'} tc {'qdisc' if reasons & set(QDISC_REASONS) else 'filter'} "
            f"drops packets on {row.iface or '?'}", tuple(evidence),
            FindingWhere(**ns_where(obs, row)),  # type: ignore[arg-type]
            (_tc_knob(obs, row.netns, row.iface, reasons),),
            "traffic control on the interface's " + ("egress" if egress else "ingress") + " path dropped these "
            "packets: a filter returned 'shot', or a qdisc was full or over its limit"))
    return out


RP_MODES = {0: "off", 1: "strict", 2: "loose"}


def rp_filter(obs: Observation) -> list[Finding]:
    """ip-sysctl.rst, rp_filter: "The max value from conf/{all,interface}/rp_filter is used when doing source
    validation on the {interface}." (fib_validate_source -> IN_DEV_RPFILTER, net/ipv4/fib_frontend.c)."""
    out = []
    for row, n in by_iface(obs.rows("IP_RPFILTER")):
        settings = obs.settings_for(row.netns)
        own = settings.sysctl(f"net.ipv4.conf.{row.iface}.rp_filter")
        every = settings.sysctl("net.ipv4.conf.all.rp_filter")
        values = [int(v) for v in (own, every) if v is not None and v.isdigit()]
        mode = max(values) if values else None
        name = RP_MODES.get(mode, "?") if mode is not None else "unknown"
        knobs = (knob(settings, f"net.ipv4.conf.{row.iface}.rp_filter",
                      "2 (loose) accepts a source reachable by any route; 0 turns the check off"),
                 knob(settings, "net.ipv4.conf.all.rp_filter",
                      "the interface uses the larger of this and its own value: lower both"))
        why = {"strict": "the route back to these packets' source does not leave through the interface they came "
                         "in on, and strict mode (the effective value, max of all and the interface) drops them "
                         "(asymmetric routing, multihoming, or spoofed sources)",
               "loose": "no route at all leads back to these packets' source, and loose mode (the effective value, "
                        "max of all and the interface) drops them (a missing route, or spoofed sources)"}.get(
            name, "the reverse-path check dropped them")
        out.append(Finding(
            "rp-filter", "warn", f"reverse-path filtering ({name}) drops packets on {row.iface or '?'}",
            (Evidence("packets dropped by the reverse-path check", n, "kfree_skb reason IP_RPFILTER"),
             Evidence("reverse-path filter drops, all interfaces", obs.snmp("TcpExtIPReversePathFilter"),
                      "nstat TcpExtIPReversePathFilter")),
            FindingWhere(**ns_where(obs, row)), knobs, why))  # type: ignore[arg-type]
    return out


def xdp_drop(obs: Observation) -> list[Finding]:
    by_dev: dict[str, list[Counter]] = {}
    for c in obs.counters("xdp"):
        if "drop" in c.name or c.name == "xdp_exception":
            by_dev.setdefault(c.iface or "?", []).append(c)
    for row in obs.rows("XDP"):
        by_dev.setdefault(row.iface or "?", []).append(Counter("xdp", "kfree_skb reason XDP", row.count, row.iface))
    out = []
    for iface, counters in sorted(by_dev.items()):
        n = sum(c.count for c in counters)
        errors = any(c.name == "xdp_exception" for c in counters)
        evidence = [Evidence(f"XDP {c.name}", c.count, c.name if c.name.startswith("kfree_skb")
                             else f"{'tracepoint xdp:xdp_exception' if c.name == 'xdp_exception' else 'ethtool -S'} "
                             f"{c.name}") for c in counters]
        # the driver's own drop counters that count them again (virtio_net: rxN_drops, the link's rx_dropped)
        for c in obs.counters("ethtool") + obs.counters("link", ("rx_dropped",)):
            part, name = xdp_part(obs, c)
            if c.iface == iface and part:
                evidence.append(Evidence(f"of the driver's {c.name}, the {name} it also counts there", part,
                                         f"ethtool -S {c.name}" if c.source == "ethtool"
                                         else f"ip -s link {c.name}"))
        out.append(Finding(
            "xdp-drop", "warn" if errors else obs.grade("policy", n, obs.received(iface)),
            f"the XDP program on {iface} drops packets" + (" (XDP errors)" if errors else ""),
            tuple(evidence),
            FindingWhere(**ns_where(obs, iface=iface)),  # type: ignore[arg-type]
            (Knob(f"ip link show dev {iface} (xdp)", "attached", "check the program's verdicts; an aborted or "
                  "errored program drops everything it cannot handle"),),
            "an XDP program returned XDP_DROP or failed (XDP_ABORTED) before the stack saw the packets"))
    return out


# ---------------------------------------------------------------- conntrack


def _ct_levels(obs: Observation) -> tuple[int | None, int | None]:
    def num(name: str) -> int | None:
        v = obs.settings.sysctl(name)
        return int(v) if v is not None and v.isdigit() else None

    return num("net.netfilter.nf_conntrack_count"), num("net.netfilter.nf_conntrack_max")


def conntrack_full(obs: Observation) -> list[Finding]:
    ct = obs.window.conntrack
    full = ct_table_full(ct)
    if not (full or ct.get("early_drop", 0)):
        return []
    drops = sum(r.count for r in obs.rows("NETFILTER_DROP"))
    clashes = ct.get("drop", 0) - full
    evidence = [Evidence("new connections refused: conntrack table full", full, "/proc/net/stat/nf_conntrack drop"
                         if not clashes else "/proc/net/stat/nf_conntrack drop - (insert_failed - chainlength)"),
                Evidence("entries evicted early to make room (no packet dropped)", ct.get("early_drop", 0),
                         "/proc/net/stat/nf_conntrack early_drop", "entries"),
                Evidence("packets dropped by netfilter (all causes)", drops, "kfree_skb reason NETFILTER_DROP")]
    count, top = _ct_levels(obs)
    return [Finding(
        "conntrack-full", "crit" if full else "warn",
        f"the connection-tracking table is full ({count if count is not None else '?'} of "
        f"{top if top is not None else '?'} entries)", tuple(evidence),
        FindingWhere(**ns_where(obs)),  # type: ignore[arg-type]
        (knob(obs.settings, "net.netfilter.nf_conntrack_max", "raise it (each entry costs ~300 bytes), or "
              "exempt busy traffic from tracking (NOTRACK)"),
         knob(obs.settings, "net.netfilter.nf_conntrack_count", "entries in use now, in this namespace"),
         knob(obs.settings, "net.netfilter.nf_conntrack_buckets", "raise with nf_conntrack_max")),
        "every new flow needs a conntrack entry, and with the table full the kernel drops the packet that "
        "would create one")]


def conntrack_near_full(obs: Observation) -> list[Finding]:
    """Entries against the limit before anything is refused: __nf_conntrack_alloc compares this namespace's
    count with nf_conntrack_max (global) and refuses past it."""
    if ct_table_full(obs.window.conntrack):
        return []  # already refusing: conntrack-full's finding
    count, top = _ct_levels(obs)
    if count is None or not top or count < CONNTRACK_NEAR_FULL * top:
        return []
    return [Finding(
        "conntrack-near-full", "warn", f"the connection-tracking table is {100 * count // top}% full "
        f"({count} of {top} entries)",
        (Evidence("conntrack entries in this namespace now", count, "sysctl net.netfilter.nf_conntrack_count",
                  "entries"),
         Evidence("the table's limit", top, "sysctl net.netfilter.nf_conntrack_max", "entries")),
        FindingWhere(**ns_where(obs)),  # type: ignore[arg-type]
        (knob(obs.settings, "net.netfilter.nf_conntrack_max", "raise it before it fills (each entry costs "
              "~300 bytes), or exempt busy traffic from tracking (NOTRACK)"),
         knob(obs.settings, "net.netfilter.nf_conntrack_buckets", "raise with nf_conntrack_max")),
        "new flows are refused once the table is full; it is close to that now")]


def conntrack_insert_failed(obs: Observation) -> list[Finding]:
    ct = obs.window.conntrack
    failed, chain = ct.get("insert_failed", 0), ct.get("chaintoolong", 0)
    n = max(failed, chain)  # insert_failed counts the chains too long as well
    if not n:
        return []
    return [Finding(
        "conntrack-insert-failed", obs.grade("refused", n, obs.received(None)),
        "conntrack could not insert new entries: packets dropped",
        (Evidence("packets dropped: their conntrack entry could not be inserted", failed,
                  "/proc/net/stat/nf_conntrack insert_failed"),
         Evidence("of them, a clash with another flow's entry (NAT port clash, racing packets; also in drop)",
                  max(failed - chain, 0), "/proc/net/stat/nf_conntrack insert_failed - chainlength"),
         Evidence("of them, a hash chain too long", chain, "/proc/net/stat/nf_conntrack chainlength"),
         Evidence("clashes resolved without a drop", ct.get("clash_resolve", 0),
                  "/proc/net/stat/nf_conntrack clashres")),
        FindingWhere(**ns_where(obs)),  # type: ignore[arg-type]
        (Knob("SNAT/MASQUERADE port randomisation", None, "use --random-fully (iptables) or fully-random "
              "(nft) on source NAT so concurrent flows do not pick the same port"),
         knob(obs.settings, "net.netfilter.nf_conntrack_buckets", "more buckets make shorter chains")),
        "two flows mapped to the same tuple (often a source NAT picking a port another flow took in the same "
        "instant, or parallel UDP packets racing), or a hash chain grew too long, so the packet that would "
        "have created the entry was dropped")]
