"""The one place a session is built for a command: `netpath trace`, `drops`, `follow` and `export` call it.

A query (validated options) and the kernel's facts, loaded once per run, are
all a session needs: the factory derives the attach plan, the struct offsets
and the program source from them, so no command assembles a session by hand.
"""

from __future__ import annotations

from netpath import bpf
from netpath.collect import drops as drops_mod
from netpath.collect import follow as follow_mod
from netpath.collect import trace as trace_mod
from netpath.collect.drops import DropsQuery, DropsSession
from netpath.collect.follow import FollowQuery, FollowSession
from netpath.collect.trace import TraceQuery, TraceSession
from netpath.kernel.facts import KernelFacts
from netpath.kernel.reasons import DropReasons


def drops_session(query: DropsQuery, facts: KernelFacts, *, reasons: DropReasons | None = None,
                  limit: int | None = None, live: bool = False,
                  loader: bpf.Loader = bpf.compile_program) -> DropsSession:
    """`limit`: rows per report (None: all); `live`: rows ranked by run total (the refreshing table)."""
    source = drops_mod.program_source(query, facts, bpf.struct_offsets(facts))
    return DropsSession(query, facts, source, reasons or drops_mod.drop_reasons(facts), limit, live, loader)


def trace_session(query: TraceQuery, facts: KernelFacts, *, fail_on_latency: tuple[dict[str, object], ...] = (),
                  loader: bpf.Loader = bpf.compile_program) -> TraceSession:
    plan = query.plan(facts)
    source = trace_mod.program_source(query, plan, bpf.struct_offsets(facts))
    return TraceSession(query, plan, facts, source, fail_on_latency, loader)


def follow_session(query: FollowQuery, facts: KernelFacts, *,
                   loader: bpf.Loader = bpf.compile_program) -> FollowSession:
    source = follow_mod.program_source(query, facts, bpf.struct_offsets(facts))
    reasons = drops_mod.drop_reasons(facts) if facts.has_tracepoint(drops_mod.TRACEPOINT) else None
    return FollowSession(query, facts, source, reasons, loader)
