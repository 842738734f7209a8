"""The one table of severity thresholds: every rule that grades lost packets grades them here.

A finding's severity comes from both its rate (drops per second over the
window) and its share (drops as a fraction of the packets the interface,
namespace or socket received in the window): a handful of drops on an idle
link can be the whole of its traffic, and thousands a second on a busy one a
rounding error. Each policy starts at its base severity and rises to warn or
crit when either the rate or the share reaches that level's threshold.
netpath-doctor(8) prints this table (SEVERITY POLICIES); a unit test checks
the page against it.
"""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("info", "warn", "crit")
RANK = {name: i for i, name in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Policy:
    id: str
    base: str  # the severity of any drop under this policy
    what: str  # which findings use it, for the man page
    warn_rate: float | None = None  # drops/s at or above which it is at least warn
    warn_share: float | None = None  # share of received packets at or above which it is at least warn
    crit_rate: float | None = None
    crit_share: float | None = None


POLICIES: tuple[Policy, ...] = (
    # data an application was sent and the kernel threw away: never below warn
    Policy("loss", "warn", "data lost: socket buffers, TCP receive queue, backlog, NIC ring, protocol memory",
           crit_rate=1000.0, crit_share=0.05),
    # a refused connection is lost work for a client that retries or gives up
    Policy("refused", "warn", "connections refused: accept queue, SYN queue, conntrack table or insert",
           crit_rate=10.0, crit_share=0.05),
    # drops no rule claims: info for a trickle, never silent
    Policy("unexplained", "info", "drops no other rule claims (unexplained-drops)",
           warn_rate=1.0, warn_share=0.001, crit_rate=1000.0, crit_share=0.05),
    # frames damaged on the wire or by a sender
    Policy("damage", "info", "damaged packets: CRC, frame and length errors, bad checksums",
           warn_rate=1.0, warn_share=0.001, crit_share=0.01),
    # TCP throwing away what it already has (a retransmission of received data, a segment for a closed
    # connection): the sender's waste, no data lost; info at any rate
    Policy("benign", "info", "duplicates of data TCP already has, segments for connections already closed"),
    # a decision someone wrote down (a firewall rule, a tc filter, an XDP program)
    Policy("policy", "info", "a filter someone wrote: netfilter, tc, XDP", warn_share=0.5),
)
BY_ID = {p.id: p for p in POLICIES}
# a share says little about a handful of packets (3 of 6 is 50%): below this many drops only the rate counts
MIN_SHARE_DROPS = 10


def grade(policy: str, n: int, seconds: float, received: int | None = None) -> str:
    """The severity of n drops over `seconds` under `policy`; received: the packets that arrived where they
    were dropped in the same window, the dropped ones included (None: unknown, then the rate alone decides)."""
    p = BY_ID[policy]
    rate = n / max(seconds, 1e-9)
    share = n / max(received, n) if received is not None and n >= MIN_SHARE_DROPS else None

    def reached(r: float | None, s: float | None) -> bool:
        return (r is not None and rate >= r) or (s is not None and share is not None and share >= s)

    if n <= 0:
        return p.base
    if reached(p.crit_rate, p.crit_share):
        return "crit"
    if RANK[p.base] < RANK["warn"] and reached(p.warn_rate, p.warn_share):
        return "warn"
    return p.base


def _num(v: float) -> str:
    return f"{v:g}"


def table_rows() -> list[tuple[str, str, str, str]]:
    """(policy, base, warn at, crit at) in words, for the man page and --help."""
    def at(rate: float | None, share: float | None) -> str:
        parts = []
        if rate is not None:
            parts.append(f"{_num(rate)}/s")
        if share is not None:
            parts.append(f"{_num(share * 100)}%")
        return " or ".join(parts) or "-"

    return [(p.id, p.base, "-" if p.base == "warn" else at(p.warn_rate, p.warn_share),
             at(p.crit_rate, p.crit_share)) for p in POLICIES]
