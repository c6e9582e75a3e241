"""The progress bar of a refresh: tqdm on stderr when it is a terminal (or when asked),
otherwise nothing (and tqdm is not imported)."""

from __future__ import annotations

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

    return _Bar(total=total, desc=what, unit="file", file=sys.stderr, leave=False)
