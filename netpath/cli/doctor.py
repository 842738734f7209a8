"""`netpath doctor`: which receive-path problem this host has, whose it is, the evidence, and the knob."""

from __future__ import annotations

import os

import click

from netpath import __version__
from netpath.cli import doctor_window
from netpath.cli.console import Terminal
from netpath.cli.options import DURATION_MAX_S, bounded_float, filter_options, resolve_filters
from netpath.cli.preflight import load_facts, require_capability
from netpath.collect.session import drive
from netpath.compose.doctor import DoctorQuery, doctor_session
from netpath.diagnose import rules, saved
from netpath.errors import EXIT_OK, EXIT_THRESHOLD, BadInput
from netpath.model import Diagnosis, DoctorStart, Event, Filters, Snapshot, Start, Verdict
from netpath.render import doctor_view, records

DEFAULT_DURATION_S = 10.0
MIN_DURATION_S = 1.0  # a shorter window sees too little to conclude anything

HELP = f"""Diagnose the receive path: ranked findings with evidence and the knob.

Watches the receive path for --duration seconds (default {DEFAULT_DURATION_S:.0f}): every drop by the
kernel's reason, interface and receiving socket (with its process, cgroup
and container), the counters no skb carries (softnet, link, qdisc, SNMP,
conntrack), and the socket-queue and softirq-wait latencies. Then it reads
the settings the rules name (sysctls of the namespace, socket buffers and
listen backlogs via sock_diag, ring sizes and offloads via ethtool, RPS masks,
IRQ affinity) and prints one block per finding, worst first: what, whose,
the evidence (equal to the kernel counter named), why, and the setting that
fixes it with its current value. A healthy host prints "no problems found"
and what was checked. Every number is a delta over the window.

Rules: {', '.join(rules.RULE_IDS)}.

\b
Examples:
  sudo netpath doctor
  sudo netpath doctor --netns web --duration 30
  sudo netpath doctor --json --fail-on warn        # exit 1 on warn or crit
  sudo netpath doctor --save window.json           # keep the window
  netpath doctor --load window.json --json         # its findings again, anywhere
"""


# the options that shape a live window, with their names as typed: none of them applies to --load
WATCH_OPTIONS = {"ifaces": "--iface", "netns_spec": "--netns", "proto": "--proto", "port": "--port", "host": "--host",
                 "duration": "--duration", "no_trace": "--no-trace", "save_path": "--save"}


class DoctorSink:
    """Progress while the window runs; the findings (text or JSON lines) at the end."""

    def __init__(self, term: Terminal, duration_s: float, fail_on: str | None) -> None:
        self.term = term
        self.duration_ns = int(duration_s * 1e9)
        self.fail_on = fail_on
        self.crossed = False

    def started(self, start: Start) -> None:
        if self.term.json_mode:
            self.term.emit(records.start(start))
        self.term.progress(doctor_view.progress_line(0, self.duration_ns))

    def events(self, events: list[Event]) -> None:
        pass

    def interval(self, snap: Snapshot, seq: int) -> None:
        self.term.progress(doctor_view.progress_line(snap.elapsed_ns, self.duration_ns))

    def summary(self, snap: Snapshot, stop_reason: str, verdicts: list[Verdict]) -> None:
        assert isinstance(snap, Diagnosis)
        self.term.progress_done()
        findings = list(snap.findings)
        counts = rules.counts(findings)
        self.crossed = self.fail_on is not None and rules.at_least(findings, self.fail_on)
        if self.term.json_mode:
            for f in findings:
                self.term.emit(records.finding(f))
            self.term.emit(records.doctor_summary(snap, stop_reason, counts, self.fail_on, self.crossed))
            return
        self.term.plain("\n".join(doctor_view.report_lines(snap, counts, min(self.term.width, 80))))


@click.command("doctor", help=HELP)
@filter_options
@click.option("--duration", type=bounded_float(MIN_DURATION_S, DURATION_MAX_S, "seconds"),
              default=DEFAULT_DURATION_S, show_default=True, metavar="SECONDS",
              help="How long to watch before concluding: at least 1 (the other commands take 0.1), "
              "since a shorter window sees too little to conclude anything.")
@click.option("--json", "json_mode", is_flag=True, help="JSON Lines on stdout (schema netpath/1): findings, summary.")
@click.option("--fail-on", "fail_on", type=click.Choice(rules.SEVERITIES), metavar="info|warn|crit",
              help="Exit 1 when a finding at or above this severity is found.")
@click.option("--no-trace", is_flag=True, help="Leave out the latency rules (slow-reader, softirq-wait): "
              "no per-packet hook runs, only the drops program.")
@click.option("--save", "save_path", metavar="FILE",
              help="Also write the window (everything the rules read) to FILE as JSON, for --load.")
@click.option("--load", "load_path", metavar="FILE",
              help="Run the rules on a window saved with --save instead of watching (no root, no BPF).")
@click.pass_context
def doctor(ctx: click.Context, ifaces: tuple[str, ...], netns_spec: str | None, proto: str | None,
           port: int | None, host: str | None, duration: float, json_mode: bool, fail_on: str | None,
           no_trace: bool, save_path: str | None, load_path: str | None) -> None:
    if load_path is not None:
        watching = [opt for name, opt in WATCH_OPTIONS.items()
                    if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if watching:
            raise BadInput(f"{watching[0]} cannot be used with --load: a saved window is replayed as it was")
        ctx.exit(_replay(load_path, json_mode, fail_on))
    filters = resolve_filters(ifaces, netns_spec, proto, port, host)
    if save_path is not None:
        doctor_window.check_target(save_path)
    require_capability(command="doctor")
    facts = load_facts()
    session = doctor_session(DoctorQuery(filters, trace=not no_trace), facts)
    term = Terminal(json_mode)
    sink = DoctorSink(term, duration, fail_on)
    drive(session, sink, 1.0, duration, None)
    if save_path is not None and session.observation is not None:
        doctor_window.write(save_path, saved.dump(session.observation, session.holders, __version__,
                                                  os.uname().release))
    ctx.exit(EXIT_THRESHOLD if sink.crossed else EXIT_OK)


def _replay(path: str, json_mode: bool, fail_on: str | None) -> int:
    """--load: the saved window's findings, as the run that saved it printed them (no root, no BPF)."""
    obs, holders, _version, kernel = saved.load(doctor_window.read(path), path)
    findings = [saved.apply_holders(f, holders) for f in rules.diagnose(obs)]
    checked = tuple(r for r in rules.RULE_IDS if obs.trace is not None or r not in rules.LATENCY_RULES)
    diag = Diagnosis(tuple(findings), checked, obs.elapsed_ns, obs.drops.total if obs.drops else 0)
    term = Terminal(json_mode)
    sink = DoctorSink(term, obs.elapsed_ns / 1e9, fail_on)
    if json_mode:
        term.emit(records.start(DoctorStart(kernel=kernel, headers="saved window", attached=(), unavailable=(),
                                            filters=Filters(), rules=rules.RULE_IDS)))
    sink.summary(diag, "loaded", [])
    return EXIT_THRESHOLD if sink.crossed else EXIT_OK
