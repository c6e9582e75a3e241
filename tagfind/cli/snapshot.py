"""`tagfind snapshot`: save the pool counters (live, or converted from a log) as JSON."""

from __future__ import annotations

import click

from .errors import Fatal


@click.command("snapshot", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the snapshot (JSON).")
@click.option("--from", "from_file", type=click.Path(dir_okay=False), default=None,
              help="Convert a poolmon log or !poolused output instead of reading live.")
def snapshot_cmd(output: str, from_file: str | None) -> None:
    """Save the pool counters (live, or from a log) as a JSON snapshot for --pool-file and
    --diff."""
    from ..pool import PoolSourceError, load_pool_file, read_live_pool, save_snapshot

    try:
        snap = load_pool_file(from_file) if from_file else read_live_pool()
        if not from_file:
            _record_live_extras(snap)
        save_snapshot(snap, output)
    except PoolSourceError as exc:
        raise Fatal(str(exc)) from None
    except OSError as exc:
        raise Fatal(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"saved {len(snap.rows)} pool rows to {output}")


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
