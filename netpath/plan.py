"""Pure: which hooks `netpath trace` attaches on a kernel, each choice with its reason.

`make_plan(facts)` walks every stage's hook sets in the order stages.py lists
them (tracepoints, then kprobes; fentry is never chosen) and keeps the first
one this kernel can attach. It reads facts only (tracefs event list,
kallsyms, kprobe support), so unit tests run it against fixture kernel trees.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from netpath.kernel.facts import KernelFacts
from netpath.model import ProbeRow
from netpath.stages import PER_PACKET, STAGES, HookSet, Stage

TP_METHODS = ("raw_tracepoint", "tracepoint")
TSTAMP_MIN_KERNEL = (6, 1)  # bpf_ktime_get_tai_ns(): TAI is the clock skb->tstamp (REALTIME) is read against
FENTRY_REASON = "fentry not used: BCC kfunc programs need kernel headers, and fentry is refused on some kernels"


@dataclass(frozen=True)
class Choice:
    stage: Stage
    hookset: HookSet | None
    symbols: dict[str, str] = field(default_factory=dict)  # hook -> symbol actually probed (kprobes)
    attached_optional: tuple[str, ...] = ()
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.hookset is not None

    @property
    def method(self) -> str | None:
        return self.hookset.method if self.hookset else None

    def attached_method(self, typed: frozenset[str] | set[str] = frozenset()) -> str | None:
        """The method its hooks were attached with, in hook order, one name each (tp_btf for the hooks
        loaded BTF-typed, `typed`): "tp_btf", "raw_tracepoint", or "tp_btf+raw_tracepoint" when they differ."""
        if self.hookset is None:
            return None
        method = self.hookset.method
        names = ["tp_btf" if h in typed else method for h in self.hooks if ":" in h] or [method]
        return "+".join(dict.fromkeys(names))

    @property
    def hook(self) -> str:
        if self.hookset is None:
            return self.stage.choices[-1].required[0] if self.stage.choices else self.stage.id
        return "+".join(self.hookset.required)

    @property
    def hooks(self) -> tuple[str, ...]:
        if self.hookset is None:
            return ()
        return self.hookset.required + self.attached_optional + self.hookset.tracepoints


@dataclass(frozen=True)
class AttachPlan:
    choices: tuple[Choice, ...]
    rx_tstamp: bool = False  # hand-off times from skb->tstamp, not from hand-off hooks and a per-skb table
    handoff_reason: str = ""  # why rx_tstamp is what it is (netpath probes prints it)

    @property
    def handoff(self) -> str:
        return "skb_tstamp" if self.rx_tstamp else "hooks"

    def choice(self, stage_id: str) -> Choice:
        return next(c for c in self.choices if c.stage.id == stage_id)

    @property
    def available(self) -> tuple[Choice, ...]:
        return tuple(c for c in self.choices if c.available)

    @property
    def unavailable(self) -> tuple[Choice, ...]:
        return tuple(c for c in self.choices if not c.available)

    @property
    def typed(self) -> bool:
        """Hooks may load as tp_btf: no chosen hook set is one that must stay untyped."""
        return not any(c.hookset.untyped for c in self.available if c.hookset)

    @property
    def per_packet(self) -> bool:
        """Some per-packet stage attaches: skbs are followed from the hand-off on."""
        return any(c.stage.kind == PER_PACKET for c in self.available)

    def defines(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.available:
            if c.hookset:
                for name in c.hookset.defines:
                    out[name] = 1
            for hook in c.hooks:
                if ":" in hook:  # a tracepoint
                    out["HAS_" + hook.replace(":", "_").upper()] = 1
        return out

    def kprobes(self) -> list[tuple[str, str]]:
        """(hook name, kernel symbol) for every kprobe to attach."""
        seen: dict[str, str] = {}
        for c in self.available:
            if c.method == "kprobe":
                for hook in c.hooks:
                    if hook in c.symbols:
                        seen[hook] = c.symbols[hook]
        return list(seen.items())

    def tracepoints(self) -> list[str]:
        seen: list[str] = []
        for c in self.available:
            for hook in c.hooks:
                if ":" in hook and hook not in seen:
                    seen.append(hook)
        return seen


def _try(hs: HookSet, facts: KernelFacts) -> tuple[bool, str, dict[str, str], tuple[str, ...]]:
    """(usable, reason, kprobe symbols, optional hooks present)."""
    if hs.method in TP_METHODS:
        missing = [h for h in hs.required if not facts.has_tracepoint(h)]
        if missing:
            return False, f"tracepoint {', '.join(missing)} not on this kernel", {}, ()
        present = tuple(h for h in hs.optional if facts.has_tracepoint(h))
        return True, f"{' + '.join(hs.required)} present: {hs.note}", {}, present
    if hs.method == "fentry":
        return False, FENTRY_REASON, {}, ()
    if hs.method == "kprobe":
        if not facts.has_kprobes:
            return False, f"kprobe {hs.required[0]}: {facts.kprobe_reason}", {}, ()
        missing = [h for h in hs.tracepoints if not facts.has_tracepoint(h)]
        if missing:
            return False, f"tracepoint {', '.join(missing)} not on this kernel", {}, ()
        symbols: dict[str, str] = {}
        for hook in hs.required:
            sym = facts.kallsyms.resolve(hook)
            if sym is None:
                return False, f"kprobe {hook}: no such symbol in kallsyms (inlined or renamed)", {}, ()
            symbols[hook] = sym
        found: list[str] = []
        for hook in hs.optional:
            sym = facts.kallsyms.resolve(hook)
            if sym is not None:
                symbols[hook] = sym
                found.append(hook)
        renamed = [f"{h} as {s}" for h, s in symbols.items() if h != s]
        why = f"kprobe on {', '.join(symbols.values())}: {hs.note}"
        if renamed:
            why += f" (clone: {', '.join(renamed)})"
        return True, why, symbols, tuple(found)
    return False, f"unknown method {hs.method}", {}, ()


def choose(stage: Stage, facts: KernelFacts) -> Choice:
    reasons: list[str] = []
    for hs in stage.choices:
        ok, why, symbols, present = _try(hs, facts)
        if ok:
            return Choice(stage, hs, symbols, present, why)
        if why not in reasons:
            reasons.append(why)
    return Choice(stage, None, {}, (), "; ".join(r for r in reasons if r != FENTRY_REASON) or "no hook")


def rx_tstamp_choice(facts: KernelFacts, choices: tuple[Choice, ...], exact: bool) -> tuple[bool, str]:
    """Can the hand-off time come from skb->tstamp here? (yes/no, why)"""
    if exact:
        return False, "--exact: hand-off hooks and a per-skb table time every packet from its own hooks"
    if tuple(facts.release_tuple[:2]) < TSTAMP_MIN_KERNEL:
        return False, "kernel older than 6.1 (no bpf_ktime_get_tai_ns): hand-off hooks and a per-skb table"
    if any(c.available and c.stage.checkpoint for c in choices):
        return False, "kprobe checkpoint stages keep every skb in the per-skb table: hand-off hooks kept"
    return True, ("skb->tstamp: the kernel's receive timestamp is the hand-off time (no hand-off hooks, no "
                  "per-skb table; --exact restores them)")


def make_plan(facts: KernelFacts, only: tuple[str, ...] | None = None, exact: bool = False) -> AttachPlan:
    stages = [s for s in STAGES if only is None or s.id in only]
    choices = tuple(choose(s, facts) for s in stages)
    rx_tstamp, why = rx_tstamp_choice(facts, choices, exact)
    if not any(c.available and c.stage.kind == PER_PACKET for c in choices):
        return AttachPlan(choices, False, "no per-packet stage")
    if rx_tstamp:
        choices = tuple(_without_handoff_hooks(c) for c in choices)
    return AttachPlan(choices, rx_tstamp, why)


def _without_handoff_hooks(c: Choice) -> Choice:
    """With skb->tstamp as the hand-off time, the hooks that stamped it or forgot a freed skb have no job.
    A stage that requires one (gro needs napi_gro_receive_entry) keeps it: only optional ones go."""
    if c.hookset is None:
        return c
    hs = c.hookset
    kept = tuple(h for h in c.attached_optional if h not in hs.handoff_hooks)
    reason = f"{' + '.join(hs.required)} present: {hs.tstamp_note}" if hs.tstamp_note else c.reason
    return replace(c, attached_optional=kept, reason=reason)


def probe_rows(facts: KernelFacts, typed: frozenset[str] = frozenset()) -> list[ProbeRow]:
    """What `netpath probes` prints for trace: one row per stage, path order; `typed`: the hooks that would
    load as tp_btf, so the method is the one `netpath trace` reports."""
    plan = make_plan(facts)
    typed = typed if plan.rx_tstamp else frozenset()  # the hand-off-hooks build loads no hook as tp_btf
    return [ProbeRow(c.stage.id, "+".join(c.hooks) if c.available else c.hook, c.attached_method(typed),
                     c.available, c.reason) for c in plan.choices]
