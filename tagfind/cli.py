"""The command line: parse options, call sources/index/report (and pool for --top), render.

Exit codes: 0 something found, 1 nothing found, 2 usage or environment error. Every error
is one line on stderr; no traceback reaches the user.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from . import __version__
from .tags import is_pattern, str_to_tag, tag_to_str

EXIT_FOUND, EXIT_NOTHING, EXIT_ERROR = 0, 1, 2


class Fatal(click.ClickException):
    """A one-line error with exit code 2."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"tagfind: error: {self.format_message()}", err=True)


class DefaultGroup(click.Group):
    """`tagfind TAG...` runs the query; `tagfind snapshot ...` runs a subcommand. Tags have at
    most 4 characters, so they never collide with a subcommand name."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] != "--version"):
            args = ["query", *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        query = self.commands["query"]
        with click.Context(query, info_name=ctx.info_name, parent=None) as sub:
            query.format_help(sub, formatter)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tagfind")
def cli() -> None:
    """tagfind: which driver allocates kernel pool with this tag?"""


def _source_options(func: Any) -> Any:
    options = [
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
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command("query", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("tags", nargs=-1)
@click.option("--driver", "driver", default=None, help="List every tag of one driver.")
@click.option("--top", type=click.IntRange(1, 100000), default=None,
              help="The top N pool consumers now, each with its driver(s).")
@click.option("--rebuild-index", is_flag=True, help="Rescan every file.")
@_source_options
@click.option("--pooltag", "pooltag_files", multiple=True, type=click.Path(dir_okay=False),
              help="Extra pooltag.txt-style file (repeatable; takes priority).")
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
def query_cmd(tags: tuple[str, ...], **opts: Any) -> None:
    """Which drivers use pool tag TAG (as poolmon shows it: 'Test', 'Irp ', globs 'Te*',
    hex 0x74736554)? Also: --top N, --driver NAME, --rebuild-index, `tagfind snapshot`."""
    try:
        code = _run_query(tags, opts)
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


def _run_query(tags: Sequence[str], opts: dict[str, Any]) -> int:
    if opts["as_json"] and opts["as_csv"]:
        raise Fatal("choose one of --json and --csv")
    modes = [bool(tags), opts["driver"] is not None, opts["top"] is not None]
    if sum(modes) > 1:
        raise Fatal("give tags, --driver or --top, not several")
    if not any(modes) and not opts["rebuild_index"]:
        raise Fatal("give a TAG, --driver NAME, --top N or --rebuild-index (see --help)")
    if opts["top"] is None and (opts["pool_file"] or opts["diff"] or opts["pool_type"]):
        raise Fatal("--pool-file, --diff and --type go with --top N")
    if opts["pool_file"] and opts["diff"]:
        raise Fatal("give --pool-file or --diff, not both")
    exact, globs = _parse_tags(tags)
    counters = _load_counters(opts) if opts["top"] is not None else None

    from . import index as index_mod
    from . import sources

    try:
        source_set = sources.discover(root=opts["root"], drivers=opts["drivers"],
                                      all_pe=opts["all_pe"])
    except sources.SourcesError as exc:
        raise Fatal(str(exc)) from None
    if opts["verbose"]:
        for path, reason in source_set.skipped:
            click.echo(f"tagfind: skipped {path}: {reason}", err=True)
    index_path = opts["index_path"] or index_mod.default_index_path()
    try:
        with index_mod.Index(index_path) as idx:
            try:
                return _with_index(idx, source_set.files, modes, counters, exact, globs, opts)
            finally:
                # The index may find and rebuild a damaged file at any step: say so once.
                for warning in dict.fromkeys(idx.warnings):
                    click.echo(f"tagfind: warning: {warning}", err=True)
    except index_mod.IndexUnavailable as exc:
        raise Fatal(str(exc)) from None


def _with_index(idx: Any, files: list[str], modes: list[bool], counters: Any,
                exact: list[int], globs: list[str], opts: dict[str, Any]) -> int:
    stats = idx.refresh(files, rebuild=opts["rebuild_index"], jobs=opts["jobs"],
                        timeout=opts["timeout"])
    _echo_stats(stats, opts["verbose"])
    if not any(modes):
        click.echo(_stats_line(stats))
        return EXIT_FOUND
    if counters is not None:
        return _run_top(idx, files, counters, opts)
    return _run_tag_query(idx, files, exact, globs, opts)


def _load_counters(opts: dict[str, Any]) -> Any:
    from .pool import PoolSourceError
    from .top import load_counters

    try:
        return load_counters(opts)
    except PoolSourceError as exc:
        raise Fatal(str(exc)) from None


def _run_top(idx: Any, files: list[str], counters: Any, opts: dict[str, Any]) -> int:
    from . import top

    rows, meta, warnings = counters
    for warning in warnings:
        click.echo(f"tagfind: warning: {warning}", err=True)
    chosen = top.select_rows(rows, opts["top"], opts["sort_key"], opts["pool_type"])
    values = sorted({v for r in chosen if (v := top.tag_value(r.tag)) is not None})
    sites = idx.sites(tags=values, files=files) if values else []
    db = _pooltag_db(opts, {r.tag for r in chosen})
    top.attach_drivers(chosen, sites, db)
    if opts["as_json"]:
        click.echo(top.render_json(chosen, meta))
    elif opts["as_csv"]:
        click.echo(top.render_csv(chosen), nl=False)
    else:
        click.echo(top.render_table(chosen, verbose=bool(opts["verbose"]),
                                    growth=bool(opts["diff"])))
    return EXIT_FOUND if chosen else EXIT_NOTHING


def _pooltag_db(opts: dict[str, Any], tags: set[str]) -> Any:
    from .pooltag import load_db

    try:
        return load_db(opts["pooltag_files"], root=opts["root"], only_tags=sorted(tags))
    except ValueError as exc:
        raise Fatal(str(exc)) from None


def _stats_line(stats: Any) -> str:
    failed = len(stats.failed)
    return (f"index: {stats.total} files, {stats.scanned} scanned, {stats.reused} reused, "
            f"{stats.unchanged} unchanged, {stats.removed} removed, {failed} failed "
            f"({stats.seconds:.2f} s)")


def _echo_stats(stats: Any, verbose: int) -> None:
    if stats.failed:
        click.echo(f"tagfind: {len(stats.failed)} file(s) could not be scanned"
                   + ("" if verbose else " (-v names them)"), err=True)
        if verbose:
            for path, error in stats.failed:
                click.echo(f"tagfind:   {path}: {error}", err=True)
    if verbose:
        click.echo(f"tagfind: {_stats_line(stats)}", err=True)


def _run_tag_query(idx: Any, files: list[str], exact: list[int], globs: list[str],
                   opts: dict[str, Any]) -> int:
    from . import report

    if opts["driver"] is not None:
        site_rows = idx.sites_for_driver(opts["driver"])
        if not site_rows and not idx.match_driver(opts["driver"]):
            raise Fatal(f"no indexed driver named {opts['driver']!r}")
        byte_matches: list[Any] = []
    else:
        site_rows = idx.sites(tags=exact, files=files) if exact else []
        for pattern in globs:
            site_rows += idx.sites(tag_glob=pattern, files=files)
        byte_matches = [] if opts["no_bytes"] else _byte_matches(idx, exact, site_rows)
    tags = {tag_to_str(s.tag) for s in site_rows if s.tag is not None}
    db = _pooltag_db(opts, tags | {tag_to_str(m.tag) for m in byte_matches})
    rows = report.tag_rows(site_rows, byte_matches, db)
    unknown = report.unknown_site_counts(site_rows) if opts["driver"] is not None else {}
    _emit(rows, opts, unknown)
    return EXIT_FOUND if rows else EXIT_NOTHING


def _byte_matches(idx: Any, tags: list[int], site_rows: list[Any]) -> list[Any]:
    """Files holding a tag's 4 bytes among those without code evidence for it: the index's
    byte filters name the candidates, and only those are read to confirm."""
    from .bytematch import find_byte_matches

    matches = []
    for tag in tags:
        with_code = {s.path for s in site_rows if s.tag == tag}
        matches += find_byte_matches(idx.byte_candidates(tag, exclude=with_code), [tag])
    return matches


def _emit(rows: list[Any], opts: dict[str, Any], unknown: dict[str, int]) -> None:
    from . import report

    if opts["as_json"]:
        click.echo(report.render_json(rows, {"unproven_tag_calls": unknown}))
    elif opts["as_csv"]:
        click.echo(report.render_csv(rows), nl=False)
    elif rows:
        click.echo(report.render_table(rows, verbose=bool(opts["verbose"])))
    for path, count in unknown.items():
        if not opts["as_json"]:
            click.echo(f"{report.driver_name(path)}: {count} pool call(s) whose tag could not "
                       "be proven from the code", err=True)
    if not rows and not opts["as_json"] and not opts["as_csv"]:
        click.echo("no driver found for that query", err=True)


@cli.command("snapshot", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the snapshot (JSON).")
@click.option("--from", "from_file", type=click.Path(dir_okay=False), default=None,
              help="Convert a poolmon log or !poolused output instead of reading live.")
def snapshot_cmd(output: str, from_file: str | None) -> None:
    """Save the pool counters (live, or from a log) as a JSON snapshot for --pool-file and
    --diff."""
    from .pool import PoolSourceError, load_pool_file, read_live_pool, save_snapshot

    try:
        snap = load_pool_file(from_file) if from_file else read_live_pool()
        save_snapshot(snap, output)
    except PoolSourceError as exc:
        raise Fatal(str(exc)) from None
    except OSError as exc:
        raise Fatal(f"cannot write {output}: {exc.strerror or exc}") from None
    click.echo(f"saved {len(snap.rows)} pool rows to {output}")


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: like click's standalone mode, but a usage error is one line."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="tagfind",
                        standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"tagfind: error: {exc.format_message()} (see tagfind --help)", err=True)
        sys.exit(EXIT_ERROR)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("tagfind: error: interrupted", err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
