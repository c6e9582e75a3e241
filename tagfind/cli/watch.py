"""`tagfind watch`: poolmon's live view with a Driver column from the index; `--replay FILE...`
plays saved snapshots, poolmon logs and pasted screens as successive frames on any OS."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import click

from .errors import EXIT_FOUND, Fatal
from .options import SourceOptions, load_pooltag_db, open_index, source_options
from .sitelookup import sites_by_tag

_SORT_LETTERS = {"bytes": "b", "tag": "t", "per-alloc": "m", "allocs": "a", "frees": "f",
                 "diff": "d"}


@dataclass(frozen=True)
class WatchOptions:
    files: tuple[str, ...]
    replay: bool
    interval: float
    top: int | None
    sort_key: str
    pool_type: str | None
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    totals: bool


@click.command("watch", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--replay", is_flag=True,
              help="Play FILES (snapshots, poolmon logs or screens) as frames instead of live.")
@click.option("--interval", type=click.FloatRange(0.05, 3600), default=2.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--top", type=click.IntRange(1, 100000), default=None,
              help="Show only the first N rows.")
@click.option("--sort", "sort_key", default="bytes", show_default=True,
              type=click.Choice(list(_SORT_LETTERS)))
@click.option("--type", "pool_type", default=None, type=click.Choice(["paged", "nonpaged"]))
@click.option("--include", multiple=True, help="Only tags matching (like poolmon /i; * ?).")
@click.option("--exclude", multiple=True, help="Hide tags matching (like poolmon /x).")
@click.option("--totals", is_flag=True, help="Start with the totals line shown (key E).")
@source_options
def watch_cmd(**params: Any) -> None:
    """A live poolmon view, each tag with its driver(s). Keys as in poolmon: P B T M A F D
    ( ) E I X, Space pauses, Enter shows evidence, Q quits; H for help."""
    src = SourceOptions.from_params(params)
    opts = WatchOptions(**params)
    try:
        sys.exit(run_watch(src, opts))
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        sys.exit(EXIT_FOUND)  # Ctrl-C is how people leave poolmon, too
    except Exception as exc:  # the user gets one line, never a traceback
        raise Fatal(f"{type(exc).__name__}: {exc}") from None


def run_watch(src: SourceOptions, opts: WatchOptions) -> int:
    from ..pool import PoolSourceError, load_pool_runs
    from ..watch.keys import terminal_keys
    from ..watch.model import WatchModel, frames_from
    from ..watch.screen import WatchUnavailable, _rich, run

    if opts.files and not opts.replay:
        raise Fatal("files go with --replay (tagfind watch --replay F1 F2 ...)")
    if opts.replay and not opts.files:
        raise Fatal("--replay needs the files to play")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise Fatal("watch needs a terminal; for a table use tagfind --top N")
    try:
        _rich()
        if opts.replay:
            frames = [run for path in opts.files for run in load_pool_runs(path)]
            next_frame = frames_from(frames)
            tags: set[str] | None = {row.tag for snap in frames for row in snap.rows}
        else:
            first = [_live_frame(warn=True)]  # fails here, with its message, not in the screen
            next_frame = lambda: first.pop() if first else _live_frame()  # noqa: E731
            tags = None
    except (PoolSourceError, WatchUnavailable) as exc:
        raise Fatal(str(exc)) from None
    with open_index(src, allow_no_sources=bool(opts.replay)) as opened:
        db = load_pooltag_db(src, tags) if tags is not None else _full_db(src)
        model = WatchModel(resolver=lambda new: sites_by_tag(opened, new),
                           owner_text=lambda tag: _owner(db, tag), top=opts.top,
                           include=list(opts.include), exclude=list(opts.exclude),
                           show_totals=opts.totals, pool_view=opts.pool_type or "both")
        model.sort_by(_SORT_LETTERS[opts.sort_key])
        try:
            with terminal_keys() as keys:
                run(model, next_frame, opts.interval, keys)
        except PoolSourceError as exc:
            raise Fatal(str(exc)) from None
    return EXIT_FOUND


def _live_frame(warn: bool = False) -> Any:
    """A live reading with the big pool table (the Big columns); a big pool that cannot be
    read leaves them out, said once before the screen opens."""
    from ..pool import read_live_pool
    from ..pool.bigpool import with_live_big_pool

    snap = read_live_pool()
    for warning in with_live_big_pool(snap):
        if warn:
            click.echo(f"tagfind: warning: {warning}", err=True)
    return snap


def _full_db(src: SourceOptions) -> Any:
    from ..pooltag import load_db

    try:
        return load_db(src.pooltag_files, root=src.root)
    except ValueError as exc:
        raise Fatal(str(exc)) from None


def _owner(db: Any, tag: str) -> str | None:
    from ..report import pooltag_facts

    return pooltag_facts(db, tag)[0]
