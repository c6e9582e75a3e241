"""The source and index options every command shares, as one frozen dataclass, and opening the
refreshed index from them: query, --top and any later command get their Driver column from
the same index, refreshed with the same options."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from .errors import Fatal
from .render import echo_refresh_stats

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class SourceOptions:
    """Where the drivers are and where their index lives."""

    root: str | None
    drivers: tuple[str, ...]
    all_pe: bool
    index_path: str | None
    jobs: int | None
    timeout: float
    pooltag_files: tuple[str, ...]

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SourceOptions:
        """Take this dataclass's fields out of click's parsed parameters (removing them)."""
        return cls(root=params.pop("root"), drivers=tuple(params.pop("drivers")),
                   all_pe=params.pop("all_pe"), index_path=params.pop("index_path"),
                   jobs=params.pop("jobs"), timeout=params.pop("timeout"),
                   pooltag_files=tuple(params.pop("pooltag_files")))


_SOURCE_OPTIONS = [
    click.option("--root", type=click.Path(file_okay=False), default=None,
                 help="A mounted or copied Windows tree to scan instead of this system."),
    click.option("--drivers", "drivers", multiple=True, type=click.Path(file_okay=False),
                 help="A folder of drivers to scan (repeatable)."),
    click.option("--all-pe", is_flag=True,
                 help="Scan every PE file in the folders, not only kernel-mode ones."),
    click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None,
                 help="Index file (default: in the user's cache directory)."),
    click.option("--jobs", type=click.IntRange(1, 256), default=None,
                 help="Parallel scan processes (default: all cores)."),
    click.option("--timeout", type=click.FloatRange(0.1, 3600), default=60.0,
                 show_default=True, help="Per-file scan time limit in seconds."),
    click.option("--pooltag", "pooltag_files", multiple=True, type=click.Path(dir_okay=False),
                 help="Extra pooltag.txt-style file (repeatable; takes priority)."),
]


def source_options(func: F) -> F:
    """Add the shared source/index options to a click command."""
    for option in reversed(_SOURCE_OPTIONS):
        func = option(func)
    return func


@dataclass
class OpenIndex:
    """An index refreshed against the files of the sources."""

    index: Any
    files: list[str]
    stats: Any


@contextmanager
def open_index(src: SourceOptions, *, rebuild: bool = False,
               verbose: int = 0) -> Iterator[OpenIndex]:
    """Discover the source files, open the index and refresh it; index warnings (a damaged
    file found and rebuilt) are printed once when the block ends."""
    from .. import index as index_mod
    from .. import sources

    try:
        source_set = sources.discover(root=src.root, drivers=src.drivers, all_pe=src.all_pe)
    except sources.SourcesError as exc:
        raise Fatal(str(exc)) from None
    if verbose:
        for path, reason in source_set.skipped:
            click.echo(f"tagfind: skipped {path}: {reason}", err=True)
    index_path = src.index_path or index_mod.default_index_path()
    try:
        with index_mod.Index(index_path) as idx:
            try:
                stats = idx.refresh(source_set.files, rebuild=rebuild, jobs=src.jobs,
                                    timeout=src.timeout)
                echo_refresh_stats(stats, verbose)
                yield OpenIndex(idx, source_set.files, stats)
            finally:
                for warning in dict.fromkeys(idx.warnings):
                    click.echo(f"tagfind: warning: {warning}", err=True)
    except index_mod.IndexUnavailable as exc:
        raise Fatal(str(exc)) from None


def load_pooltag_db(src: SourceOptions, tags: set[str]) -> Any:
    """pooltag.txt facts for these tags (shipped list, the user's copies, --pooltag files)."""
    from ..pooltag import load_db

    try:
        return load_db(src.pooltag_files, root=src.root, only_tags=sorted(tags))
    except ValueError as exc:
        raise Fatal(str(exc)) from None
