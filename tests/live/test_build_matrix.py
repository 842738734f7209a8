"""Every BPF build netpath can choose compiles with BCC and passes this kernel's verifier.

What is built: for each captured kernel (tests/fixtures 6.1, 6.12, 6.18, plus the hand-made trace-6.1 tree,
the one shape whose plan takes socket_queue/stack_total from kprobe sock_def_readable), the planner's plan
for each option set below, turned into a ProgramSource by the commands' own program_source(). The fixture
trees carry no BTF, so struct offsets come from this kernel's BTF; the plan (-D USE_*/HAS_* set, RX_TSTAMP,
KP_CHECKPOINTS, TP_HAS_RX_SK, ...) and the shimmed kernel version come from the fixture.

How each build is checked (check_build below): BCC compiles it with the headers shim for that kernel's
release, by the code the production build child runs (netpath.bpfload.build.describe), then the build is
loaded by the production loader (netpath.bpfload.program.Program, through libbpf), every function, never
attached: raw tracepoints as raw tracepoints, kprobe handlers as kprobes (loading one needs no
CONFIG_KPROBES, only attaching does, so 6.1/6.12 builds load here too), tp_btf functions with their
tracepoint's BTF id. Compiling alone would not do: BCC's compile never runs the verifier (a program the
verifier rejects compiles cleanly), the load does.

Which option sets (trace_options, drops_options): not the full cartesian product (thousands of configurations,
most of them identical builds); the options that interact are crossed, the rest vary one at a time:
- trace: the options that decide the plan and each other's effect are crossed in full: the stage set
  ('packet', 'all', each single stage) x --exact x --sample 1/16 x tp_btf on/off (sampling and tp_btf apply
  only to the receive-timestamp build, which --exact and kprobe checkpoint stages turn off). Around
  '--stages all' (every stage's code), with and without --exact, each other option one at a time
  (--per-iface, --per-cpu, --per-socket, --slower, napi_by_dev from the exporter, and each filter: --netns,
  --iface, --proto udp, --proto icmp (the one protocol with its own code), --port, --host v4 and v6), every
  filter at once, everything at once, and every pair of the breakdowns (they share the timing path; --exact
  changes none of their code). Each breakdown alone with 'packet' and with each single stage, since a
  breakdown's code sits inside each stage's code (--per-socket, --slower and napi_by_dev only with the
  per-packet stages: a per-invocation stage has no packet for them). trace-6.1 only adds the option sets
  with socket_queue or stack_total: elsewhere its plan is 6.1's.
- drops: every --by grouping that changes the key (the default, each field alone, flow/socket/cgroup with
  reason, all fields); around the default, each option one at a time (--samples, --stack, --cgroup,
  --reason, each filter), the owner-reading options with each other (socket/cgroup grouping x samples x
  cgroup filter) and everything at once; tp_btf off for the groupings that read every field a different
  way plus everything at once; and each typed build again with the packet headers read by plain loads
  (TP_BTF_PKT) where this kernel's verifier allows them, as compile_program loads it. On 6.1 (no rx_sk in
  kfree_skb) only the owner-reading option sets: the rest compile to what 6.12/6.18 compile, bar a
  TP_HAS_RX_SK no code reads.
Builds are deduplicated by (C units, -D set, tp_btf functions), so an option with no effect on a plan
(sampling without the receive-timestamp build) costs nothing; each distinct build is compiled and loaded
once, two at a time in forked workers. 782 configurations, 291 builds: about 2 minutes of CPU in all, so
about a minute on two idle cores (3-4 minutes when other work shares them).

A failure names each failed build: command, kernel, the options as on the command line of every
configuration that produced it, the C units, the -D set (offsets left out), and clang's error or the
verifier's complaint. Checked by breaking one rare combination on purpose at the end of bpf/trace.c:
`#if BY_CPU && SLOWER_NS > 0` / `#error broken on purpose` / `#endif` failed exactly the 9 builds with
--per-cpu and --slower (alone and in 'everything', on each kernel); a function the verifier refuses
(an out-of-bounds stack read) under the same #if compiled cleanly with load=False and failed those 9
builds with the verifier's complaint when loaded.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from netpath import bpf, contract, netns
from netpath.bpfload import build as build_mod
from netpath.bpfload import libbpf, load
from netpath.bpfload.program import AUTO_PREFIX, Program
from netpath.collect import drops as drops_mod
from netpath.collect import follow as follow_mod
from netpath.collect import trace as trace_mod
from netpath.errors import MissingCapability
from netpath.kernel.facts import KernelFacts
from netpath.plan import make_plan
from netpath.query import Filters
from netpath.stages import PACKET_STAGES, STAGE_IDS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KERNELS = ("6.1", "6.12", "6.18", "trace-6.1")
# trace-6.1 differs from 6.1 only where socket_queue/stack_total hook kprobe sock_def_readable
KPROBE_DATA_READY = ("socket_queue", "stack_total")
# kfree_skb has rx_sk on 6.12 and 6.18, not on 6.1, and only the owner-reading build reads it
DROPS_KERNELS = ("6.18", "6.12", "6.1")

# a cookie too: both programs check --netns by it
NS = netns.Netns(Path("/proc/self/ns/net"), 4026531840, "matrix", cookie=1)
FILTERS: dict[str, Filters] = {
    "--netns": Filters(netns=NS),
    "--iface": Filters(ifaces=("lo",), iface_keys=((4026531840, 1),)),
    "--proto udp": Filters(proto="udp"),
    "--proto icmp": Filters(proto="icmp"),
    "--port": Filters(port=8080),
    "--host v4": Filters(host=ipaddress.ip_address("192.0.2.1")),
    "--host v6": Filters(host=ipaddress.ip_address("2001:db8::1")),
}
ALL_FILTERS = Filters(netns=NS, ifaces=("lo",), iface_keys=((4026531840, 1),), proto="udp", port=8080,
                      host=ipaddress.ip_address("2001:db8::1"))


# ------------------------------------------------------------------------------------------------ trace


def trace_options() -> Iterator[tuple[str, trace_mod.TraceQuery]]:
    """Every trace option set the matrix builds (the module docstring says why these)."""
    Q = trace_mod.TraceQuery
    stage_sets = {"packet": PACKET_STAGES, "all": STAGE_IDS, **{s: (s,) for s in STAGE_IDS}}
    for (name, stages), exact, sample, tp_btf in itertools.product(
            stage_sets.items(), (False, True), (1, 16), (True, False)):
        label = f"--stages {name}{' --exact' if exact else ''} --sample {sample}{'' if tp_btf else ' (no tp_btf)'}"
        yield label, Q(stages=stages, exact=exact, sample_every=sample, tp_btf=tp_btf)
    breakdowns = {"--per-iface": Q(per_iface=True), "--per-cpu": Q(per_cpu=True),
                  "--per-socket": Q(per_socket=True), "--slower 5ms": Q(slower_ns=5_000_000),
                  "napi_by_dev (export)": Q(napi_by_dev=True)}
    set_by_breakdowns = {"per_iface": True, "per_cpu": True, "per_socket": True, "slower_ns": 5_000_000,
                         "napi_by_dev": True}
    around = {**breakdowns, **{label: Q(filters=f) for label, f in FILTERS.items()},
              "every filter": Q(filters=ALL_FILTERS), "everything": Q(filters=ALL_FILTERS, **set_by_breakdowns)}
    for exact, (label, query) in itertools.product((False, True), around.items()):
        yield f"--stages all{' --exact' if exact else ''} {label}", replace(query, stages=STAGE_IDS, exact=exact,
                                                                              sample_every=16)
    for (a, qa), (b, qb) in itertools.combinations(breakdowns.items(), 2):  # --exact changes none of their code
        pair = replace(qa, **{k: v for k, v in vars(qb).items() if k in set_by_breakdowns and v})
        yield f"--stages all {a} {b}", replace(pair, stages=STAGE_IDS, sample_every=16)
    # the always-on build of socket_queue alone checks the socket's namespace (6.1: at the wakeup)
    yield "--stages socket_queue --sample 16 --netns", Q(stages=("socket_queue",), sample_every=16,
                                                          filters=FILTERS["--netns"])
    for (label, query), stage in itertools.product(breakdowns.items(), ("packet", *STAGE_IDS)):
        # a per-invocation stage has no packet for --per-socket or --slower to act on
        if stage in PACKET_STAGES or stage == "packet" or label in ("--per-iface", "--per-cpu"):
            yield f"--stages {stage} {label}", replace(query, stages=stage_sets[stage])


# ------------------------------------------------------------------------------------------------ drops


RAW_TOO = ("--by reason,location,iface,proto", "--by flow", "--by reason,socket,cgroup",
           "--by reason,location,iface,proto,flow,socket,cgroup", "everything", "--pcap",
           "--pcap --by reason,socket")


def drops_options() -> Iterator[tuple[str, drops_mod.DropsQuery]]:
    """Every drops option set the matrix builds (the module docstring says why these)."""
    Q = drops_mod.DropsQuery
    fields = drops_mod.GROUP_FIELDS
    cgroup = Filters(cgroup_id=4242)
    groupings = [drops_mod.DEFAULT_BY, *((f,) for f in fields), ("reason", "flow"), ("reason", "socket"),
                 ("reason", "cgroup"), ("reason", "socket", "cgroup"), fields]
    options: dict[str, drops_mod.DropsQuery] = {f"--by {','.join(by)}": Q(by=by) for by in groupings}
    options.update({
        "--samples 4": Q(samples=4), "--stack": Q(stack=True), "--cgroup": Q(filters=cgroup),
        "--reason": Q(reason_code=2), **{label: Q(filters=f) for label, f in FILTERS.items()},
        "every filter": Q(filters=ALL_FILTERS), "--samples 4 --cgroup": Q(samples=4, filters=cgroup),
        "--stack --by reason,flow": Q(stack=True, by=("reason", "flow")),
        "--pcap": Q(pcap=drops_mod.PcapQuery()), "--pcap --by reason,socket": Q(pcap=drops_mod.PcapQuery(),
                                                                                by=("reason", "socket")),
        "--pcap every filter": Q(pcap=drops_mod.PcapQuery(snaplen=64), filters=ALL_FILTERS),
        "everything": Q(filters=replace(ALL_FILTERS, cgroup_id=4242), samples=4, stack=True, reason_code=2,
                        by=fields),
    })
    for by, (label, query) in itertools.product(
            (("reason", "socket"), ("reason", "cgroup")),
            {"--samples 4": Q(samples=4), "--cgroup": Q(filters=cgroup),
             "--samples 4 --cgroup": Q(samples=4, filters=cgroup)}.items()):
        options[f"--by {','.join(by)} {label}"] = replace(query, by=by)
    for label, query in options.items():
        yield label, query
        if label in RAW_TOO:  # the typed build reads the fields differently: the rest reads what these read
            yield label + " (no tp_btf)", replace(query, tp_btf=False)


# ------------------------------------------------------------------------------------------------ follow


def follow_options() -> Iterator[tuple[str, follow_mod.FollowQuery]]:
    """netpath follow: the default, each filter alone and every filter at once (nothing else changes its C)."""
    Q = follow_mod.FollowQuery
    yield "", Q()
    for label, f in FILTERS.items():
        yield label, Q(filters=f)
    yield "every filter", Q(filters=ALL_FILTERS, count=1000)


# ------------------------------------------------------------------------------------------------ builds


@dataclass
class Build:
    source: bpf.ProgramSource
    kernel: str  # the fixture whose release the headers shim claims (the first configuration's)
    kprobes: tuple[str, ...]  # C functions the plan attaches as kprobes
    configs: list[str] = field(default_factory=list)  # "trace on 6.1: --stages all --per-cpu"

    def describe(self) -> str:
        more = f" (and {len(self.configs) - 1} more with this build: {'; '.join(self.configs[1:4])}" \
               f"{' ...' if len(self.configs) > 4 else ''})" if len(self.configs) > 1 else ""
        defines = " ".join(f"-D{k}={v}" for k, v in sorted(self.source.defines.items()) if not k.startswith(
            ("OFF_", "SIZE_")) and not k.endswith(("_SPAN_OFF", "_SPAN_LEN")))
        tp_btf = f" tp_btf: {','.join(sorted(self.source.tp_btf))}" if self.source.tp_btf else ""
        return f"{self.configs[0]}{more}\n    units: {' '.join(self.source.files)}{tp_btf}\n    {defines}"


@functools.cache
def _facts(kernel: str) -> KernelFacts:
    return KernelFacts.load(FIXTURES / kernel)


def _key(source: bpf.ProgramSource) -> tuple:
    return tuple(source.files), tuple(sorted(source.defines.items())), tuple(sorted(source.tp_btf.items()))


def builds() -> tuple[list[Build], int]:
    """The distinct builds, in first-seen order, and how many configurations produced them."""
    offsets = bpf.struct_offsets(KernelFacts.load("/"))
    packet_loads = load.tp_btf_packet_loads(Path("/sys/kernel/btf/vmlinux"), offsets["OFF_SKB_HEAD"])
    seen: dict[tuple, Build] = {}
    configs = 0
    for kernel in KERNELS:
        facts = _facts(kernel)
        for label, query in trace_options():
            if kernel == "trace-6.1" and not set(query.stages) & set(KPROBE_DATA_READY):
                continue
            plan = make_plan(facts, only=query.stages, exact=query.exact)
            source = trace_mod.program_source(query, plan, offsets)
            kprobes = tuple(fn for hook, _sym in plan.kprobes() for _kind, fn in contract.kprobe_programs(hook))
            seen.setdefault(_key(source), Build(source, kernel, kprobes)).configs.append(f"trace on {kernel}: {label}")
            configs += 1
    for kernel in DROPS_KERNELS:
        for label, dquery in drops_options():
            if kernel == "6.1" and not (dquery.owner_keyed or dquery.samples or dquery.filters.cgroup_id is not None):
                continue
            source = drops_mod.program_source(dquery, _facts(kernel), offsets)
            seen.setdefault(_key(source), Build(source, kernel, ())).configs.append(f"drops on {kernel}: {label}")
            configs += 1
            if source.packet_loads and packet_loads:  # what compile_program loads where this verifier allows it
                typed = source.with_packet_loads()
                seen.setdefault(_key(typed), Build(typed, kernel, ())).configs.append(
                    f"drops on {kernel}: {label} (packet loads)")
                configs += 1
    for kernel in DROPS_KERNELS:
        for label, fquery in follow_options():
            source = follow_mod.program_source(fquery, _facts(kernel), offsets)
            # every function hop is loaded as a kprobe on every kernel (loading needs no CONFIG_KPROBES)
            kprobes = tuple(h.kprobe_fn for h in contract.FOLLOW_HOOKS if h.is_kprobe)
            seen.setdefault(_key(source), Build(source, kernel, kprobes)).configs.append(
                f"follow on {kernel}: {label}")
            configs += 1
    return list(seen.values()), configs


def check_build(source: bpf.ProgramSource, facts: KernelFacts, kprobes: tuple[str, ...] = ()) -> list[str]:
    """Compile `source` for `facts`' kernel shape as the build child does, and load through the production
    loader every function a run would load (never attached). Returns the functions loaded; raises
    MissingCapability naming the first failure (clang's error or the verifier's complaint)."""
    env_before = os.environ.get("BCC_KERNEL_SOURCE")
    os.environ.update({k: v for k, v in build_mod.shim_env(facts, {}).items() if k == "BCC_KERNEL_SOURCE"})
    try:
        built = build_mod.describe(source.text(), source.cflags(), build_mod.headers_mode(facts))
    finally:
        if env_before is None:
            os.environ.pop("BCC_KERNEL_SOURCE", None)
        else:
            os.environ["BCC_KERNEL_SOURCE"] = env_before
    prog = Program(built, "matrix", attach=False)
    loaded: list[str] = []
    try:
        ids = load.tp_btf_ids(Path("/sys/kernel/btf/vmlinux"), tuple(source.tp_btf.values()))
        for fn in prog.functions:
            if fn in source.tp_btf:
                prog.load_function(fn, libbpf.PROG_TYPE_TRACING, libbpf.TRACE_RAW_TP, ids[source.tp_btf[fn]])
            elif fn.startswith(AUTO_PREFIX):
                prog.load_function(fn, libbpf.PROG_TYPE_RAW_TRACEPOINT)
            elif fn in kprobes:
                prog.load_function(fn, libbpf.PROG_TYPE_KPROBE)
            else:
                continue  # compiled, never loaded by a run of this build
            loaded.append(fn)
    finally:
        prog.close()
    missing = sorted(set(kprobes) - set(loaded)) + sorted(set(source.tp_btf) - set(loaded))
    if missing:  # a run would fail to attach these
        raise MissingCapability(f"no BPF function {', '.join(missing)} in the compiled program")
    return loaded


def _check(build: Build) -> str | None:
    """In a worker process: None, or the failure."""
    try:
        check_build(build.source, _facts(build.kernel), build.kprobes)
    except MissingCapability as exc:
        return str(exc)
    return None


def test_every_build_compiles_and_passes_the_verifier() -> None:
    started = time.monotonic()
    todo, configs = builds()
    workers = min(2, os.cpu_count() or 1)
    # fork: the workers inherit the enumeration; each compiles in its own address space (BCC and LLVM
    # keep memory per module) and nothing of BCC is loaded in this process
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        results = list(pool.map(_check, todo, chunksize=4))
    failures = [f"{b.describe()}\n    -> {err}" for b, err in zip(todo, results, strict=True) if err]
    elapsed = time.monotonic() - started
    print(f"\nbuild matrix: {configs} configurations, {len(todo)} distinct builds compiled and loaded "
          f"in {elapsed:.0f}s on {workers} workers")
    if failures:
        pytest.fail(f"{len(failures)} of {len(todo)} builds failed:\n" + "\n".join(failures), pytrace=False)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # BCC's own str-vs-bytes notes
def test_a_build_the_verifier_refuses_fails_the_check(tmp_path, monkeypatch):
    """The check loads through the production loader, so a function that compiles but that the verifier
    refuses (a raw tracepoint argument, a plain number to the verifier, dereferenced) fails it with the
    verifier's complaint."""
    (tmp_path / "refused.c").write_text(
        "RAW_TRACEPOINT_PROBE(kfree_skb)\n{\n\treturn *(volatile int *)ctx->args[0];\n}\n")
    monkeypatch.setattr(build_mod, "BPF_DIR", tmp_path)
    with pytest.raises(MissingCapability, match=r"raw_tracepoint__kfree_skb: Permission denied: .*invalid mem access"):
        check_build(bpf.ProgramSource(["refused.c"]), _facts("6.18"))
