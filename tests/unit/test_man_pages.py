"""Every command has a man page with the sections an operator looks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from netpath.cli.main import cli

MAN = Path(__file__).resolve().parents[2] / "man" / "man8"
SECTIONS = ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXAMPLES", "EXIT STATUS", "OVERHEAD", "SEE ALSO")


@pytest.mark.parametrize("command", sorted(cli.list_commands(None)))  # type: ignore[arg-type]
def test_each_command_has_a_page_with_every_section(command: str) -> None:
    page = (MAN / f"netpath-{command}.8").read_text()
    heads = [line[4:].strip().strip('"') for line in page.splitlines() if line.startswith(".SH ")]
    for section in SECTIONS:
        assert section in heads, f"netpath-{command}.8 lacks {section}"
    assert "FIELDS" in heads or "METRICS" in heads
    assert f"netpath\\-{command}" in (MAN / "netpath.8").read_text(), f"netpath(8) does not point at {command}"


def test_socket_queue_says_it_starts_at_the_wakeup_and_what_so_rcvlowat_does():
    from netpath.stages import STAGES

    page = (MAN / "netpath-trace.8").read_text()
    assert "from the socket's wakeup to the application's read" in page and "SO_RCVLOWAT" in page
    stage = next(s for s in STAGES if s.id == "socket_queue")
    assert "woken" in stage.summary and "SO_RCVLOWAT" in stage.summary
