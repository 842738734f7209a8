"""Busy ring-buffer records, through the reader netpath uses (bpfload.read.RingBuffer over libbpf's
ring_buffer__poll/__consume, and Program.poll, which drains it in production).

A BPF ring buffer is shared by every CPU: a producer reserves a record (the header's BUSY bit set), fills
it and commits or discards it later, while records reserved after it on other CPUs may already be
committed. The consumer must stop at the first busy record (never read a half-written one, never skip
it), then deliver it and everything behind it once it is committed, skip it if it was discarded, and
return from a poll while it waits.

The program is this test's own (built and loaded by bpfload.program.compile_program, netpath's one load
path): a raw tracepoint on sys_enter that, for getpriority(2) calls of the processes the test registers,
reserves a record, writes its first half, holds the reservation (a bounded loop of kernel copies: no
helper-callback loop, so nothing the production loader does not relocate), writes the second half and
commits or discards it. Producers are processes pinned to different CPUs; each record carries its
producer and a per-producer sequence number, and every word of it is a function of both, so a record
read while half-written or read twice shows.
"""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import time

import pytest

from netpath.bpfload import build, read
from netpath.bpfload.program import Program, compile_program
from netpath.kernel.facts import KernelFacts

SYS_GETPRIORITY = {"x86_64": 140, "aarch64": 141}[os.uname().machine]
WORDS = 14  # payload words: a record is 16 + 112 = 128 bytes, 136 with its header
RECORD = 16 + 8 * WORDS
RING_PAGES = 4  # 16384 bytes: 120.47 records, so records straddle the end as the ring wraps
RING_BYTES = RING_PAGES * 4096
DISCARD_EVERY = 5  # a record whose seq % 5 == 4 is discarded after its hold
HOLD_MAX = 2000  # iterations a held record waits for the test's release at most (20-40 ms here); the verifier takes
# at most 8192 branches in one path, so the time is in each iteration's copy, not in their number
SPIN_ITERS = 1  # iterations every other record is held (one 256 KiB kernel copy, tens of microseconds)
BLOB = 1 << 18  # bytes each iteration copies (the copy is what takes time)
MAGIC = 0x6E657470617468  # "netpath"
CTL_HOLD, CTL_HOLDING, CTL_RELEASE, CTL_EXPIRED, CTL_HOLD_DISCARD = range(5)

C = r"""
#ifndef PAGE_SIZE	/* BPF_RINGBUF_OUTPUT counts in pages; the header shim has none */
#define PAGE_SIZE 4096
#endif

struct rec {
	u32 producer;
	u32 held;
	u64 seq;
	u64 words[WORDS];
};

struct blob {
	u8 b[BLOB];
};

BPF_RINGBUF_OUTPUT(ring, RING_PAGES);
BPF_HASH(producers, u32, u32, 4);	/* tgid -> producer index (0 or 1), written by the test */
BPF_ARRAY(next_seq, u64, 2);		/* per producer: the next committed-or-discarded record's seq */
BPF_ARRAY(refused, u64, 2);		/* per producer: reservations a full ring refused */
BPF_ARRAY(ctl, u64, 5);			/* CTL_* in the test */
BPF_ARRAY(scratch, struct blob, 2);	/* a held record's loop copies one into the other */

static __always_inline u64 word(u32 p, u64 seq, u32 i)
{
	return (seq << 20) ^ ((u64)p << 16) ^ i ^ MAGIC;
}

/* Hold the current reservation for `limit` iterations of a kernel copy; with `release` set, stop as soon
 * as the test writes ctl[CTL_RELEASE]. Returns 1 when released, 0 when the bound ran out. */
static __always_inline int hold(u32 limit, int release)
{
	int zero = 0, one = 1, rel_k = 2;
	struct blob *src = scratch.lookup(&zero), *dst = scratch.lookup(&one);
	u64 *rel;
	u32 i;

	if (!src || !dst)
		return 0;
	for (i = 0; i < limit; i++) {
		rel = ctl.lookup(&rel_k);
		if (release && rel && *rel)
			return 1;
		bpf_probe_read_kernel(dst, sizeof(*dst), src);
	}
	return 0;
}

RAW_TRACEPOINT_PROBE(sys_enter)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	int hold_k = 0, holding_k = 1, expired_k = 3, discard_k = 4;
	u64 *seq, *full, *want, *holding, *expired, *discard_held;
	u32 *who, p, i;
	struct rec *r;
	int held;

	if (ctx->args[1] != SYSCALL_NR)
		return 0;
	who = producers.lookup(&tgid);
	if (!who)
		return 0;
	p = *who & 1;
	seq = next_seq.lookup(&p);
	full = refused.lookup(&p);
	want = ctl.lookup(&hold_k);
	holding = ctl.lookup(&holding_k);
	expired = ctl.lookup(&expired_k);
	discard_held = ctl.lookup(&discard_k);
	if (!seq || !full || !want || !holding || !expired || !discard_held)
		return 0;
	r = ring.ringbuf_reserve(sizeof(struct rec));
	if (!r) {
		__sync_fetch_and_add(full, 1);
		return 0;
	}
	held = *want == p + 1;
	r->producer = p;
	r->held = held;
	r->seq = *seq;
	*seq += 1;	/* one process per producer: its calls are sequential */
	for (i = 0; i < WORDS / 2; i++)
		r->words[i] = word(p, r->seq, i);
	if (held) {
		*want = 0;
		*holding = 1;
		if (!hold(HOLD_MAX, 1))
			__sync_fetch_and_add(expired, 1);
	} else {
		hold(SPIN_ITERS, 0);
	}
	for (i = WORDS / 2; i < WORDS; i++)
		r->words[i] = word(p, r->seq, i);
	if (held)
		*holding = 0;	/* before the commit: while the test reads 1, the record is busy */
	if (held ? *discard_held : r->seq % DISCARD_EVERY == DISCARD_EVERY - 1)
		ring.ringbuf_discard(r, 0);
	else
		ring.ringbuf_submit(r, 0);
	return 0;
}
"""

# a producer: pinned to one CPU, fires `burst` getpriority calls per byte read from stdin, acks each burst
PRODUCER = r"""
import os, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
burst = int(sys.argv[2])
while sys.stdin.buffer.read(1):
    for _ in range(burst):
        os.getpriority(os.PRIO_PROCESS, 0)
    sys.stdout.buffer.write(b"k")
    sys.stdout.buffer.flush()
"""

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def word(p: int, seq: int, i: int) -> int:
    return ((seq << 20) ^ (p << 16) ^ i ^ MAGIC) & (1 << 64) - 1


class Records:
    """What the reader delivered, checked whole as it arrives."""

    def __init__(self) -> None:
        self.by_producer: dict[int, list[int]] = {0: [], 1: []}
        self.held: list[tuple[int, int]] = []
        self.bytes = 0

    def __call__(self, raw: bytes) -> None:
        assert len(raw) == RECORD, f"a record of {len(raw)} bytes"
        p, held, seq = struct.unpack_from("<IIQ", raw)
        words = struct.unpack_from(f"<{WORDS}Q", raw, 16)
        assert list(words) == [word(p, seq, i) for i in range(WORDS)], f"producer {p} seq {seq} torn"
        self.by_producer[p].append(seq)
        if held:
            self.held.append((p, seq))
        self.bytes += RECORD + 8


@pytest.fixture
def prog(tmp_path, monkeypatch) -> Program:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two producers on two CPUs need two CPUs this process may run on")
    monkeypatch.setenv("NETPATH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "busy.c").write_text(C)
    monkeypatch.setattr(build, "BPF_DIR", tmp_path)
    defines = {"WORDS": WORDS, "RING_PAGES": RING_PAGES, "DISCARD_EVERY": DISCARD_EVERY, "HOLD_MAX": HOLD_MAX,
               "SPIN_ITERS": SPIN_ITERS, "BLOB": BLOB, "MAGIC": MAGIC, "SYSCALL_NR": SYS_GETPRIORITY}
    p = compile_program(build.ProgramSource(["busy.c"], defines), KernelFacts.load("/"))
    yield p
    p.close()


def ctl(prog: Program, index: int) -> int:
    raw = prog.lookup("ctl", struct.pack("<I", index))
    assert raw is not None
    return int(struct.unpack("<Q", raw)[0])


def set_ctl(prog: Program, index: int, value: int) -> None:
    prog.update("ctl", struct.pack("<I", index), struct.pack("<Q", value))


def per_producer(prog: Program, name: str, p: int) -> int:
    raw = prog.lookup(name, struct.pack("<I", p))
    assert raw is not None
    return int(struct.unpack("<Q", raw)[0])


def register(prog: Program, pid: int, index: int) -> None:
    prog.update("producers", struct.pack("<I", pid), struct.pack("<I", index))


def spawn(cpu: int, burst: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-I", "-c", PRODUCER, str(cpu), str(burst)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.stdin and not child.stdin.closed:
            child.stdin.close()
    for child in children:
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    for child in children:
        assert child.returncode == 0


def committed(n: int) -> list[int]:
    return [s for s in range(n) if s % DISCARD_EVERY != DISCARD_EVERY - 1]


def test_two_cpus_holding_reservations_while_polled_deliver_every_committed_record_once(prog):
    """Two producers on two CPUs, every record held a few microseconds between its two halves, a fifth
    discarded, polled by Program.poll (production's drain) while they run: 40 bursts of 2 x 40 records, each
    under the ring's size so none is refused, 40 x 10,880 bytes through a 16 KiB ring."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    bursts, burst = 40, 40
    got = Records()
    prog.open_ring_buffer("ring", got)
    children = [spawn(cpus[0], burst), spawn(cpus[1], burst)]
    try:
        for index, child in enumerate(children):
            register(prog, child.pid, index)
        deadline = time.monotonic() + 120
        for _ in range(bursts):
            for child in children:
                assert child.stdin is not None
                child.stdin.write(b"g")
                child.stdin.flush()
            waiting = {child.stdout for child in children}
            while waiting:  # drain while both producers fire
                assert time.monotonic() < deadline, "the producers or the reader hung"
                ready, _, _ = select.select(list(waiting), [], [], 0.001)
                for out in ready:
                    assert out is not None and out.read(1) == b"k"
                    waiting.discard(out)
                prog.poll(0)
            prog.poll(0)  # both bursts committed: everything arrives
    finally:
        stop(children)
    prog.poll(0)
    for p in (0, 1):
        assert per_producer(prog, "refused", p) == 0
        assert per_producer(prog, "next_seq", p) == bursts * burst
        # once each, in order, the discarded ones skipped
        assert got.by_producer[p] == committed(bursts * burst)
    assert got.held == []
    assert bursts * 2 * burst * (RECORD + 8) > 20 * RING_BYTES  # the ring wrapped ~26 times


def held_round(prog: Program, got: Records, ring: read.RingBuffer, child: subprocess.Popen[bytes],
               discard: bool, behind: int) -> bool:
    """Producer 0 (the child) holds a record; producer 1 (this process) commits `behind` records after it.
    While it is held, polls deliver nothing; once released, it (unless discarded) and those behind it arrive.
    False when the hold ended before this process could poll under it (a loaded machine): no verdict."""
    before = {p: list(v) for p, v in got.by_producer.items()}
    seq0 = per_producer(prog, "next_seq", 0)
    seq1 = per_producer(prog, "next_seq", 1)
    set_ctl(prog, CTL_RELEASE, 0)
    set_ctl(prog, CTL_HOLD_DISCARD, int(discard))
    set_ctl(prog, CTL_HOLD, 1)  # producer 0's next record waits for the release
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(b"g")
    child.stdin.flush()
    deadline = time.monotonic() + 30
    while not ctl(prog, CTL_HOLDING):
        assert time.monotonic() < deadline, "the producer never reserved"
        if ctl(prog, CTL_HOLD) == 0:  # taken and already given up (the bound ran out before we looked)
            break
    for _ in range(behind):
        os.getpriority(os.PRIO_PROCESS, 0)  # committed behind the busy record
    t0 = time.monotonic()
    n_poll = ring.poll(5)  # libbpf's ring_buffer__poll: waits its timeout, returns
    polled_s = time.monotonic() - t0
    n_consume = ring.consume()
    conclusive = ctl(prog, CTL_HOLDING) == 1  # still held after both returned
    set_ctl(prog, CTL_RELEASE, 1)
    assert child.stdout.read(1) == b"k"
    if conclusive:
        assert (n_poll, n_consume) == (0, 0), "a record behind a busy one was delivered"
        assert got.by_producer == before
        assert polled_s < 2.0  # it waited for its 5 ms timeout, not for the busy record
    ring.consume()
    ring.poll(0)
    mine = [] if discard else [seq0]
    assert got.by_producer[0] == before[0] + mine
    assert got.by_producer[1] == before[1] + [s for s in range(seq1, seq1 + behind) if s % DISCARD_EVERY != 4]
    assert per_producer(prog, "next_seq", 1) == seq1 + behind
    return conclusive


def test_a_busy_record_holds_back_the_committed_ones_behind_it_and_poll_returns(prog):
    """The deterministic case, with libbpf's ring_buffer__poll (bpfload.read.RingBuffer): a record reserved
    on one CPU and held there while this process, on the other, commits records behind it and polls. The
    poll returns at its timeout with nothing; after the release the held record then the others arrive in
    order; a held record that is then discarded is skipped and the ones behind it still arrive. Rounds that
    lose the race on a loaded machine (the hold's 20-40 ms bound ran out first) give no verdict and are
    repeated; at least one of each kind must be decided."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    got = Records()
    ring = read.RingBuffer(prog._map("ring").fd, got)
    child = spawn(cpus[0], 1)
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[1]})  # never queued behind the holding CPU
    decided = {False: 0, True: 0}
    try:
        register(prog, child.pid, 0)
        register(prog, os.getpid(), 1)
        for attempt in range(40):
            discard = attempt % 2 == 1
            if held_round(prog, got, ring, child, discard, behind=30):
                decided[discard] += 1
            if min(decided.values()) >= 3:
                break
    finally:
        os.sched_setaffinity(0, saved)
        ring.close()
        stop([child])
    assert min(decided.values()) >= 1, f"no round decided: {decided} (every hold ran out before a poll)"
    # every record of producer 0 was held; the committed ones arrived flagged so, once each
    assert got.by_producer[0] == [k for k in range(attempt + 1) if k % 2 == 0]  # round k held seq k
    assert got.held == [(0, s) for s in got.by_producer[0]]
    assert per_producer(prog, "refused", 0) == per_producer(prog, "refused", 1) == 0
