"""`tagfind trend FILE...`: rank tags by growth over a series of snapshots, poolmon logs and
pasted screens, each with its driver(s) from the index; optionally plot them."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import click

from .errors import EXIT_FOUND, EXIT_NOTHING, Fatal
from .options import SourceOptions, load_pooltag_db, open_index, source_options
from .sitelookup import sites_by_tag


@dataclass(frozen=True)
class TrendOptions:
    files: tuple[str, ...]
    top: int
    sort_key: str
    pool_type: str | None
    growing: bool
    last_boot: bool
    plot: str | None
    plot_top: int
    perfmon: str | None
    as_json: bool
    as_csv: bool
    verbose: int
    fleet: bool = False


@click.command("trend", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("files", nargs=-1, required=True, type=click.Path())
@click.option("--top", type=click.IntRange(1, 100000), default=20, show_default=True,
              help="How many tags to list.")
@click.option("--sort", "sort_key", default="slope", show_default=True,
              type=click.Choice(["slope", "steady", "diff"]),
              help="Rank by bytes/hour, by the share of intervals that grew, or by Diff growth.")
@click.option("--type", "pool_type", default=None, type=click.Choice(["paged", "nonpaged"]))
@click.option("--growing", is_flag=True, help="List only tags that look like leaks.")
@click.option("--last-boot", is_flag=True,
              help="If the files span reboots, keep the newest boot's snapshots.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Draw the top growing tags and the pool totals to FILE.png or FILE.svg.")
@click.option("--plot-top", type=click.IntRange(1, 20), default=5, show_default=True,
              help="How many tags the plot draws.")
@click.option("--perfmon", type=click.Path(dir_okay=False), default=None,
              help="typeperf CSV with \\Memory\\Pool Paged/Nonpaged Bytes for the totals.")
@click.option("--fleet", is_flag=True,
              help="FILES (and folders) are snapshots from many machines: per tag, on how "
                   "many machines it grows, median/max bytes per hour, its driver(s).")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV output.")
@click.option("-v", "--verbose", count=True, help="Show each driver's evidence.")
@source_options
def trend_cmd(**params: Any) -> None:
    """Which tag keeps growing over FILES (snapshots, poolmon /n logs, pasted screens), and
    whose driver is it? Ordered by time, or as given when a file has no time. With --fleet,
    over many machines' snapshots (folders too), grouped by machine and boot."""
    src = SourceOptions.from_params(params)
    opts = TrendOptions(**params)
    try:
        sys.exit(run_trend(src, opts))
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        raise Fatal("interrupted") from None
    except Exception as exc:  # the user gets one line, never a traceback
        raise Fatal(f"{type(exc).__name__}: {exc}") from None


def run_trend(src: SourceOptions, opts: TrendOptions) -> int:
    from .. import trend
    from ..plot import FORMATS, PlotUnavailable, plot_trends
    from ..pool import PoolSourceError
    from ..pool.perfmon import load_typeperf
    from ..pool.series import BOOTS_ERROR, BOOTS_LAST, load_series

    if opts.as_json and opts.as_csv:
        raise Fatal("choose one of --json and --csv")
    if opts.fleet:
        return run_fleet(src, opts)
    folders = [f for f in opts.files if os.path.isdir(f)]
    if folders:
        raise Fatal(f"{folders[0]} is a folder: give snapshot files, or --fleet for folders "
                    "of many machines' snapshots")
    if opts.perfmon and not opts.plot:
        raise Fatal("--perfmon goes with --plot FILE")
    if opts.plot and not opts.plot.lower().endswith(FORMATS):
        raise Fatal("--plot writes a .png or .svg file")
    try:
        series = load_series(opts.files, BOOTS_LAST if opts.last_boot else BOOTS_ERROR)
        perfmon = load_typeperf(opts.perfmon) if opts.perfmon else None
    except PoolSourceError as exc:
        raise Fatal(str(exc)) from None
    for warning in series.warnings:
        click.echo(f"tagfind: warning: {warning}", err=True)
    if len(series.points) < 2:
        raise Fatal("a trend needs at least two snapshots")
    ranked = trend.rank(trend.build_trends(series), opts.sort_key, opts.pool_type,
                        opts.growing)[: opts.top]
    # Saved snapshots off Windows need no drivers: the table then has pooltag.txt's owners.
    with open_index(src, verbose=opts.verbose, allow_no_sources=True) as opened:
        sites = [s for group in sites_by_tag(opened, {t.tag for t in ranked}).values()
                 for s in group]
        trend.attach_drivers(ranked, sites, load_pooltag_db(src, {t.tag for t in ranked}))
        if opened.note:
            click.echo(f"tagfind: {opened.note}", err=True)
    if opts.plot:
        try:
            plot_trends(opts.plot, [t for t in ranked if t.growing][: opts.plot_top], series,
                        perfmon)
        except PlotUnavailable as exc:
            raise Fatal(str(exc)) from None
        click.echo(f"tagfind: plot written to {opts.plot}", err=True)
    if opts.as_json:
        click.echo(trend.render_json(ranked, series))
    elif opts.as_csv:
        click.echo(trend.render_csv(ranked), nl=False)
    else:
        click.echo(trend.render_table(ranked, verbose=bool(opts.verbose)))
    return EXIT_FOUND if any(t.growing for t in ranked) else EXIT_NOTHING


FLEET_REFUSES = {"plot": "--plot", "perfmon": "--perfmon", "last_boot": "--last-boot"}


def run_fleet(src: SourceOptions, opts: TrendOptions) -> int:
    """Rank tags by the machines they grow on (tagfind/fleet.py)."""
    from .. import fleet
    from ..pool import PoolSourceError
    from ..pool.fleet import load_fleet

    for field_name, flag in FLEET_REFUSES.items():
        if getattr(opts, field_name):
            raise Fatal(f"{flag} does not go with --fleet (each boot is a series of its own)")
    if opts.sort_key != "slope":
        raise Fatal("--fleet ranks by the machines a tag grows on, then its median rate: "
                    "--sort does not apply")
    try:
        loaded = load_fleet(opts.files)
    except PoolSourceError as exc:
        raise Fatal(str(exc)) from None
    for warning in loaded.warnings:
        click.echo(f"tagfind: warning: {warning}", err=True)
    if not loaded.series:
        raise Fatal("no machine has two timed snapshots of one boot: no trend to rank")
    ranked = fleet.rank(fleet.build_fleet(loaded), opts.pool_type, opts.growing)[: opts.top]
    with open_index(src, verbose=opts.verbose, allow_no_sources=True) as opened:
        sites = []
        if opened.index is not None:
            sites = [s for group in sites_by_tag(opened, {t.tag for t in ranked}).values()
                     for s in group]
        fleet.attach_drivers(ranked, sites, load_pooltag_db(src, {t.tag for t in ranked}))
        note = opened.note
    if opts.as_json:
        click.echo(fleet.render_json(ranked, loaded))
    elif opts.as_csv:
        click.echo(fleet.render_csv(ranked), nl=False)
    else:
        click.echo(fleet.render_table(ranked, loaded, verbose=bool(opts.verbose)))
    if note:
        click.echo(f"tagfind: {note}", err=True)
    return EXIT_FOUND if any(t.machines_growing for t in ranked) else EXIT_NOTHING
