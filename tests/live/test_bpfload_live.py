"""netpath's loader (netpath/bpfload, on libbpf) on this kernel: each program kind it loads here (a raw
tracepoint, a BTF-typed raw tracepoint) attaches and counts, and what the programs write comes back through
libbpf's readers: a ring buffer that wraps many times and holds discarded records, a full ring's refusals
counted beside what arrived, a perf buffer that overflows and reports its lost records, and maps read in
batches equal to maps read key by key. (Kprobes attach only in the VM tier: tests/vm.)

The programs are small C units of this test's own, built and loaded by the production path
(bpfload.program.compile_program). Events come from this process's own getpriority(2) calls, seen by
the sys_enter raw tracepoint and filtered by its tgid (a -D number), so their count is exact."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from netpath_testlib import send_udp, veth_namespace

from netpath.bpfload import build, libbpf, load, read
from netpath.bpfload.program import Program, compile_program
from netpath.kernel.facts import KernelFacts

SYS_GETPRIORITY = {"x86_64": 140, "aarch64": 141}[os.uname().machine]
RECORD = 200  # bytes of payload per ring record: with its 8-byte header 208, so records straddle the end
RING_PAGES = 1  # 4096 bytes: 19 records fill it

C = r"""
#ifndef PAGE_SIZE	/* BPF_RINGBUF_OUTPUT counts in pages; the header shim has none */
#define PAGE_SIZE 4096
#endif

struct rec {
	u64 seq;
	u8 pad[RECORD - 8];
};

BPF_RINGBUF_OUTPUT(ring, RING_PAGES);
BPF_PERF_OUTPUT(events);
BPF_ARRAY(ctl, u64, 4);		/* 0: next seq, 1: ring reservations refused, 2: perf output failures */
BPF_PERCPU_HASH(seen, u32, u64, 64);	/* seq % 64 -> hits, to read back in batches */

RAW_TRACEPOINT_PROBE(sys_enter)
{
	int zero = 0, full = 1;
	u64 *next, *refused;
	struct rec *r;
	struct rec ev = {};
	u32 slot;
	u64 one = 1, *hits;

	if (ctx->args[1] != SYSCALL_NR || bpf_get_current_pid_tgid() >> 32 != TGID)
		return 0;
	next = ctl.lookup(&zero);
	refused = ctl.lookup(&full);
	if (!next || !refused)
		return 0;
	ev.seq = __sync_fetch_and_add(next, 1);
	slot = ev.seq % 64;
	hits = seen.lookup(&slot);
	if (hits)
		*hits += 1;
	else
		seen.update(&slot, &one);
	if (MODE == 1) {
		events.perf_submit(ctx, &ev, sizeof(ev));
		return 0;
	}
	r = ring.ringbuf_reserve(sizeof(struct rec));
	if (!r) {
		__sync_fetch_and_add(refused, 1);
		return 0;
	}
	r->seq = ev.seq;
	if (ev.seq % 3 == 2)
		ring.ringbuf_discard(r, BPF_RB_NO_WAKEUP);
	else
		ring.ringbuf_submit(r, BPF_RB_NO_WAKEUP);
	return 0;
}
"""

TP_BTF_C = r"""
BPF_ARRAY(count, u64, 1);

int np_btf_kfree_skb(struct bpf_raw_tracepoint_args *ctx)
{
	int zero = 0;
	u64 *n = count.lookup(&zero);

	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}
"""


@pytest.fixture
def c_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NETPATH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "events.c").write_text(C)
    (tmp_path / "typed.c").write_text(TP_BTF_C)
    monkeypatch.setattr(build, "BPF_DIR", tmp_path)
    return tmp_path


def events_program(mode: int) -> Program:
    source = build.ProgramSource(["events.c"], {"RECORD": RECORD, "RING_PAGES": RING_PAGES, "MODE": mode,
                                                "SYSCALL_NR": SYS_GETPRIORITY, "TGID": os.getpid()})
    return compile_program(source, KernelFacts.load("/"))


def fire(n: int) -> None:
    for _ in range(n):
        os.getpriority(os.PRIO_PROCESS, 0)


def ctl(prog: Program, index: int) -> int:
    raw = prog.lookup("ctl", struct.pack("<I", index))
    assert raw is not None
    return int(struct.unpack("<Q", raw)[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_ring_that_wraps_many_times_delivers_every_committed_record_in_order(c_dir):
    prog = events_program(mode=0)
    got: list[int] = []
    prog.open_ring_buffer("ring", lambda raw: got.append(struct.unpack_from("<Q", raw)[0]))
    try:
        for _ in range(40):  # 400 records through a 19-record ring: it wraps ~20 times
            fire(10)
            prog.poll(0)
        assert ctl(prog, 0) == 400 and ctl(prog, 1) == 0
    finally:
        prog.close()
    # every third record was discarded by the program: the reader skips exactly those
    assert got == [seq for seq in range(400) if seq % 3 != 2]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_full_ring_refuses_reservations_and_the_rest_arrives(c_dir):
    prog = events_program(mode=0)
    got: list[int] = []
    prog.open_ring_buffer("ring", lambda raw: got.append(struct.unpack_from("<Q", raw)[0]))
    try:
        fire(100)  # nothing consumed: the ring fills after 19 records (4096 / 208)
        refused = ctl(prog, 1)
        prog.poll(0)
        fire(5)  # space again
        prog.poll(0)
    finally:
        prog.close()
    assert refused == 100 - 19
    committed_first = [s for s in range(19) if s % 3 != 2]
    assert got == committed_first + [s for s in range(100, 105) if s % 3 != 2]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_perf_buffer_that_overflows_reports_its_lost_records(c_dir):
    prog = events_program(mode=1)
    got: list[int] = []
    lost: list[int] = []
    pb = libbpf.PerfBuffer(prog._map("events").fd, 1, lambda raw: got.append(struct.unpack_from("<Q", raw)[0]),
                           lost.append)
    try:
        os.sched_setaffinity(0, {0})  # every event on one CPU's one-page ring
        try:
            fire(200)  # 200 x (200 + 16 bytes of headers) into 4096: most are lost
        finally:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        pb.poll(100)
        pb.consume()
        fire(3)  # the ring has room again: delivered after the loss record
        pb.poll(100)
        pb.consume()
    finally:
        pb.close()
        prog.close()
    assert got == sorted(got) and got[-3:] == [200, 201, 202]
    assert len(got) + sum(lost) == 203 and sum(lost) > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_maps_read_in_batches_equal_maps_read_key_by_key(c_dir):
    prog = events_program(mode=0)
    try:
        fire(1000)
        m = prog._map("seen")
        batched = read.percpu_items(m)
        assert m.batch_ok  # this kernel batches per-CPU hashes
        per_key = {k: m.lookup_percpu(k) for k in m.keys()}
        assert batched == per_key and len(batched) == 64
        totals = {struct.unpack("<I", k)[0]: sum(struct.unpack("<Q", v)[0] for v in vals)
                  for k, vals in batched.items()}
        assert sum(totals.values()) == 1000 and all(n in (15, 16) for n in totals.values())
        popped = read.percpu_items(m, delete=True)  # read and cleared in the same calls
        assert popped == batched and m.keys() == []
    finally:
        prog.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_tp_btf_program_attaches_by_btf_id_and_counts_drops(c_dir):
    facts = KernelFacts.load("/")
    ok, why = load.tp_btf_allowed(facts.btf_path)
    assert ok, why  # this kernel takes tp_btf (the design's measured facts)
    btf_id = load.tp_btf_ids(facts.btf_path, ("kfree_skb",))["kfree_skb"]
    prog = compile_program(build.ProgramSource(["typed.c"]), facts)
    try:
        prog.attach_tp_btf("np_btf_kfree_skb", "kfree_skb", btf_id)
        assert prog.tp_btf == ("np_btf_kfree_skb",)
        with veth_namespace("npl") as pair:
            send_udp(pair.ns_addr, 9, 50)  # a closed port in the namespace: NO_SOCKET drops
        raw = prog.lookup("count", struct.pack("<I", 0))
        assert raw is not None and struct.unpack("<Q", raw)[0] >= 50
    finally:
        prog.close()


def test_a_typed_skb_head_is_loaded_from_directly_from_linux_6_17():
    """The verdict drops' packet loads (TP_BTF_PKT) rest on: this kernel's verifier takes a load through
    skb->head from Linux 6.17 (rdonly_untrusted_mem for a pointer to a scalar type), refuses it before."""
    facts = KernelFacts.load("/")
    head = build.struct_offsets(facts)["OFF_SKB_HEAD"]
    verdict = load.tp_btf_packet_loads(facts.btf_path, head)
    assert verdict == (facts.release_tuple >= (6, 17, 0)), facts.release
    # a load past a scalar field is the verifier's to refuse (EACCES), on every kernel
    btf_id = load.tp_btf_ids(facts.btf_path, ("kfree_skb",))["kfree_skb"]
    with pytest.raises(OSError) as refused:
        load.load_program(libbpf.PROG_TYPE_TRACING, "np_pkt_probe", "GPL",
                          load._packet_load_probe(build.struct_offsets(facts)["OFF_SKB_LEN"]), 0,
                          libbpf.TRACE_RAW_TP, btf_id)
    assert refused.value.errno == 13
