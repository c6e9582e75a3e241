"""`tagfind snapshot`: save the pool counters (live, or converted from logs) as JSON; with
--every/--count, a timestamped file per reading into a folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import EXIT_FOUND, Fatal, guarded, os_error_text
from .options import resolve_pool_file

# Where live counters cannot be read, snapshot converts a log instead (its --from).
FROM_HINT = "use --from with a poolmon log or !poolused output"


@click.command("snapshot", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Where to write the snapshot (JSON); a folder with --every or several --from.")
@click.option("--from", "from_files", multiple=True, type=click.Path(dir_okay=False),
              help="Convert a poolmon log or !poolused output (or sample:NAME) instead of "
                   "reading live (repeatable; every run of an appended log is kept).")
@click.option("--every", default=None, help="Read live every INTERVAL (30s, 30m, 2h) into -o DIR.")
@click.option("--count", type=click.IntRange(1, 1000000), default=None,
              help="With --every: how many readings (default: until Ctrl-C).")
def snapshot_cmd(output: str, from_files: tuple[str, ...], every: str | None,
                 count: int | None) -> None:
    """Save the pool counters (live, or from logs) as JSON snapshots for --pool-file, --diff,
    trend and watch --replay."""
    sys.exit(guarded(_snapshot, output, from_files, every, count))


def _snapshot(output: str, from_files: tuple[str, ...], every: str | None,
              count: int | None) -> int:
    from ..pool import PoolSourceError
    from ..pool.live import NO_LIVE_HINT

    if every and from_files:
        raise Fatal("give --every (live) or --from FILE, not both")
    if count is not None and not every:
        raise Fatal("--count goes with --every")
    from_files = tuple(resolve_pool_file(f) for f in from_files)
    try:
        if every:
            _periodic(output, every, count)
        elif len(from_files) > 1 or (from_files and Path(output).is_dir()):
            _convert_many(from_files, output)
        else:
            _one(output, from_files[0] if from_files else None)
    except PoolSourceError as exc:
        raise Fatal(str(exc).replace(NO_LIVE_HINT, FROM_HINT)) from None
    except OSError as exc:
        raise Fatal(f"cannot write {output}: {os_error_text(exc)}") from None
    return EXIT_FOUND


def _one(output: str, from_file: str | None) -> None:
    from ..pool import load_pool_file, save_snapshot

    snap = load_pool_file(from_file) if from_file else _live()
    save_snapshot(snap, output)
    click.echo(f"saved {len(snap.rows)} pool rows to {output}")


def _convert_many(from_files: tuple[str, ...], output: str) -> None:
    """Each run of each file into the folder `output`, numbered in the order given (poolmon
    text carries no time, so the order is all a later trend has)."""
    from ..pool import load_pool_runs, save_snapshot

    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    number = 0
    for path in from_files:
        for run in load_pool_runs(path):
            number += 1
            target = folder / f"{number:04d}-{Path(path).stem}.json"
            save_snapshot(run, target)
            click.echo(f"saved {len(run.rows)} pool rows to {target}")


def _periodic(output: str, every: str, count: int | None) -> None:
    from ..pool.capture import capture_every, parse_duration

    try:
        seconds = parse_duration(every)
    except ValueError as exc:
        raise Fatal(str(exc)) from None
    _live()  # a machine without live counters fails now, not after the first wait

    def saved(path: Path, snap: object) -> None:
        click.echo(f"saved {len(snap.rows)} pool rows to {path}")  # type: ignore[attr-defined]

    try:
        capture_every(_live, output, seconds, count or 10**9, on_saved=saved)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)


def _live() -> object:
    from ..pool import read_live_pool
    from ..pool.machine import with_identity

    snap = with_identity(read_live_pool())
    _record_live_extras(snap)
    return snap


def _record_live_extras(snap) -> None:
    """A live snapshot also records the big pool per tag and the loaded module list (so
    --modules-file can read it later); either may be unavailable without failing the rest."""
    from ..modules import ModulesError, read_loaded_modules
    from ..pool import PoolSourceError
    from ..pool.bigpool import read_live_bigpool

    try:
        snap.big_pool = read_live_bigpool()
    except PoolSourceError as exc:
        click.echo(f"tagfind: warning: big pool not recorded: {exc}", err=True)
    try:
        snap.modules = read_loaded_modules()
    except ModulesError as exc:
        click.echo(f"tagfind: warning: module list not recorded: {exc}", err=True)
