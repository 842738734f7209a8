"""Tables that keep their most important columns when the terminal is narrow."""

from __future__ import annotations

from dataclasses import dataclass

from rich import box
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Column:
    header: str
    keep: int  # lower goes first when the terminal is narrow; 0 never goes
    justify: str = "left"
    max_width: int | None = None  # the longest a squeezable text column may be
    squeeze: bool = False  # may be cut short with an ellipsis instead of going
    least: int = 6  # a squeezed column keeps this many characters


def _overhead(ncols: int) -> int:
    """Columns of a SIMPLE_HEAD table's padding and separators (measured: 3 per column, less one)."""
    return 3 * ncols - 1


def fitted_table(title: str, columns: list[Column], rows: list[list[str | Text]], width: int) -> Table:
    """Drops the least important columns until the rest fit in `width`; squeezable ones shrink first."""

    def natural(i: int) -> int:
        wide = max([len(columns[i].header)] + [len(str(r[i])) for r in rows])
        cap = columns[i].max_width
        return min(wide, cap) if cap else wide

    def least(i: int) -> int:
        return min(natural(i), columns[i].least) if columns[i].squeeze else natural(i)

    shown = list(range(len(columns)))
    while len(shown) > 1 and sum(least(i) for i in shown) + _overhead(len(shown)) > width:
        victim = min((i for i in shown if columns[i].keep), key=lambda i: (columns[i].keep, -i), default=None)
        if victim is None:
            break
        shown.remove(victim)
    widths = {i: natural(i) for i in shown}
    spare = width - _overhead(len(shown)) - sum(widths.values())
    for i in sorted((i for i in shown if columns[i].squeeze), key=lambda i: -widths[i]):
        if spare >= 0:
            break
        cut = min(-spare, widths[i] - least(i))
        widths[i] -= cut
        spare += cut
    # Text, never a str: a str cell or title is rich markup, and cells hold names others chose ("[/x]")
    table = Table(box=box.SIMPLE_HEAD, title=Text(title), title_justify="left", expand=False, pad_edge=False)
    for i in shown:
        col = columns[i]
        table.add_column(col.header, justify=col.justify, no_wrap=True, overflow="ellipsis",  # type: ignore[arg-type]
                         width=widths[i])
    for r in rows:
        table.add_row(*(_cell(r[i]) for i in shown))
    return table


def _cell(value: str | Text) -> Text:
    """A str cell would be read as rich markup; cells hold names other users chose ("[/x]")."""
    return value if isinstance(value, Text) else Text(value)
