"""A cold query's early answer: `tagfind TAG` on an index with files to scan answers once the
files that may hold the tag are indexed (index/first.py), then the refresh finishes the rest.

Only exact tags answer early: --driver, --top, globs and --rebuild-index need the complete
index. The answer is the one the complete index gives; when it could differ (no code proves
a queried tag, so the drivers that choose tags at run time are listed, and that list needs
every file) the query declines and answers after the refresh.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import click


class Partial(NamedTuple):
    """The index as it is when the early answer is asked: every listed path (`listed`) but
    those in `unindexed` is indexed with its current content."""

    listed: frozenset[str]
    unindexed: frozenset[str]

    def answers_for(self, path: str) -> bool:
        path = os.path.abspath(path)
        return path in self.listed and path not in self.unindexed


@dataclass
class EarlyAnswer:
    """The FirstAnswer (index/first.py) of a tag query. `run(opened, partial)` answers and
    returns the exit code, or None to decline; `code` is the code once answered."""

    tags: tuple[int, ...]
    run: Callable[[Any, Partial], int | None]
    verbose: int = 0
    code: int | None = None
    opened: Any = None
    listed: frozenset[str] = field(default_factory=frozenset)

    @property
    def answered(self) -> bool:
        return self.code is not None

    def bind(self, opened: Any, listed: Sequence[str]) -> None:
        """The open index and the files it is refreshed against (options.open_index)."""
        self.opened = opened
        self.listed = frozenset(os.path.abspath(p) for p in listed)

    def answer(self, unindexed: frozenset[str]) -> None:
        if self.code is not None:
            return
        self.code = self.run(self.opened, Partial(self.listed, unindexed))
        if self.verbose:
            state = "answered" if self.code is not None else "not answered (needs every file)"
            click.echo(f"tagfind: {state} after scanning the files that may hold the tag; "
                       f"{len(unindexed)} file(s) that cannot hold it are indexed next", err=True)
