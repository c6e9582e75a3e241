"""`tagfind export --pooltag FILE`: the tags proven from driver code, as pooltag.txt lines."""

from __future__ import annotations

from typing import Any

import click

from .errors import EXIT_FOUND, EXIT_NOTHING, Fatal
from .options import SourceOptions, open_index, source_options


@click.command("export", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--pooltag", "output", required=True, type=click.Path(dir_okay=False),
              help="pooltag.txt-format file to write (Tag - driver.sys - evidence).")
@click.option("--merge-with", type=click.Path(dir_okay=False, exists=True), default=None,
              help="An existing pooltag.txt to keep and add to, without duplicate lines.")
@source_options(pooltag_input=False)
@click.option("-v", "--verbose", count=True, help="Name failed files.")
def export_cmd(output: str, merge_with: str | None, verbose: int, **params: Any) -> None:
    """Write every tag with code evidence as pooltag.txt lines, for poolmon /g, PoolMonX,
    System Informer and WinDbg's !poolused."""
    from ..export import export_pooltag

    src = SourceOptions.from_params(params)
    with open_index(src, verbose=verbose) as opened:
        sites = opened.index.sites(files=opened.files)
    try:
        result = export_pooltag(sites, output, merge_with=merge_with)
    except OSError as exc:
        raise Fatal(f"cannot write {output}: {exc.strerror or exc}") from None
    note = f", {result.already_listed} already listed" if merge_with else ""
    if result.not_representable:
        note += f", {result.not_representable} tag(s) pooltag.txt cannot carry left out"
    click.echo(f"wrote {result.written} tag line(s) to {output}{note}")
    raise SystemExit(EXIT_FOUND if result.written or result.already_listed else EXIT_NOTHING)
