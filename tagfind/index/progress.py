"""The progress bar of a refresh: tqdm on stderr when it is a terminal (or when asked),
otherwise nothing (and tqdm is not imported)."""

from __future__ import annotations

import os
import sys


def _want_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _bar(show: bool, total: int, what: str):
    if not show or total < 2:
        return _NoBar()
    from tqdm import tqdm

    class _Bar(tqdm):
        # No monitor thread (it only retunes the redraw rate of a stalled bar): with a second
        # thread alive, the scanning workers could not be forks of this process (workers.py).
        monitor_interval = 0

    return _Bar(total=total, desc=what, unit="file", file=sys.stderr, leave=False,
                **_size_unknown(sys.stderr))


def _size_unknown(stream) -> dict[str, int]:
    """tqdm's size for a terminal that reports 0 columns or rows (a fresh pty, a serial
    console, some remote shells): tqdm 4.70 takes a reported 0 as -1 and then draws nothing at
    all. 0 columns: the counts without the meter; rows: tqdm's own guess when it has none."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return {}
    unknown: dict[str, int] = {}
    if size.columns <= 0:
        unknown["ncols"] = 0
    if size.lines <= 0:
        unknown["nrows"] = 20
    return unknown
