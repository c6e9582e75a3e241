"""The query command (the group's default): which drivers use a tag, every tag of one driver,
the top pool consumers with their drivers (--top), or a rescan (--rebuild-index)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from ..tags import is_pattern, str_to_tag, tag_to_str
from .errors import EXIT_FOUND, EXIT_NOTHING, Fatal
from .options import OpenIndex, SourceOptions, load_pooltag_db, open_index, source_options
from .render import stats_line


@dataclass(frozen=True)
class QueryOptions:
    """What to ask and how to print it."""

    tags: tuple[str, ...]
    driver: str | None
    top: int | None
    rebuild_index: bool
    no_bytes: bool
    pool_file: str | None
    diff: tuple[str, str] | None
    sort_key: str
    pool_type: str | None
    as_json: bool
    as_csv: bool
    verbose: int

    @property
    def modes(self) -> list[bool]:
        return [bool(self.tags), self.driver is not None, self.top is not None]


@click.command("query", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("tags", nargs=-1)
@click.option("--driver", "driver", default=None, help="List every tag of one driver.")
@click.option("--top", type=click.IntRange(1, 100000), default=None,
              help="The top N pool consumers now, each with its driver(s).")
@click.option("--rebuild-index", is_flag=True, help="Rescan every file.")
@source_options
@click.option("--no-bytes", is_flag=True,
              help="Hide drivers that only contain the tag's bytes (no code evidence).")
@click.option("--pool-file", type=click.Path(dir_okay=False), default=None,
              help="With --top: a saved snapshot or poolmon/!poolused log instead of live.")
@click.option("--diff", nargs=2, type=click.Path(dir_okay=False), default=None,
              help="With --top: growth between two snapshots or logs (OLD NEW).")
@click.option("--sort", "sort_key", default="bytes", show_default=True,
              type=click.Choice(["bytes", "diff", "allocs", "frees", "tag"]))
@click.option("--type", "pool_type", default=None, type=click.Choice(["paged", "nonpaged"]))
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV output.")
@click.option("-v", "--verbose", count=True, help="Show each site; name failed files.")
def query_cmd(tags: tuple[str, ...], **params: Any) -> None:
    """Which drivers use pool tag TAG (as poolmon shows it: 'Test', 'Irp ', globs 'Te*',
    hex 0x74736554)? Also: --top N, --driver NAME, --rebuild-index, `tagfind snapshot`."""
    src = SourceOptions.from_params(params)
    opts = QueryOptions(tags=tags, **params)
    try:
        code = run_query(src, opts)
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        raise Fatal("interrupted") from None
    except Exception as exc:  # the user gets one line, never a traceback
        raise Fatal(f"{type(exc).__name__}: {exc}") from None
    sys.exit(code)


def _parse_tags(tags: Sequence[str]) -> tuple[list[int], list[str]]:
    exact, globs = [], []
    for text in tags:
        if is_pattern(text):
            globs.append(text)
            continue
        try:
            exact.append(str_to_tag(text))
        except ValueError as exc:
            raise Fatal(str(exc)) from None
    return exact, globs


def _check(opts: QueryOptions) -> None:
    if opts.as_json and opts.as_csv:
        raise Fatal("choose one of --json and --csv")
    if sum(opts.modes) > 1:
        raise Fatal("give tags, --driver or --top, not several")
    if not any(opts.modes) and not opts.rebuild_index:
        raise Fatal("give a TAG, --driver NAME, --top N or --rebuild-index (see --help)")
    if opts.top is None and (opts.pool_file or opts.diff or opts.pool_type):
        raise Fatal("--pool-file, --diff and --type go with --top N")
    if opts.pool_file and opts.diff:
        raise Fatal("give --pool-file or --diff, not both")


def run_query(src: SourceOptions, opts: QueryOptions) -> int:
    _check(opts)
    exact, globs = _parse_tags(opts.tags)
    counters = _load_counters(opts) if opts.top is not None else None
    with open_index(src, rebuild=opts.rebuild_index, verbose=opts.verbose) as opened:
        if not any(opts.modes):
            click.echo(stats_line(opened.stats))
            return EXIT_FOUND
        if counters is not None:
            return _run_top(opened, src, counters, opts)
        return _run_tag_query(opened, src, exact, globs, opts)


def _load_counters(opts: QueryOptions) -> Any:
    from ..pool import PoolSourceError
    from ..top import load_counters

    try:
        return load_counters(pool_file=opts.pool_file, diff=opts.diff)
    except PoolSourceError as exc:
        raise Fatal(str(exc)) from None


def _run_top(opened: OpenIndex, src: SourceOptions, counters: Any, opts: QueryOptions) -> int:
    from .. import top

    rows, meta, warnings = counters
    for warning in warnings:
        click.echo(f"tagfind: warning: {warning}", err=True)
    assert opts.top is not None
    chosen = top.select_rows(rows, opts.top, opts.sort_key, opts.pool_type)
    values = sorted({v for r in chosen if (v := top.tag_value(r.tag)) is not None})
    sites = opened.index.sites(tags=values, files=opened.files) if values else []
    db = load_pooltag_db(src, {r.tag for r in chosen})
    top.attach_drivers(chosen, sites, db)
    if opts.as_json:
        click.echo(top.render_json(chosen, meta))
    elif opts.as_csv:
        click.echo(top.render_csv(chosen), nl=False)
    else:
        click.echo(top.render_table(chosen, verbose=bool(opts.verbose),
                                    growth=bool(opts.diff)))
    return EXIT_FOUND if chosen else EXIT_NOTHING


def _run_tag_query(opened: OpenIndex, src: SourceOptions, exact: list[int], globs: list[str],
                   opts: QueryOptions) -> int:
    from .. import report

    idx, files = opened.index, opened.files
    if opts.driver is not None:
        site_rows = idx.sites_for_driver(opts.driver)
        if not site_rows and not idx.match_driver(opts.driver):
            raise Fatal(f"no indexed driver named {opts.driver!r}")
        byte_matches: list[Any] = []
    else:
        site_rows = idx.sites(tags=exact, files=files) if exact else []
        for pattern in globs:
            site_rows += idx.sites(tag_glob=pattern, files=files)
        byte_matches = [] if opts.no_bytes else _byte_matches(idx, exact, site_rows)
    tags = {tag_to_str(s.tag) for s in site_rows if s.tag is not None}
    db = load_pooltag_db(src, tags | {tag_to_str(m.tag) for m in byte_matches})
    rows = report.tag_rows(site_rows, byte_matches, db)
    unknown = report.unknown_site_counts(site_rows) if opts.driver is not None else {}
    _emit(rows, opts, unknown)
    return EXIT_FOUND if rows else EXIT_NOTHING


def _byte_matches(idx: Any, tags: list[int], site_rows: list[Any]) -> list[Any]:
    """Files holding a tag's 4 bytes among those without code evidence for it: the index's
    byte filters name the candidates, and only those are read to confirm."""
    from ..bytematch import find_byte_matches

    matches = []
    for tag in tags:
        with_code = {s.path for s in site_rows if s.tag == tag}
        matches += find_byte_matches(idx.byte_candidates(tag, exclude=with_code), [tag])
    return matches


def _emit(rows: list[Any], opts: QueryOptions, unknown: dict[str, int]) -> None:
    from .. import report

    if opts.as_json:
        click.echo(report.render_json(rows, {"unproven_tag_calls": unknown}))
    elif opts.as_csv:
        click.echo(report.render_csv(rows), nl=False)
    elif rows:
        click.echo(report.render_table(rows, verbose=bool(opts.verbose)))
    for path, count in unknown.items():
        if not opts.as_json:
            click.echo(f"{report.driver_name(path)}: {count} pool call(s) whose tag could not "
                       "be proven from the code", err=True)
    if not rows and not opts.as_json and not opts.as_csv:
        click.echo("no driver found for that query", err=True)
