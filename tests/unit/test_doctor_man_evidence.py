"""netpath-doctor(8) says what each finding's evidence equals: the page and the rule must cite the same counters."""

from __future__ import annotations

import re
from pathlib import Path

from netpath.diagnose.rules import Observation, diagnose
from netpath.model import DropHealth, DropRow, DropSnapshot, Settings, Window

PAGE = Path(__file__).resolve().parents[2] / "man" / "man8" / "netpath-doctor.8"


def evidence_paragraph() -> str:
    text = PAGE.read_text().replace("\\-", "-")
    start = text.index("What each rule's evidence equals:")
    return " ".join(text[start:text.index(".PP", start)].split())


def test_netfilter_drop_evidence_is_the_counters_the_page_names() -> None:
    row = DropRow("NETFILTER_DROP", 2, "f+0x1", "nn0", 2, 77, "udp", 120, netns_label="web")
    snap = DropSnapshot([row], [], DropHealth(), 120, 6_000_000_000)
    (finding,) = diagnose(Observation(snap, None, Window(rx_packets={"nn0": 200}), Settings(77, "web"),
                                      6_000_000_000))
    assert finding.id == "netfilter-drop"
    said = re.search(r"netfilter-drop (.*?);", evidence_paragraph())
    assert said is not None
    for source in (e.counter for e in finding.evidence):  # "kfree_skb reason NETFILTER_DROP", "link rx_packets"
        words = source.replace("reason ", "").split()
        assert all(w in said.group(1) for w in words), (source, said.group(1))
    assert "own packet counters" not in said.group(1)  # the rules' counters are where to look, not the evidence
