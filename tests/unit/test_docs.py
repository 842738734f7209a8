"""The docs say what the program does (issue 30): every option the docs name exists in `--help` and every
option in `--help` is documented; man pages render without warnings; a newcomer's first commands behave.

Generic over commands: each check walks `cli.list_commands()`, the man pages on disk and every command
line in README.md and the man pages' EXAMPLES, so a command or page added later is covered by itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from doc_commands import command_lines, man_source, section, split_command

from netpath.cli.main import cli, main

MAN = Path(__file__).resolve().parents[2] / "man" / "man8"
PAGES = sorted(MAN.glob("*.8"))
COMMANDS = sorted(cli.list_commands(None))  # type: ignore[arg-type]
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]")


def help_text(*argv: str) -> str:
    result = CliRunner().invoke(cli, [*argv, "--help"], prog_name="netpath")
    assert result.exit_code == 0, result.output
    return result.output


def help_options(command: str) -> set[str]:
    """The long options `netpath COMMAND --help` lists in its Options section."""
    text = help_text(command)
    section = text[text.index("\nOptions:"):]
    return set(re.findall(r"^\s{2}(?:-\w, )?(--[a-z][a-z0-9-]*)", section, re.M)) - {"--help"}


def man_option_heads(command: str) -> set[str]:
    """The options netpath-COMMAND(8) documents: the head line of each .TP paragraph in OPTIONS."""
    lines = section(man_source(MAN / f"netpath-{command}.8"), "OPTIONS").splitlines()
    heads = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.strip() in (".TP", ".TQ")]
    return {opt for head in heads for opt in OPTION.findall(head)}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_in_help_is_in_the_man_page_and_the_reverse(command: str) -> None:
    in_help = help_options(command)
    in_man = man_option_heads(command)
    assert in_help - in_man == set(), f"netpath-{command}(8) OPTIONS lacks {sorted(in_help - in_man)}"
    assert in_man - in_help == set(), f"netpath-{command}(8) documents {sorted(in_man - in_help)}, not in --help"


def test_every_documented_command_line_names_real_options() -> None:
    lines = command_lines()
    assert len(lines) > 20  # the README and the pages' examples were found
    for where, line in lines:
        command, options = split_command(line)
        if command is None:
            continue
        assert command in COMMANDS, f"{where}: {line!r}: no command {command!r}"
        unknown = set(options) - help_options(command) - {"--help"}
        assert not unknown, f"{where}: {line!r}: {sorted(unknown)} not in 'netpath {command} --help'"


def test_help_texts_name_only_real_options() -> None:
    """`trace --fail-on-latency` in the top help, examples in each command's help: each option exists."""
    texts = {"": help_text()} | {c: help_text(c) for c in COMMANDS}
    for where, text in texts.items():
        for command, rest in re.findall(rf"\b({'|'.join(COMMANDS)}) ((?:--[a-z][a-z0-9-]*[ ,)]?)+)", text):
            for opt in OPTION.findall(rest):
                assert opt in help_options(command), f"help of {where or 'netpath'} names {command} {opt}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_option_heads_in_options_start_a_paragraph(page: Path) -> None:
    """A head without its .TP prints inside the paragraph before it (netpath-export(8) --max-series)."""
    lines = section(page.read_text(), "OPTIONS").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\.B[IR]? +\\-\\-", line):
            assert i > 0 and lines[i - 1].strip() in (".TP", ".TQ"), f"{page.name}: {line!r} has no .TP"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_man_page_renders_without_warnings(page: Path) -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (Makefile APT_PACKAGES has groff-base)")
    env = {"LC_ALL": "C.UTF-8", "MANWIDTH": "80", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["groff", "-wall", "-man", "-Tutf8", "-z", str(page)], capture_output=True, text=True,
                          env=env, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    if shutil.which("man"):
        done = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True, env=env,
                              check=False)
        assert done.returncode == 0 and done.stderr == "", done.stderr


def test_bare_netpath_prints_the_help_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Usage: netpath") and "Commands:" in out and err == ""
    for command in COMMANDS:
        assert f"\n  {command} " in out


def test_an_unknown_command_names_the_closest_one(capsys: pytest.CaptureFixture[str]) -> None:
    for command in COMMANDS:
        typo = command[:-1]
        assert main([typo]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"Did you mean '{command}'?" in err, err
    assert main(["frobnicate"]) == 2
    assert "Commands: " + ", ".join(COMMANDS) in capsys.readouterr().err


def test_help_never_splits_an_option_or_rule_id_at_a_hyphen() -> None:
    for command in ["", *COMMANDS]:
        text = help_text(*([command] if command else []))
        assert not re.search(r"[a-z]-\n", text), f"netpath {command} --help splits a word at a hyphen"
    from netpath.diagnose.rules import RULE_IDS

    doctor = " ".join(help_text("doctor").split())
    for rule in RULE_IDS:
        assert rule in doctor
