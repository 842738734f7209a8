"""Rules about the packets themselves: fragments that never became a datagram, and bad checksums."""

from __future__ import annotations

from netpath.diagnose.observe import Observation, by_iface, knob, ns_where
from netpath.model import Evidence, Finding, FindingWhere, Knob

FRAG_REASONS = ("FRAG_REASM_TIMEOUT", "FRAG_TOO_FAR", "DUP_FRAG")


def reassembly_failure(obs: Observation) -> list[Finding]:
    """ip-sysctl.rst: ipfrag_time (seconds a fragment queue lives; ip_expire drops with FRAG_REASM_TIMEOUT),
    ipfrag_max_dist (how many other fragments from the same source may arrive between two of one datagram
    before ip_frag_too_far drops its queue with FRAG_TOO_FAR, net/ipv4/ip_fragment.c), ipfrag_high_thresh
    (memory; past it new fragments are dropped). IPv6 reassembles in net/ipv6/reassembly.c with its own
    ip6frag_time / ip6frag_high_thresh / ip6frag_low_thresh and has no max_dist."""
    rows = obs.rows(*FRAG_REASONS)
    fails = obs.snmp("IpReasmFails", "Ip6ReasmFails")
    if not rows and not fails:
        return []
    n = sum(r.count for r in rows)
    row = by_iface(rows)[0][0] if rows else None
    settings = obs.settings_for(row.netns if row else None)
    reasons = {r.reason for r in rows}
    v6 = obs.snmp("Ip6ReasmFails") > 0
    v4 = obs.snmp("IpReasmFails") > 0 or not v6
    knobs = []
    if v4:
        if "FRAG_TOO_FAR" in reasons:
            knobs.append(knob(settings, "net.ipv4.ipfrag_max_dist", "fragments of other datagrams from the same "
                              "source allowed in between (reordering); raise it, or 0 to turn the check off"))
        knobs += [knob(settings, "net.ipv4.ipfrag_time", "seconds a partial datagram waits for its missing "
                       "fragments; the real fix is a path MTU that needs no fragments"),
                  knob(settings, "net.ipv4.ipfrag_high_thresh", "memory for IPv4 fragments being reassembled")]
    if v6:
        knobs += [knob(settings, "net.ipv6.ip6frag_time", "seconds a partial IPv6 datagram waits"),
                  knob(settings, "net.ipv6.ip6frag_high_thresh", "memory for IPv6 fragments being reassembled"),
                  knob(settings, "net.ipv6.ip6frag_low_thresh", "what the memory is trimmed to past the high mark")]
    why = ("fragments of other datagrams from the same source arrived in between (heavy reordering or loss), "
           "so the kernel gave up on the datagram" if reasons == {"FRAG_TOO_FAR"} else
           "a fragment of these datagrams never arrived (or came too late), so the ones that did were thrown away")
    return [Finding(
        "reassembly-failure", "warn", "fragmented datagrams could not be reassembled",
        (Evidence("fragments dropped", n, "kfree_skb reasons " + ", ".join(FRAG_REASONS)),
         Evidence("datagrams that failed reassembly", fails, "nstat IpReasmFails + Ip6ReasmFails", "datagrams"),
         Evidence("of them, timed out", obs.snmp("IpReasmTimeout", "Ip6ReasmTimeout"),
                  "nstat IpReasmTimeout + Ip6ReasmTimeout", "datagrams")),
        FindingWhere(**ns_where(obs, row)),  # type: ignore[arg-type]
        tuple(knobs), why)]


CSUM_REASONS = ("UDP_CSUM", "TCP_CSUM", "IP_CSUM", "ICMP_CSUM", "SKB_CSUM")
TOP_SOURCES = 3


def checksum_errors(obs: Observation) -> list[Finding]:
    """A bad checksum is found by the stack (__skb_checksum_complete, udp_lib_checksum_complete,
    tcp_checksum_complete) whether or not the NIC offloaded the check: offload decides who computes it, not
    whether the packet is dropped, so `ethtool -K rx` is no fix. A frame damaged on the wire fails the NIC's
    FCS first (rx_crc_errors) and never reaches L4; L4 errors on a link with clean frames mean the packet
    was built or rewritten wrong: a broken sender, its TX checksum offload, or a NAT/middlebox."""
    out = []
    for row, n in by_iface(obs.rows(*CSUM_REASONS)):
        wire = sum(c.count for c in obs.counters("link", ("rx_crc", "rx_frame")) if c.iface == row.iface)
        reasons = {r.reason for r in obs.rows(*CSUM_REASONS) if (r.netns, r.iface) == (row.netns, row.iface)}
        sources: dict[str, int] = {}
        for reason, saddr, k in obs.sources:
            if reason in reasons:
                sources[saddr] = sources.get(saddr, 0) + k
        top = sorted(sources.items(), key=lambda kv: -kv[1])[:TOP_SOURCES]
        evidence = [Evidence("packets dropped for a bad checksum", n, "kfree_skb reasons " + "/".join(CSUM_REASONS)),
                    Evidence("UDP checksum errors, all interfaces", obs.snmp("UdpInCsumErrors", "Udp6InCsumErrors"),
                             "nstat UdpInCsumErrors + Udp6InCsumErrors"),
                    Evidence("TCP checksum errors, all interfaces", obs.snmp("TcpInCsumErrors"),
                             "nstat TcpInCsumErrors"),
                    Evidence(f"frames damaged on the wire ({row.iface})", wire,
                             "ip -s link rx_crc_errors + rx_frame_errors")]
        evidence += [Evidence(f"sampled drops from {saddr}", k, None, "samples") for saddr, k in top]
        names = ", ".join(saddr for saddr, _k in top)
        if wire:
            knobs = (Knob(f"ethtool {row.iface}", None, "the frames are damaged on the link: check the cable or "
                          "optic, speed/duplex, and the peer port's error counters"),)
            why = "frames arrived damaged on the link (FCS errors beside the checksum errors)"
        else:
            knobs = (Knob("the senders" + (f" ({names})" if names else ""), None,
                          "the frames are intact on the wire, so the packets were built or rewritten wrong: check "
                          "the sender's TX checksum offload (ethtool -K IFACE tx off on the sender to test), "
                          "and any NAT or middlebox on the path"),)
            why = ("intact frames carry transport checksums that do not match: a broken sender, its TX offload, "
                   "or a NAT/middlebox rewriting them" + (f"; most come from {names}" if names else ""))
        out.append(Finding(
            "checksum-errors", obs.grade("damage", n, obs.received(row.iface)),
            f"packets with bad checksums arrive on {row.iface or '?'}", tuple(evidence),
            FindingWhere(**ns_where(obs, row)), knobs, why))  # type: ignore[arg-type]
    return out
