"""The one place output goes: JSON lines, a live rich view, or plain text."""

from __future__ import annotations

import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any, BinaryIO

from netpath.errors import OutputClosed
from netpath.render import jsonl

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

__all__ = ["OutputClosed", "Terminal"]


def _tolerant(stream: object) -> None:
    """A strict stdout encoding (PYTHONIOENCODING=ascii) shows what it cannot encode as escapes."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors="backslashreplace")
        except (OSError, ValueError):
            pass


def _console(**kwargs: Any) -> Console:
    """A rich Console, imported only when something is shown to people (~15 ms: --json never pays it)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            """rich would exit 1 here, which our contract reserves for a crossed threshold."""
            raise OutputClosed

    return _Console(**kwargs)


class _PipeOut:
    """A binary stdout whose reader may go away (`| head -c 100`): EPIPE becomes OutputClosed."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def write(self, data: bytes | memoryview) -> int:
        try:
            return self._raw.write(data)
        except BrokenPipeError:
            raise OutputClosed from None

    def flush(self) -> None:
        try:
            self._raw.flush()
        except BrokenPipeError:
            raise OutputClosed from None

    def close(self) -> None:
        self.flush()


class Terminal:
    """`stdout_taken`: stdout carries binary data (drops --pcap -), so what people read goes to stderr."""

    def __init__(self, json_mode: bool, stdout_taken: bool = False) -> None:
        self.json_mode = json_mode
        self.stdout_taken = stdout_taken
        _tolerant(sys.stdout)
        _tolerant(sys.stderr)
        self.interactive = not json_mode and (sys.stderr if stdout_taken else sys.stdout).isatty()
        self._live: Live | None = None

    # no markup, emoji or highlighting is read from text: names in it are other users' choice
    @cached_property
    def out(self) -> Console:
        return _console(stderr=self.stdout_taken, highlight=False, soft_wrap=False, emoji=False, markup=False)

    @cached_property
    def err(self) -> Console:
        return _console(stderr=True, highlight=False, emoji=False, markup=False)

    @staticmethod
    def stdout_is_terminal() -> bool:
        return sys.stdout.isatty()

    def binary_stdout(self) -> _PipeOut:
        """stdout for binary data (pcapng); a closed reader surfaces as OutputClosed from write()."""
        return _PipeOut(sys.stdout.buffer)

    @property
    def width(self) -> int:
        return self.out.width

    def emit(self, obj: dict[str, Any]) -> None:
        """One JSON line (built by netpath.render.records)."""
        try:
            jsonl.emit(obj)
        except BrokenPipeError:
            raise OutputClosed from None

    def note(self, text: str) -> None:
        """Human progress notes go to stderr so stdout stays clean for pipes."""
        if not self.json_mode:  # one plain line, whatever the width (no rich: its import is ~15 ms)
            try:
                print(text, file=sys.stderr, flush=True)
            except BrokenPipeError:
                raise OutputClosed from None

    def warn(self, text: str) -> None:
        """A line on stderr that scripts must see too (--json keeps stdout for JSON, not stderr for this)."""
        self.err.print(text, markup=False, soft_wrap=True)

    def progress(self, text: str) -> None:
        """A line on stderr that rewrites itself, only when stderr is a terminal (never in --json)."""
        if self.json_mode or not sys.stderr.isatty():
            return
        sys.stderr.write("\r\033[K" + text)
        sys.stderr.flush()

    def progress_done(self) -> None:
        if not self.json_mode and sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def show(self, renderable: RenderableType) -> None:
        """Refresh the live view on a terminal; print one block per call otherwise."""
        try:
            if self.interactive:
                if self._live is None:
                    from rich.live import Live

                    self._live = Live(renderable, console=self.out, auto_refresh=False, transient=False)
                    self._live.start()
                self._live.update(renderable, refresh=True)
            else:
                self.out.print(renderable)
        except BrokenPipeError:
            raise OutputClosed from None

    def render(self, renderable: RenderableType) -> None:
        """Print a table once (a summary after the live view closed), fitted to the terminal."""
        try:
            self.out.print(renderable)
        except BrokenPipeError:
            raise OutputClosed from None

    def print(self, text: str, **style: Any) -> None:
        """A line of text for people (rich markup off)."""
        try:
            self.out.print(text, markup=False, **style)
        except BrokenPipeError:
            raise OutputClosed from None

    def plain(self, text: str) -> None:
        try:
            print(text, flush=True, file=sys.stderr if self.stdout_taken else sys.stdout)
        except BrokenPipeError:
            raise OutputClosed from None

    def line(self, text: str) -> None:
        """A line above the live view on a terminal, a plain line when piped."""
        if self.interactive:
            self.print(text)
        else:
            self.plain(text)

    def close_live(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
