"""The netpath command: a click group, one module per command, contract exit codes."""

from __future__ import annotations

import os
import sys

import click

from netpath import __version__
from netpath.cli.drops import drops
from netpath.cli.export import export
from netpath.cli.probes import probes
from netpath.cli.trace import trace
from netpath.errors import EXIT_ENVIRONMENT, EXIT_USAGE, NetpathError

HELP = """eBPF observability for the Linux packet receive path.

\b
  netpath trace    where received packets spend their time, stage by stage
  netpath drops    where packets die: kernel drop reason, location, interface
  netpath probes   what this kernel offers and how each hook attaches
  netpath export   the same drops and latencies as Prometheus metrics

Every command takes --json (JSON Lines, schema netpath/1). Exit codes: 0 ok,
1 a --fail-on threshold was crossed, 2 bad input, 3 the environment cannot run
it (the message says how to fix it). Run as root (or with CAP_BPF+CAP_PERFMON).
"""


@click.group(help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 80})
@click.version_option(__version__, prog_name="netpath")
def cli() -> None:
    pass


cli.add_command(drops)
cli.add_command(export)
cli.add_command(probes)
cli.add_command(trace)


def main(argv: list[str] | None = None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="netpath", standalone_mode=False)
        return int(rv or 0)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        return 130
    except click.ClickException as exc:
        click.echo(f"netpath: error: {exc.format_message()}", err=True)
        return EXIT_USAGE
    except NetpathError as exc:
        click.echo(f"netpath: error: {exc}", err=True)
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except Exception as exc:  # no traceback reaches the user; NETPATH_DEBUG=1 shows it
        if os.environ.get("NETPATH_DEBUG"):
            raise
        click.echo(f"netpath: internal error: {type(exc).__name__}: {exc} (NETPATH_DEBUG=1 for details)", err=True)
        return EXIT_ENVIRONMENT


def entry() -> None:
    sys.exit(main())
