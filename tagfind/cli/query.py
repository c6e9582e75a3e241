"""The query command (the group's default): which drivers use a tag, every tag of one driver,
the top pool consumers with their drivers (--top), or a rescan (--rebuild-index)."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from ..tags import is_pattern, str_to_tag, tag_to_str
from .errors import EXIT_FOUND, EXIT_NOTHING, Fatal, guarded
from .options import (
    OpenIndex,
    SourceOptions,
    load_pooltag_db,
    open_index,
    resolve_pool_file,
    source_options,
)
from .render import echo_nothing, index_json, shorten, stats_line

TOP_DEFAULT = 20  # rows when --pool-file or --diff come without --top
MAX_GLOB_CHARS = 4  # a glob matches 4-character tags: at most 4 characters besides '*'
_HEX_ANY_CASE = re.compile(r"^0[xX][0-9a-fA-F]{1,8}$")

EPILOG = """\b
Commands (each has --help):
  tagfind TAG [TAG...]         the drivers whose code uses these tags (this command)
  tagfind snapshot -o FILE     save the pool counters as JSON (--every 30m: one per reading)
  tagfind watch                a live poolmon view with a Driver column (--replay FILES)
  tagfind trend FILES...       which tag keeps growing over saved snapshots, and whose driver
  tagfind export --pooltag F   pooltag.txt lines for every tag with code evidence
  tagfind index export|import  share scan results between machines
  tagfind --version            the version

\b
Pool files (--pool-file, --diff, snapshot --from): a tagfind snapshot JSON, a poolmon /n
log or screen, WinDbg !poolused output, or sample:NAME for a sample shipped with tagfind
(sample:poolsnap.log, sample:drsd-before.txt, sample:drsd-after.txt).
--pool-file F and --diff OLD NEW without --top show the top 20.

\b
Globs ('Te*', 'Ip?e') match code evidence only; byte matches need an exact tag.
Environment: TAGFIND_INDEX is the index file when --index is not given (default: the user's
cache directory).
Exit codes: 0 found, 1 nothing found, 2 usage or environment error, 130 interrupted.
"""


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


class QueryCommand(click.Command):
    """The default command: its usage line is the group's (`tagfind [OPTIONS] [TAG]...`),
    since users never type `query`."""

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("tagfind", "[OPTIONS] [TAG]...")
        formatter.write_usage("tagfind", "snapshot|watch|trend|export|index ...",
                              prefix="       ")


@click.command("query", cls=QueryCommand, epilog=EPILOG,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("tags", nargs=-1)
@click.option("--driver", "driver", default=None, help="List every tag of one driver.")
@click.option("--top", type=click.IntRange(1, 100000), default=None,
              help="The top N pool consumers now, each with its driver(s).")
@click.option("--rebuild-index", is_flag=True, help="Rescan every file.")
@source_options
@click.option("--no-bytes", is_flag=True,
              help="Hide drivers that only contain the tag's bytes (no code evidence).")
@click.option("--pool-file", type=click.Path(dir_okay=False), default=None,
              help="Pool counters from a file instead of live (implies --top 20).")
@click.option("--diff", nargs=2, type=click.Path(dir_okay=False), default=None,
              help="Growth between two pool files, OLD NEW, leak suspects first "
                   "(implies --top 20).")
@click.option("--sort", "sort_key", default="bytes", show_default=True,
              type=click.Choice(["bytes", "diff", "allocs", "frees", "tag"]),
              help="With --top: the column to rank by (its growth with --diff).")
@click.option("--type", "pool_type", default=None, type=click.Choice(["paged", "nonpaged"]),
              help="With --top: only rows of this pool type.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (see docs/json.md).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV output.")
@click.option("-v", "--verbose", count=True, help="Show each site; name failed files.")
def query_cmd(tags: tuple[str, ...], **params: Any) -> None:
    """Which drivers use pool tag TAG (as poolmon shows it: 'Test', 'Irp ', globs 'Te*',
    hex 0x74736554)? Also: --top N, --driver NAME, --rebuild-index."""
    src = SourceOptions.from_params(params)
    opts = QueryOptions(tags=tags, **params)
    sys.exit(guarded(run_query, src, opts))


def _parse_tags(tags: Sequence[str]) -> tuple[list[int], list[str]]:
    exact, globs = [], []
    for text in tags:
        if is_pattern(text):
            globs.append(_check_glob(text))
            continue
        if _HEX_ANY_CASE.match(text) and len(text) > 4:
            text = "0x" + text[2:]  # 0XDEADBEEF as C writes it too
        try:
            exact.append(str_to_tag(text))
        except ValueError as exc:
            message = str(exc)
            if len(text) > 40:
                message = f"a tag has 1 to 4 characters, got {shorten(text)}"
            raise Fatal(message) from None
    return exact, globs


def _check_glob(pattern: str) -> str:
    """The pattern with runs of '*' made one; a pattern that cannot match a 4-character tag is
    refused (like a tag of 5 characters), before it reaches SQLite."""
    collapsed = re.sub(r"\*+", "*", pattern)
    if len(collapsed.replace("*", "")) > MAX_GLOB_CHARS:
        raise Fatal(f"a tag pattern has at most {MAX_GLOB_CHARS} characters besides '*', got "
                    f"{shorten(pattern)}")
    return collapsed


def _implied(opts: QueryOptions) -> QueryOptions:
    """--pool-file F and --diff OLD NEW alone mean the top 20 of those counters."""
    if opts.top is None and (opts.pool_file or opts.diff) and not opts.tags and not opts.driver:
        from dataclasses import replace

        return replace(opts, top=TOP_DEFAULT)
    return opts


def _check(opts: QueryOptions) -> None:
    if opts.as_json and opts.as_csv:
        raise Fatal("choose one of --json and --csv")
    if opts.diff and opts.tags:
        raise Fatal(f"--diff takes two files, OLD and NEW; {shorten(opts.tags[0])} after them "
                    "was taken as a tag")
    if sum(opts.modes) > 1:
        raise Fatal("give tags, --driver or --top, not several")
    if not any(opts.modes) and not opts.rebuild_index:
        raise Fatal("give a TAG, --driver NAME, --top N or --rebuild-index (see tagfind --help)")
    if opts.top is None and (opts.pool_file or opts.diff or opts.pool_type):
        raise Fatal("--pool-file, --diff and --type go with --top N")
    if opts.pool_file and opts.diff:
        raise Fatal("give --pool-file or --diff, not both")


def run_query(src: SourceOptions, opts: QueryOptions) -> int:
    opts = _implied(opts)
    _check(opts)
    exact, globs = _parse_tags(opts.tags)
    counters = _load_counters(opts) if opts.top is not None else None
    # Counters from a file make sense without drivers (a log from a ticket): the table then
    # shows pooltag.txt owners only.
    driverless = counters is not None and bool(opts.pool_file or opts.diff)
    # The stats are the result of --rebuild-index: printed once, on stdout.
    verbose_stats = opts.verbose if any(opts.modes) else 0
    early = _early_answer(src, exact, globs, opts)
    with open_index(src, rebuild=opts.rebuild_index, verbose=opts.verbose,
                    verbose_stats=verbose_stats, allow_no_sources=driverless,
                    first=early) as opened:
        if not any(opts.modes):
            if opts.as_json:
                click.echo(index_json(opened.stats))
            else:
                click.echo(stats_line(opened.stats))
            return EXIT_FOUND
        if counters is not None:
            return _run_top(opened, src, counters, opts)
        if early is not None and early.code is not None:
            return early.code  # answered during the refresh
        code = _run_tag_query(opened, src, exact, globs, opts)
        assert code is not None
        return code


def _early_answer(src: SourceOptions, exact: list[int], globs: list[str],
                  opts: QueryOptions) -> Any:
    """For exact tags alone: answer once the files that may hold them are indexed
    (cli/first.py); None for anything that needs the complete index."""
    if not exact or globs or opts.driver is not None or opts.top is not None \
            or opts.rebuild_index:
        return None
    from .first import EarlyAnswer

    return EarlyAnswer(tuple(exact), verbose=opts.verbose, run=lambda opened, partial: (
        _run_tag_query(opened, src, exact, globs, opts, partial)))


def _load_counters(opts: QueryOptions) -> Any:
    from ..pool import PoolSourceError
    from ..top import load_counters

    try:
        return load_counters(
            pool_file=resolve_pool_file(opts.pool_file) if opts.pool_file else None,
            diff=[resolve_pool_file(p) for p in opts.diff] if opts.diff else None)
    except PoolSourceError as exc:
        raise Fatal(str(exc)) from None


def _run_top(opened: OpenIndex, src: SourceOptions, counters: Any, opts: QueryOptions) -> int:
    from .. import report, top

    rows, meta, warnings = counters
    for warning in warnings:
        click.echo(f"tagfind: warning: {warning}", err=True)
    assert opts.top is not None
    chosen = top.select_rows(rows, opts.top, opts.sort_key, opts.pool_type)
    values = sorted({v for r in chosen if (v := top.tag_value(r.tag)) is not None})
    sites = []
    if opened.index is not None and values:
        sites = opened.index.sites(tags=values, files=opened.files)
    db = load_pooltag_db(src, {r.tag for r in chosen}, opened.index)
    top.attach_drivers(chosen, sites, db)
    report.mark_loaded((c for r in chosen for c in r.drivers), opened.loaded)
    if opts.as_json:
        click.echo(top.render_json(chosen, meta, drivers_indexed=opened.index is not None))
    elif opts.as_csv:
        click.echo(top.render_csv(chosen), nl=False)
    elif chosen:
        click.echo(top.render_table(chosen, verbose=bool(opts.verbose),
                                    growth=bool(opts.diff)))
        legend = top.loaded_legend(chosen, opened.loaded)
        if legend:
            click.echo(legend)
    if not chosen:
        click.echo(f"tagfind: {_why_no_rows(rows, opts)}", err=True)
    elif opened.note:
        click.echo(f"tagfind: {opened.note}", err=True)
    return EXIT_FOUND if chosen else EXIT_NOTHING


def _why_no_rows(rows: Sequence[Any], opts: QueryOptions) -> str:
    where = " ".join(opts.diff) if opts.diff else (opts.pool_file or "the live counters")
    if not rows:
        return f"no pool rows: {where} holds no counter rows"
    return f"no {opts.pool_type} pool rows among the {len(rows)} rows of {where}"


def _run_tag_query(opened: OpenIndex, src: SourceOptions, exact: list[int], globs: list[str],
                   opts: QueryOptions, partial: Any = None) -> int | None:
    """Answer a tag or driver query. With `partial` (cli/first.py) the index is not complete
    yet: the answer leaves out the files not indexed yet, which cannot hold the tags; None
    (nothing printed) when it needs them all."""
    from .. import report

    idx, files = opened.index, opened.files
    if partial is not None:
        files = [f for f in files if partial.answers_for(f)]
    if opts.driver is not None:
        site_rows = idx.sites_for_driver(opts.driver)
        if not site_rows and not idx.match_driver(opts.driver):
            because = f" ({opened.empty_reason})" if opened.empty_reason else ""
            raise Fatal(f"no indexed driver named {shorten(opts.driver)}{because}")
        byte_matches: list[Any] = []
    else:
        site_rows = idx.sites(tags=exact, files=files) if exact else []
        for pattern in globs:
            site_rows += idx.sites(tag_glob=pattern, files=files)
        if partial is not None and not set(exact) <= {s.tag for s in site_rows}:
            return None  # the run-time tag drivers are listed: they need every file
        byte_matches = [] if opts.no_bytes else _byte_matches(idx, exact, site_rows, partial)
    tags = {tag_to_str(s.tag) for s in site_rows if s.tag is not None}
    db = load_pooltag_db(src, tags | {tag_to_str(m.tag) for m in byte_matches}, idx)
    rows = report.tag_rows(site_rows, byte_matches, db)
    report.mark_loaded(rows, opened.loaded)
    unknown = report.unknown_site_counts(site_rows) if opts.driver is not None else {}
    proven = {r.tag_value for r in rows if r.evidence != "bytes"}
    unproven = [t for t in exact if t not in proven]
    runtime = report.runtime_tag_drivers(idx.runtime_tag_sites(files)) if unproven else []
    _emit(rows, opts, unknown, runtime)
    if not rows and not opts.as_json and not opts.as_csv:
        echo_nothing(opened.empty_reason, globs_only=bool(globs) and not exact)
    if runtime and not opts.as_json and not opts.as_csv:
        _echo_runtime_hint(unproven, runtime)
    return EXIT_FOUND if rows else EXIT_NOTHING


RUNTIME_HINT_LIMIT = 10  # drivers listed as the next place to look


def _echo_runtime_hint(tags: list[int], drivers: list[Any]) -> None:
    """No driver's code proves these tags: the drivers that choose tags at run time may
    allocate with them (a randomised tag, or one borrowed to hide the driver)."""
    shown = ", ".join(repr(tag_to_str(t)) for t in tags[:4])
    click.echo(f"No driver's code proves {shown}. Drivers whose pool calls take a tag chosen "
               "at run time, the next place to look:")
    for entry in drivers[:RUNTIME_HINT_LIMIT]:
        click.echo(f"  {entry.line()}")
    if len(drivers) > RUNTIME_HINT_LIMIT:
        click.echo(f"  ... and {len(drivers) - RUNTIME_HINT_LIMIT} more")


def _byte_matches(idx: Any, tags: list[int], site_rows: list[Any],
                  partial: Any = None) -> list[Any]:
    """Files holding a tag's 4 bytes among those without code evidence for it: the index's
    byte filters name the candidates, only those are read to confirm, and the answers are
    cached by content (asking again reads nothing)."""
    matches = []
    for tag in tags:
        with_code = {s.path for s in site_rows if s.tag == tag}
        found = idx.byte_matches(tag, exclude=with_code)
        if partial is not None:  # indexed paths that the refresh is yet to drop or rescan
            found = [m for m in found if partial.answers_for(m.path)]
        matches += found
    return matches


def _emit(rows: list[Any], opts: QueryOptions, unknown: dict[str, int],
          runtime: list[Any] = ()) -> None:
    from dataclasses import asdict

    from .. import report

    if opts.as_json:
        click.echo(report.render_json(rows, {
            "unproven_tag_calls": unknown,
            "runtime_tag_drivers": [asdict(d) for d in runtime]}))
    elif opts.as_csv:
        click.echo(report.render_csv(rows), nl=False)
    elif rows:
        click.echo(report.render_table(rows, verbose=bool(opts.verbose)))
    for path, count in unknown.items():
        if not opts.as_json:
            click.echo(f"tagfind: {report.driver_name(path)}: {count} pool call(s) whose tag "
                       "could not be proven from the code", err=True)
