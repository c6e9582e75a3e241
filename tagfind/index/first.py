"""The first answer of a refresh with files to scan: scan first the files whose bytes can hold
the queried tags (holds.py), let the caller answer from the index as it then stands, and
leave the rest to the refresh, which goes on as usual.

The answer's caller is told which listed paths are not indexed yet (or hold old content, or
vanished): none of them can hold the tags, so the complete index will have no site and no
byte match of these tags in them, and the answer excludes them. What needs every file (the
drivers that choose tags at run time, when no code proves a tag) is the caller's to see: it
declines to answer, and answers after the refresh instead.

Every write is the refresh's own (short transactions, files with their contents): an
interrupt after the answer leaves an index that holds the candidates, and the next refresh
scans the rest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .refresh import _Pending, _Refresh


IN_PROCESS_BYTES = 1 << 20  # candidates this large in all (about 0.5 s of scanning) scan here


class FirstAnswer(Protocol):
    """What a refresh calls once the candidate files are indexed."""

    tags: Sequence[int]
    answered: bool  # once true, later refreshes (a rebuild after damage) ask no more

    def answer(self, unindexed: frozenset[str]) -> None:
        """Answer from the index, leaving out the listed paths `unindexed`; or decline, by
        leaving `answered` false."""


def scan_candidates_first(
    refresh: _Refresh, to_scan: dict[str, list[_Pending]], gone: set[str], first: FirstAnswer
) -> dict[str, list[_Pending]]:
    """Scan the contents of `to_scan` that may hold the tags, then ask `first` to answer.
    Returns what is left to scan. When every content may hold them, answering first would
    gain nothing: nothing is scanned here and all of `to_scan` is returned."""
    if first.answered or not first.tags:
        return to_scan
    from ..holds import file_may_hold

    shas = list(to_scan)
    with ThreadPoolExecutor(max_workers=max(1, min(refresh.jobs, 4))) as pool:
        holds = list(pool.map(lambda sha: file_may_hold(to_scan[sha][0].path, first.tags),
                              shas))
    candidates = {sha: to_scan[sha] for sha, yes in zip(shas, holds, strict=True) if yes}
    rest = {sha: to_scan[sha] for sha, yes in zip(shas, holds, strict=True) if not yes}
    refresh.stats.first_candidates = len(candidates)
    if not rest:
        return to_scan
    if candidates:
        # Worker processes take longer to start than a few small files take to scan here.
        size = sum(items[0].size for items in candidates.values())
        refresh._scan_and_store(candidates, few=size <= IN_PROCESS_BYTES)
    unindexed = set(gone)
    unindexed.update(item.path for items in rest.values() for item in items)
    first.answer(frozenset(os.path.abspath(p) for p in unindexed))
    return rest
