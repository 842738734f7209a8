"""The netpath command: a click group, one module per command, contract exit codes."""

from __future__ import annotations

import difflib
import importlib
import os
import sys

import click
import click._textwrap

from netpath import __version__
from netpath.errors import EXIT_ENVIRONMENT, EXIT_USAGE, NetpathError, OutputClosed
from netpath.kernel import limits

HELP = """eBPF observability for the Linux packet receive path.

\b
  netpath trace    where received packets spend their time, stage by stage
  netpath drops    where packets die: kernel drop reason, location, interface
  netpath doctor   which receive-path problem this host has, and the fix
  netpath probes   what this kernel offers and how each hook attaches
  netpath export   the same drops and latencies as Prometheus metrics

New here? Start with `sudo netpath doctor`, then `sudo netpath drops` and
`sudo netpath trace` (README, Quick start; man netpath).

trace, drops, doctor and probes take --json (JSON Lines, schema netpath/1);
export serves Prometheus metrics instead. Exit codes: 0 ok, 1 a threshold was
crossed (trace --fail-on-latency, drops --fail-on-drops, doctor --fail-on),
2 bad input, 3 the environment cannot run it (the message says how to fix it).
Run as root, or with CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH and, for drop
locations, CAP_SYSLOG.
"""


class _WholeWords(click._textwrap.TextWrapper):
    """Help wrapped between words only: click's wrapper splits at hyphens ("--fail-⏎on", "reassembly-⏎failure"),
    and option names and rule ids are copied from the help. click.formatting.wrap_text looks this class up
    at each call, so replacing it here covers every command's help."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs["break_on_hyphens"] = False
        kwargs["break_long_words"] = False
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


click._textwrap.TextWrapper = _WholeWords  # type: ignore[misc]


# command -> (module, its one-line help). A command's module is imported only when that command runs:
# `drops` never pays for prometheus_client, `--help` for none of them (tests/unit/test_cli.py checks the
# lines against the commands' own short help)
COMMANDS = {
    "doctor": ("netpath.cli.doctor", "Diagnose the receive path: ranked findings with evidence and the knob."),
    "drops": ("netpath.cli.drops", "Show every dropped packet by the kernel's own drop reason."),
    "export": ("netpath.cli.export", "Serve receive-path drop and latency metrics to Prometheus."),
    "probes": ("netpath.cli.probes", "Show what this kernel offers netpath and how each hook attaches."),
    "trace": ("netpath.cli.trace", "Show where received packets spend their time, stage by stage."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        command = getattr(importlib.import_module(COMMANDS[cmd_name][0]), cmd_name)
        assert isinstance(command, click.Command)
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                            list[str]]:
        """An unknown command names the closest one (`netpath drop` -> drops), still exit 2."""
        name = args[0] if args else ""
        if name and not name.startswith("-") and name not in COMMANDS:
            close = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else f" Commands: {', '.join(sorted(COMMANDS))}."
            ctx.fail(f"no such command '{name}'.{hint} (netpath --help)")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


# no_args_is_help=False: click (8.2+) answers a bare group with its help as a usage error, exit 2, on stderr.
# A bare `netpath` is someone asking what it does: the help goes to stdout and the exit is 0 (netpath(8)).
@click.group(cls=LazyGroup, help=HELP, invoke_without_command=True, no_args_is_help=False,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80})
@click.version_option(__version__, prog_name="netpath")
@click.pass_context
def cli(ctx: click.Context) -> None:
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


# the reader of our output went away (`netpath drops --json | head -1`): the shell's SIGPIPE status,
# which a script cannot mistake for 1 (threshold), 2 (usage) or 3 (environment)
EXIT_PIPE_CLOSED = 141


def _stdout_closed() -> bool:
    try:
        os.fstat(1)
    except OSError:
        return True
    return sys.stdout is None


def _silence_stdout() -> None:
    """After EPIPE, point fd 1 at /dev/null so the interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    if _stdout_closed():
        sys.stderr and sys.stderr.write(
            "netpath: error: standard output is closed: give netpath somewhere to write "
            "(a file, a pipe, or > /dev/null)\n")
        return EXIT_ENVIRONMENT
    try:
        rv = cli.main(args=argv, prog_name="netpath", standalone_mode=False)
        return int(rv or 0)
    except OutputClosed:
        _silence_stdout()
        return EXIT_PIPE_CLOSED
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        return 130
    except click.ClickException as exc:
        # one line, even when the bad value itself holds a newline
        click.echo(f"netpath: error: {' '.join(exc.format_message().split())}", err=True)
        return EXIT_USAGE
    except NetpathError as exc:
        click.echo(f"netpath: error: {exc}", err=True)
        return exc.exit_code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE_CLOSED
    except Exception as exc:  # no traceback reaches the user; NETPATH_DEBUG=1 shows it
        if limits.too_many_files(exc):  # the cause is the open-file limit, whichever file it hit
            click.echo(f"netpath: error: {limits.advice()}", err=True)
            return EXIT_ENVIRONMENT
        if os.environ.get("NETPATH_DEBUG"):
            raise
        click.echo(f"netpath: internal error: {type(exc).__name__}: {exc} (NETPATH_DEBUG=1 for details)", err=True)
        return EXIT_ENVIRONMENT


def entry() -> None:
    sys.exit(main())
