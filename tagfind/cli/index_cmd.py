"""`tagfind index export FILE` / `tagfind index import FILE`: share scan results between
machines, keyed by content hash and scanner version (tagfind/index/share.py)."""

from __future__ import annotations

from typing import Any

import click

from .errors import Fatal
from .options import SourceOptions, open_index, source_options


@click.group("index", context_settings={"help_option_names": ["-h", "--help"]})
def index_group() -> None:
    """Share the index: export its scan results, import another machine's."""


@index_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@source_options
@click.option("-v", "--verbose", count=True, help="Name failed files.")
def export_cmd(file: str, verbose: int, **params: Any) -> None:
    """Refresh the index, then write its scan results to FILE (SQLite)."""
    from ..index.share import ShareError, export_index

    src = SourceOptions.from_params(params)
    with open_index(src, verbose=verbose) as opened:
        try:
            stats = export_index(opened.index.conn, file)
        except ShareError as exc:
            raise Fatal(str(exc)) from None
    click.echo(f"exported {stats.contents} scanned file content(s), {stats.sites} site(s)"
               f" to {file}")


@index_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@source_options
def import_cmd(file: str, **params: Any) -> None:
    """Merge FILE (from `tagfind index export`) into the index: files with that content are
    not scanned here. Rows of another scanner version are ignored."""
    from .. import index as index_mod
    from ..index.share import ShareError, import_index

    src = SourceOptions.from_params(params)
    path = src.index_path or index_mod.default_index_path()
    try:
        with index_mod.Index(path) as idx:
            result = import_index(idx.conn, file)
    except ShareError as exc:
        raise Fatal(str(exc)) from None
    except index_mod.IndexUnavailable as exc:
        raise Fatal(str(exc)) from None
    click.echo(f"imported {result.contents} content(s), {result.sites} site(s) from"
               f" {result.origin}; {result.other_version} of another scanner version ignored,"
               f" {result.already_scanned} already scanned here")
