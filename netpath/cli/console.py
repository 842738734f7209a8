"""The one place output goes: JSON lines, a live rich view, or plain text."""

from __future__ import annotations

import sys
from typing import Any, BinaryIO

from rich.console import Console, RenderableType
from rich.live import Live

from netpath.errors import OutputClosed
from netpath.render import jsonl

__all__ = ["OutputClosed", "Terminal"]


def _tolerant(stream: object) -> None:
    """A strict stdout encoding (PYTHONIOENCODING=ascii) shows what it cannot encode as escapes."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors="backslashreplace")
        except (OSError, ValueError):
            pass


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """rich would exit 1 here, which our contract reserves for a crossed threshold."""
        raise OutputClosed


class _PipeOut:
    """A binary stdout whose reader may go away (`| head -c 100`): EPIPE becomes OutputClosed."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def write(self, data: bytes) -> int:
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
        # no markup, emoji or highlighting is read from text: names in it are other users' choice
        self.out = _Console(stderr=stdout_taken, highlight=False, soft_wrap=False, emoji=False, markup=False)
        self.err = _Console(stderr=True, highlight=False, emoji=False, markup=False)
        self.interactive = not json_mode and (sys.stderr if stdout_taken else sys.stdout).isatty()
        self._live: Live | None = None

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
        if not self.json_mode:
            self.err.print(text, markup=False, soft_wrap=True)  # a note is one line, whatever the width

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
