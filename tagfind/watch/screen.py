"""Drawing the watch model full-screen with Rich, and the loop that refreshes it.

Rich's Live(screen=True) switches to the terminal's alternate screen and hides the cursor, and
gives both back when its block ends, also on Ctrl-C and on errors; the key reader restores the
terminal mode the same way. The layout is recomputed from the terminal size at every redraw,
so the table follows a resized window. Rich is an optional extra (`tagfind[watch]`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..pool.model import PoolSnapshot
from .keys import KeyReader
from .model import DETAIL, HELP, PROMPT, WatchModel, WatchRow, detail_lines

MISSING = "tagfind watch needs Rich: pip install 'tagfind[watch]'"
CHANGED = "bold reverse"
REDRAW = 0.5  # seconds: the longest a resize waits for a redraw
HELP_TEXT = """\
P  paged / nonpaged / both        E  totals line        L  highlighting
B  sort by bytes     T  tag       M  bytes per alloc    A  allocs     F  frees
S, D  allocs minus frees          ( )  sort by the change since the last refresh
(the same sort key again reverses the order)
I  include tags (patterns, * and ?)     X  exclude tags     (empty clears)
Space  pause       N  next frame        Q, Esc  quit
Up/Down, PgUp/PgDn, Home/End  scroll    Enter  the selected tag's drivers and evidence
"""
# (header, justify, least width, narrowest terminal that shows it): on a small window the
# changes of allocs and frees, the evidence and the frees go first; tag, type, diff and bytes
# with their change, and the driver, stay.
COLUMNS: tuple[tuple[str, str, int, int], ...] = (
    ("Tag", "left", 4, 0), ("Type", "left", 5, 0), ("Allocs", "right", 6, 100),
    ("", "right", 4, 130), ("Frees", "right", 6, 120), ("", "right", 4, 140),
    ("Diff", "right", 4, 0), ("", "right", 4, 0), ("Bytes", "right", 6, 0),
    ("", "right", 6, 0), ("Per Alloc", "right", 5, 80), ("Driver(s)", "left", 8, 0),
    ("Evidence", "left", 4, 110), ("pooltag.txt", "left", 6, 90),
)
# Shown after Per Alloc when the frame carries the big pool table (same tuple layout).
BIG_COLUMNS: tuple[tuple[str, str, int, int], ...] = (
    ("Big", "right", 3, 90), ("Big Bytes", "right", 6, 90),
)
_BIG_AT = 11  # index in COLUMNS before which they go (Driver(s))
_HEADER_LINES = 3  # status, key hint, table header; plus the totals when shown


class WatchUnavailable(Exception):
    """Rich is not installed."""


def _rich() -> Any:
    try:
        import rich  # noqa: F401
    except ImportError:
        raise WatchUnavailable(MISSING) from None
    import rich.console
    import rich.live
    import rich.table
    import rich.text

    return rich


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _change(row: WatchRow, column: str) -> str:
    if row.changes is None:
        return "(new)"
    value = row.change(column)
    return "" if value is None else f"({value:+,})"


def build_table(model: WatchModel, width: int, height: int) -> Any:
    """The renderable for the current state, sized for a width x height terminal."""
    rich = _rich()
    Text, Table, Group = rich.text.Text, rich.table.Table, rich.console.Group
    status = Text(_status(model), style="bold", no_wrap=True, overflow="ellipsis")
    hint = Text(_hint(model), no_wrap=True, overflow="ellipsis")
    if model.mode == HELP:
        return Group(status, Text(HELP_TEXT), Text("Esc or Enter: back"))
    if model.mode == DETAIL:
        row = model.selected_row()
        lines = detail_lines(row) if row else ["no row selected"]
        return Group(status, Text("\n".join(lines)), Text("\nEsc or Enter: back"))
    extra = 2 if model.show_totals else 0
    model.page_size = max(1, height - _HEADER_LINES - extra - 1)
    table = Table(box=None, pad_edge=False, show_edge=False, expand=False, width=width,
                  header_style="bold underline", padding=(0, 1))
    columns = COLUMNS
    if model.has_big_pool:
        columns = COLUMNS[:_BIG_AT] + BIG_COLUMNS + COLUMNS[_BIG_AT:]
    kept = [i for i, (_, _, _, narrowest) in enumerate(columns) if width >= narrowest]
    for i in kept:
        name, justify, least, _ = columns[i]
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis",
                         min_width=least)
    rows = model.rows()
    visible = model.visible_rows()
    for index, row in enumerate(visible, model.offset):
        mark = model.highlight
        cells = [Text(row.tag), Text("Paged" if row.pool == "paged" else "Nonp")]
        for column in ("allocs", "frees", "diff", "bytes"):
            style = CHANGED if mark and column in row.changed else ""
            cells.append(Text(_number(row.value(column)), style=style))
            cells.append(Text(_change(row, column), style=style))
        drivers = ", ".join(c.driver for c in row.drivers[:3]) or "-"
        if len(row.drivers) > 3:
            drivers += f" (+{len(row.drivers) - 3})"
        cells.append(Text(_number(row.per_alloc)))
        if model.has_big_pool:
            cells += [Text(_number(row.big_count)), Text(_number(row.big_bytes))]
        cells += [Text(drivers),
                  Text(row.drivers[0].evidence if row.drivers else "-"),
                  Text(row.pooltag_owner or "-")]
        table.add_row(*(cells[i] for i in kept),
                      style="underline" if index == model.selected else None)
    parts: list[Any] = [status, hint, table]
    if not rows:
        parts.append(Text("no rows (check the P view and the I/X patterns)"))
    if model.show_totals:
        parts.append(Text(_totals(model), style="bold", no_wrap=True, overflow="ellipsis"))
    return Group(*parts)


def _status(model: WatchModel) -> str:
    snap = model.current
    order = "ascending" if model.ascending else "descending"
    what = f"change of {model.sort_label}" if model.by_change else model.sort_label
    parts = ["tagfind watch", f"frame {model.frames_seen}"]
    if snap is not None:
        if snap.taken_at is not None:
            parts.append(snap.taken_at.strftime("%Y-%m-%d %H:%M:%S"))
        parts.append(snap.source)
    parts += [f"sort: {what} {order}", f"pool: {model.pool_view}"]
    if model.include:
        parts.append("include: " + " ".join(model.include))
    if model.exclude:
        parts.append("exclude: " + " ".join(model.exclude))
    if model.paused:
        parts.append("PAUSED")
    return " | ".join(parts)


def _hint(model: WatchModel) -> str:
    if model.mode == PROMPT:
        word = "Include" if model.prompt_kind == "include" else "Exclude"
        return f"{word} tags (patterns, Enter applies, Esc cancels): {model.prompt_text}_"
    return "B T M A F D sort  ( ) change  P pool  E totals  I X filter  Space pause  H help  Q quit"


def _totals(model: WatchModel) -> str:
    sums = model.totals()
    return "   ".join(
        f"{name} total: Allocs {_number(t.allocs)}  Frees {_number(t.frees)}  Diff "
        f"{_number(t.diff)}  Bytes {_number(t.bytes)} ({t.delta_bytes:+,})"
        for name, t in (("Paged", sums["paged"]), ("Nonpaged", sums["nonpaged"])))


def run(model: WatchModel, next_frame: Callable[[], PoolSnapshot | None], interval: float,
        keys: KeyReader, console: Any = None) -> None:
    """Show frames from `next_frame` every `interval` seconds until Q, Esc or Ctrl-C. A
    source that is played out (None) leaves the last frame on screen."""
    rich = _rich()
    console = console or rich.console.Console()
    first = next_frame()
    if first is not None:
        model.push(first)

    def draw() -> Any:
        width, height = console.size
        return build_table(model, width, height)

    with rich.live.Live(draw(), console=console, screen=True, auto_refresh=False,
                        redirect_stdout=False, redirect_stderr=False) as live:
        due = time.monotonic() + interval
        while True:
            key = keys.read(min(REDRAW, max(0.0, due - time.monotonic())))
            if key is not None and not model.handle_key(key):
                return
            step, model.step_requested = model.step_requested, False
            if step or (time.monotonic() >= due and not model.paused):
                frame = next_frame()
                if frame is not None:
                    model.push(frame)
            if time.monotonic() >= due:
                due = time.monotonic() + interval
            live.update(draw(), refresh=True)
