"""`tagfind snapshot`: save the pool counters (live, or converted from a log) as JSON."""

from __future__ import annotations

import sys

import click

from .errors import EXIT_FOUND, Fatal, guarded, os_error_text
from .options import resolve_pool_file

# Where live counters cannot be read, snapshot converts a log instead (its --from).
FROM_HINT = "use --from with a poolmon log or !poolused output"


@click.command("snapshot", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the snapshot (JSON).")
@click.option("--from", "from_file", type=click.Path(dir_okay=False), default=None,
              help="Convert a poolmon log or !poolused output (or sample:NAME) instead of "
                   "reading live.")
def snapshot_cmd(output: str, from_file: str | None) -> None:
    """Save the pool counters (live, or from a log) as a JSON snapshot for --pool-file and
    --diff."""
    sys.exit(guarded(_snapshot, output, from_file))


def _snapshot(output: str, from_file: str | None) -> int:
    from ..pool import PoolSourceError, load_pool_file, read_live_pool, save_snapshot
    from ..pool.live import NO_LIVE_HINT

    try:
        snap = load_pool_file(resolve_pool_file(from_file)) if from_file else read_live_pool()
    except PoolSourceError as exc:
        raise Fatal(str(exc).replace(NO_LIVE_HINT, FROM_HINT)) from None
    try:
        save_snapshot(snap, output)
    except PoolSourceError as exc:
        raise Fatal(str(exc)) from None
    except OSError as exc:
        raise Fatal(f"cannot write {output}: {os_error_text(exc)}") from None
    click.echo(f"saved {len(snap.rows)} pool rows to {output}")
    return EXIT_FOUND
