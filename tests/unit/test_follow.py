"""netpath follow without root: the program it builds, hops from the ring into packets, JSON and the view."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
from fake_bpf import U64, FakeProgram, loader
from test_kernel_facts import make_root
from test_sessions import DATA, NAMES, quiet_machine, reasons  # noqa: F401  (fixtures)

from netpath import bpf, contract, netns
from netpath.cli import main as main_mod
from netpath.collect import follow as follow_mod
from netpath.collect.owners import OwnerResolver
from netpath.errors import EXIT_USAGE, MissingCapability
from netpath.kernel.facts import KernelFacts
from netpath.model import FollowedPacket, Owner
from netpath.query import Filters
from netpath.render import follow_view, records

OFFSETS = {name: 8 * i for i, name in enumerate(follow_mod.NEEDED, 1)}
C = "".join((bpf.BPF_DIR / unit).read_text() for unit in ("follow.c", "follow_table.c", "follow_hooks.c"))
KP_C = (bpf.BPF_DIR / "follow_kprobe.c").read_text()
HOOK = {h.name: i for i, h in enumerate(contract.FOLLOW_HOOKS)}
FATE = {f: i for i, f in enumerate(contract.FOLLOW_FATES)}


def facts_with(tmp_path: Path, hooks: tuple[str, ...]) -> KernelFacts:
    root = make_root(tmp_path, "6.18.1", (DATA / "kfree_skb-6.18.format").read_text(), False)
    events = root / "sys/kernel/tracing/available_events"
    events.write_text(events.read_text() + "".join(f"{name}\n" for name in hooks))
    return KernelFacts.load(root)


@pytest.fixture
def follow_facts(tmp_path):
    return facts_with(tmp_path, tuple(h.name for h in contract.FOLLOW_HOOKS))


def test_every_hook_has_one_handler_and_every_value_is_a_number(follow_facts):
    for hook in contract.FOLLOW_HOOKS:
        if hook.is_kprobe:  # one program per function, attached where the kernel has it
            assert re.search(rf"(FOLLOW_KPROBE\({hook.kprobe_fn},\s+{hook.c_id},|int {hook.kprobe_fn}\(void \*ctx\))",
                             KP_C), hook.name
            assert hook.c_id in KP_C
            continue
        assert f"#ifdef HOOK_{hook.c_id}\n" in C, hook.name
        assert re.search(rf"follow_hook\({hook.c_id}, {int(hook.entry)}, &c\)", C), hook.name
    q = follow_mod.FollowQuery(Filters(port=53, proto="udp", host=ipaddress.ip_address("10.96.0.10")), count=3)
    src = follow_mod.program_source(q, follow_facts, OFFSETS)
    assert src.files == ["where.c", "drops_owner.c", "follow.c", "follow_table.c", "follow_hooks.c", "follow_kprobe.c"]
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in src.defines.values())
    assert (src.defines["FOLLOW_MAX"], src.defines["FILTER_PORT"], src.defines["FILTER_PROTO"]) == (3, 53, 17)
    assert src.defines["FILTER_HOST_W0"] == int.from_bytes(bytes([10, 96, 0, 10]), "little")
    pages = src.defines["FOLLOW_RING_PAGES"]
    assert pages & (pages - 1) == 0 and pages * src.defines["NP_PAGE_SIZE"] >= contract.FOLLOW_RING_BYTES
    assert {f"HOOK_{h.c_id}" for h in contract.FOLLOW_HOOKS if not h.is_kprobe} <= set(src.defines)


def test_a_missing_tracepoint_is_left_out_and_named(tmp_path):
    facts = facts_with(tmp_path, ("net:netif_receive_skb", "skb:consume_skb"))
    src = follow_mod.program_source(follow_mod.FollowQuery(), facts, OFFSETS)
    assert "HOOK_FH_RECEIVE" in src.defines and "HOOK_FH_DEV_QUEUE" not in src.defines
    _, unavailable = follow_mod.available_hooks(facts)
    reasons_by_hook = {u.hook: u.reason for u in unavailable}
    assert reasons_by_hook["net:net_dev_queue"] == "no such tracepoint in this kernel"
    assert "not an skb" in reasons_by_hook["xdp:xdp_redirect"]


def test_no_entry_hook_is_an_environment_error(tmp_path):
    facts = facts_with(tmp_path, ("skb:consume_skb",))
    with pytest.raises(MissingCapability, match="first seen"):
        follow_mod.program_source(follow_mod.FollowQuery(), facts, OFFSETS)


def hop(id_: int, hook: str, offset: int, *, fate: str = "in_flight", saddr: str | None = "10.0.0.1",
        daddr: str = "10.9.0.53", sport: int = 4000, dport: int = 53, ifindex: int = 4, netns: int = 77,
        cookie: int = 0, reason: int = 0, location: int = 0, sk_ino: int = 0, pid: int = 0, rc: int = 0,
        length: int = 36, comm: bytes = b"", frames: tuple[int, ...] = (), clone_of: int = 0) -> bytes:
    family = 4 if saddr else 0
    raw_s = ipaddress.ip_address(saddr).packed.ljust(16, b"\0") if saddr else bytes(16)
    raw_d = ipaddress.ip_address(daddr).packed.ljust(16, b"\0") if saddr else bytes(16)
    return contract.FOLLOW_HOP.fmt.pack(
        id_, 0xFFFF888000001000 + id_, offset, cookie, location, 0, sk_ino, clone_of, netns, ifindex, length, 1, reason,
        pid, rc,
        HOOK[hook], FATE[fate], family, raw_s, raw_d, sport if saddr else 0, dport if saddr else 0, 0x0800,
        17 if saddr else 0, 0, comm.ljust(16, b"\0"), *frames, *([0] * (contract.FOLLOW_FRAMES - len(frames))))


def stats(started: int = 0, untracked: int = 0, hits: int = 0, clones: int = 0) -> bytes:
    values = dict(started=started, untracked=untracked, clones=clones)
    own = [values.get(name, 0) for name in contract.FOLLOW_STATS]
    return b"".join(U64.pack(v) for v in (*own, *([hits] * len(contract.FOLLOW_HOOKS))))


@pytest.fixture
def session(follow_facts, monkeypatch):
    monkeypatch.setattr(OwnerResolver, "of_socket", lambda _self, ino, cg, ns: Owner(None, 4242, "dnsd", "/dns",
                                                                                     None))
    monkeypatch.setattr(OwnerResolver, "__init__", lambda self, cgroups=None: None)
    monkeypatch.setattr(follow_mod.IfaceNames, "netns_label", lambda _self, inode, cookie=0: f"ns{inode}")
    prog = FakeProgram()
    prog.set_array("follow_stats", 0, [stats(2, 0, 5), stats(0, 0, 1)])
    s = follow_mod.FollowSession(follow_mod.FollowQuery(count=2), follow_facts,
                                 bpf.ProgramSource(["follow.c"], {}), reasons(), loader=loader(prog))
    s.start()
    return s, prog


def test_hops_become_a_packet_with_the_rewrite_marked_and_its_fate(session):
    s, prog = session
    prog.send("hops", hop(1, "net:net_dev_queue", 0, ifindex=1, netns=1))
    prog.send("hops", hop(1, "net:net_dev_xmit", 900, saddr=None, ifindex=1, netns=1))
    prog.send("hops", hop(1, "net:netif_receive_skb", 2_000, daddr="10.0.9.9", dport=5353))
    s.wait(0)
    assert s.events() == [] and not s.done()
    prog.send("hops", hop(1, "sock:sk_data_ready", 3_000, daddr="10.0.9.9", dport=5353, fate="delivered",
                          sk_ino=99))
    s.wait(0)
    (packet,) = s.events()
    assert isinstance(packet, FollowedPacket)
    assert [h.hook for h in packet.hops] == ["net:net_dev_queue", "net:net_dev_xmit", "net:netif_receive_skb",
                                             "sock:sk_data_ready"]
    assert [h.changed for h in packet.hops] == [False, False, True, False]  # xmit reads no header: not a change
    assert (packet.hops[0].iface, packet.hops[2].iface, packet.hops[2].netns_label) == ("lo", "veth1", "ns77")
    assert (packet.first.saddr, packet.first.dport) == ("10.0.0.1", 53)
    assert packet.fate.kind == "delivered" and packet.fate.owner == Owner(None, 4242, "dnsd", "/dns", None)
    rec = records.packet(packet)
    assert rec["type"] == "packet" and rec["fate"]["owner"]["pid"] == 4242
    assert [h["changed"] for h in rec["hops"]] == [False, False, True, False]
    assert rec["hops"][1]["saddr"] is None and rec["hops"][1]["rc"] == 0 and rec["hops"][0]["rc"] is None
    lines = follow_view.packet_lines(packet)
    assert all(len(line) <= 80 for line in lines)
    assert any(line.startswith("*") and "netif_receive_skb" in line for line in lines)
    assert "rewritten: udp 10.0.0.1:4000 > 10.0.9.9:5353" in "\n".join(lines)


def test_a_drop_names_the_reason_and_a_packet_still_going_is_in_the_summary(session):
    s, prog = session
    prog.send("hops", hop(1, "net:netif_receive_skb", 0))
    no_socket = reasons().code("NO_SOCKET") or -1
    prog.send("hops", hop(1, "skb:kfree_skb", 500, fate="dropped", reason=no_socket, location=0xFFFFFFFF81A00810))
    prog.send("hops", hop(2, "net:netif_rx", 0))
    s.wait(0)
    (dropped,) = s.events()
    assert (dropped.fate.kind, dropped.fate.reason, dropped.fate.location, dropped.fate.iface) == (
        "dropped", "NO_SOCKET", "__udp4_lib_rcv+0x10", "veth1")
    assert s.done() is False  # one of the two --count packets is still going
    snap = s.summary(10**9)
    assert [p.fate.kind for p in snap.in_flight] == ["in_flight"] and snap.followed == 1
    assert snap.health.started == 2 and snap.health.probe_hits["net:netif_rx"] == 6
    body = records.summary(snap, "SIGINT", None)
    assert (body["command"], body["followed"], body["in_flight"], body["health"]["started"]) == (
        "follow", 1, 1, 2)


def test_sent_and_untracked_and_segmented(session, follow_facts):
    s, prog = session
    prog.send("hops", hop(1, "net:net_dev_queue", 0))
    prog.send("hops", hop(1, "net:net_dev_xmit", 10, saddr=None))
    prog.send("hops", hop(1, "skb:consume_skb", 20, saddr=None, fate="consumed"))
    prog.send("hops", hop(2, "net:netif_receive_skb", 0))
    prog.send("hops", hop(2, "net:netif_rx", 0, fate="untracked"))  # the fate's hop comes last, whatever its time
    s.wait(0)
    sent, untracked = s.events()
    assert (sent.fate.kind, sent.fate.iface) == ("sent", "veth1")
    assert untracked.fate.kind == "untracked" and [h.hook for h in untracked.hops] == ["net:netif_receive_skb"]
    assert "address was reused" in follow_view.fate_text(untracked.fate)
    assert s.done()


def test_cli_refuses_a_bad_count_and_a_bad_host(capsys):
    assert main_mod.main(["follow", "--count", "0"]) == EXIT_USAGE
    assert "'0' is not in the range 1..10000000" in capsys.readouterr().err
    assert main_mod.main(["follow", "--host", "10.0.0.300"]) == EXIT_USAGE
    assert "bad address '10.0.0.300'" in capsys.readouterr().err


def test_follow_is_in_the_command_table():
    assert main_mod.COMMANDS["follow"][0] == "netpath.cli.follow"
    assert netns is not None


def test_function_hops_say_why_not_here_and_which_symbol_elsewhere(follow_facts, tmp_path):
    _, missing = follow_mod.kprobe_hooks(follow_facts)  # the fixture: no CONFIG_KPROBES
    assert {u.hook for u in missing} == {h.name for h in contract.FOLLOW_HOOKS if h.is_kprobe}
    assert all("kernel built without CONFIG_KPROBES" in u.reason or "kprobe" in u.reason for u in missing)
    root = make_root(tmp_path / "kp", "6.12.1", (DATA / "kfree_skb-6.18.format").read_text(), True)
    have, missing = follow_mod.kprobe_hooks(KernelFacts.load(root))
    assert have["ip_rcv"][1] == "ip_rcv" and have["tcp_v4_rcv"][1].startswith("tcp_v4_rcv.")
    assert "no such symbol in kallsyms" in {u.hook: u.reason for u in missing}["br_forward"]
    assert follow_mod.nf_hook_name(2 << 8 | 0) == "ipv4 PREROUTING"
    assert follow_mod.nf_hook_name(7 << 8 | 1) == "bridge 1"


# a 6.1-like kernel's text: the tracing machinery, consume_skb's helpers, a UDP read and a softirq's callers
READ_KALLSYMS = """\
ffffffff81100000 T bpf_trace_run1
ffffffff81100400 t __bpf_trace_consume_skb
ffffffff81200000 T __consume_stateless_skb
ffffffff81200400 T consume_skb
ffffffff81300000 T skb_consume_udp
ffffffff81300400 T udp_recvmsg
ffffffff81300800 T icmp_rcv
ffffffff81300c00 T ip_protocol_deliver_rcu
"""


def test_a_consume_in_a_read_is_delivered_to_the_reader_and_a_softirq_free_is_not(session, monkeypatch, tmp_path):
    """Before sock:sk_data_ready (6.4) a UDP read's consume is the datagram's last sight: delivered to the
    reader the hop names, when the stack says a read freed it; a softirq's consume stays consumed even when
    it interrupted a read."""
    s, prog = session
    root = make_root(tmp_path / "k61", "6.1.0", (DATA / "kfree_skb-6.18.format").read_text(), True)
    (root / "proc/kallsyms").write_text(READ_KALLSYMS)
    s._builder.facts = KernelFacts.load(root)
    monkeypatch.setattr(OwnerResolver, "of_reader", lambda _self, pid, cg: Owner(None, pid or None, None, "/app"))
    machinery = (0xFFFFFFFF81100010, 0xFFFFFFFF81100410, 0xFFFFFFFF81200010)
    prog.send("hops", hop(1, "net:netif_receive_skb", 0))
    prog.send("hops", hop(1, "skb:consume_skb", 900, fate="consumed", pid=555, comm=b"echo",
                          frames=(*machinery, 0xFFFFFFFF81300020, 0xFFFFFFFF81300420)))
    prog.send("hops", hop(2, "net:netif_receive_skb", 0, dport=7))
    prog.send("hops", hop(2, "skb:consume_skb", 900, fate="consumed", pid=555, comm=b"echo", dport=7,
                          frames=(0xFFFFFFFF81100010, 0xFFFFFFFF81200410, 0xFFFFFFFF81300810, 0xFFFFFFFF81300c10,
                                  0xFFFFFFFF81300420)))
    s.wait(0)
    read, answered = s.events()
    assert (read.fate.kind, read.fate.hook, read.fate.location) == (
        "delivered", "skb:consume_skb", "skb_consume_udp+0x20")
    assert read.fate.owner == Owner(None, 555, "echo", "/app")
    assert records.packet(read)["fate"]["owner"]["pid"] == 555
    assert "delivered to" in follow_view.fate_text(read.fate) and "555" in follow_view.fate_text(read.fate)
    assert (answered.fate.kind, answered.fate.owner) == ("consumed", None)


def test_a_clone_names_its_original_and_the_run_waits_for_it(session):
    """--count counts originals; a clone (clone_of: the original's id) is a packet of its own, and the run
    is done only once the clones started by the counted packets have ended too."""
    s, prog = session
    no_socket = reasons().code("NO_SOCKET") or -1
    for id_ in (1, 3):
        prog.send("hops", hop(id_, "net:netif_receive_skb", 0))
        prog.send("hops", hop(id_, "sock:sk_data_ready", 700, fate="delivered", sk_ino=99))
    prog.send("hops", hop(2, "net:net_dev_queue", 0, clone_of=1, ifindex=1))
    s.wait(0)
    assert not s.done()  # both originals ended, their clone has not
    prog.send("hops", hop(2, "skb:kfree_skb", 400, clone_of=1, fate="dropped", reason=no_socket))
    s.wait(0)
    got = {p.id: p for p in s.events()}
    assert s.done() and sorted(got) == [1, 2, 3]
    assert (got[1].clone_of, got[2].clone_of, got[2].fate.kind) == (None, 1, "dropped")
    assert records.packet(got[2])["clone_of"] == 1 and records.packet(got[1])["clone_of"] is None
    lines = follow_view.packet_lines(got[2])
    assert lines[0].startswith("packet 2 (clone of 1): udp 10.0.0.1:4000 > 10.9.0.53:53") and len(lines[0]) <= 80
    prog.set_array("follow_stats", 0, [stats(2, 0, 1, clones=1), stats(0, 0, 1)])
    snap = s.summary(10**9)
    assert (snap.health.clones, snap.health.clones_unseen) == (1, 0)
    assert records.summary(snap, "count", None)["health"]["clones"] == 1
    assert "clones: followed 1, unseen (buffer table full) 0" in follow_view.summary_lines(snap, "count")
