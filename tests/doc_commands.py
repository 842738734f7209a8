"""The netpath command lines the docs show: README code blocks and every man page's EXAMPLES.

Shared by tests/unit/test_docs.py (each names only real options) and tests/live/test_docs_live.py (each
runs and exits as documented). Nothing is listed by hand: a page or command added later is found here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man" / "man8"


def man_source(page: Path) -> str:
    """The page's text with roff escapes for dashes undone: `\\-\\-fail\\-on` reads `--fail-on`."""
    return page.read_text().replace("\\-", "-").replace("\\(em", "-")


def section(src: str, name: str) -> str:
    m = re.search(rf'^\.SH "?{re.escape(name)}"?\s*$(.*?)(?=^\.SH |\Z)', src, re.M | re.S)
    return m.group(1) if m else ""


def command_lines() -> list[tuple[str, str]]:
    """(where, command line) for every `netpath ...` in README code blocks and man EXAMPLES."""
    out: list[tuple[str, str]] = []
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", readme, re.M | re.S):
        prompted = any(line.startswith("$ ") for line in block.splitlines())  # then the rest is output
        for raw in block.splitlines():
            if prompted and not raw.startswith("$ "):
                continue
            line = raw.removeprefix("$ ").strip()
            if line.startswith(("sudo netpath ", "netpath ")):
                out.append(("README.md", line))
    for page in sorted(MAN.glob("*.8")):
        for raw in section(man_source(page), "EXAMPLES").splitlines():
            line = re.sub(r"^\.B[IR]? ", "", raw).replace("\\fB", "").replace("\\fR", "").replace("\\fI", "")
            line = line.strip().strip('"')
            if line.startswith(("sudo netpath ", "netpath ")):
                out.append((page.name, line))
    return out


def netpath_part(line: str) -> str:
    """The netpath command itself: without its comment, the pipe after it or a note set off by spaces."""
    return re.split(r"\s#|\s\|\|?\s|\s&&\s|\s{2,}", line, maxsplit=1)[0].strip()


def split_command(line: str) -> tuple[str | None, list[str]]:
    """The command a documented line runs and the options it names."""
    words = netpath_part(line).removeprefix("sudo ").split()
    command = words[1] if len(words) > 1 and not words[1].startswith("-") else None
    return command, [w.split("=", 1)[0] for w in words[2:] if w.startswith("--")]
