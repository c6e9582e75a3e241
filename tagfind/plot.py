"""`trend --plot FILE.png|FILE.svg`: the top growing tags' bytes over time, each line labelled
with its tag and driver, above the paged/nonpaged totals (from the snapshots, or from a
Perfmon typeperf log when one is given).

matplotlib is an optional extra (`pip install 'tagfind[plot]'`); without it plot_trends raises
PlotUnavailable with a one-line message. SVG text is written as text, not outlines, so the
labels can be searched and read back; PNG files carry the tags in their Description.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from .pool.perfmon import PerfmonLog
from .pool.series import PoolSeries
from .trend import TagTrend, totals

FORMATS = (".png", ".svg")
MISSING = "plotting needs matplotlib: pip install 'tagfind[plot]'"


class PlotUnavailable(Exception):
    """Plotting cannot run here (matplotlib missing, or an unsupported file type)."""


def label(trend: TagTrend) -> str:
    drivers = ", ".join(c.driver for c in trend.drivers[:2]) or "no driver found"
    pool = "Paged" if trend.pool == "paged" else "Nonp"
    return f"{trend.tag} {pool}: {drivers}" + (" [shared]" if trend.shared else "")


def plot_trends(path: str | Path, trends: Sequence[TagTrend], series: PoolSeries,
                perfmon: PerfmonLog | None = None) -> None:
    """Draw `trends` (already ranked and cut to the top K) to `path`."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise PlotUnavailable(f"--plot writes .png or .svg, not {path.suffix or 'no suffix'!r}")
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable(MISSING) from None
    matplotlib.use("Agg")  # files only: never open a window or need a display
    import matplotlib.pyplot as plt

    xs = _x_axis(series)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure, (top, bottom) = plt.subplots(
            2, 1, figsize=(10, 7), sharex=perfmon is None or not series.timed,
            gridspec_kw={"height_ratios": [3, 1.4]})
        for trend in trends:
            points = [(x, y) for x, y in zip(xs, trend.bytes, strict=True) if y is not None]
            top.plot([x for x, _ in points], [y / 1024 for _, y in points], marker="o",
                     markersize=3, label=label(trend))
        top.set_ylabel("KB in use")
        top.set_title("Growing pool tags")
        if trends:
            top.legend(loc="upper left", fontsize="small")
        top.grid(alpha=0.3)
        _draw_totals(bottom, xs, series, perfmon)
        bottom.set_xlabel("time" if series.timed else "snapshot")
        figure.tight_layout()
        description = "; ".join(label(t) for t in trends)
        try:
            figure.savefig(path, metadata={"Description": description})
        except OSError as error:
            raise PlotUnavailable(f"cannot write {path}: {error.strerror or error}") from None
        finally:
            plt.close(figure)


def _x_axis(series: PoolSeries) -> list[datetime] | list[float]:
    if not series.timed:
        return [float(i) for i in range(len(series.points))]
    start = series.points[0].snapshot.taken_at
    assert start is not None
    return [start + timedelta(hours=h) for h in series.hours()]


def _draw_totals(axes: object, xs: Sequence[object], series: PoolSeries,
                 perfmon: PerfmonLog | None) -> None:
    if perfmon is not None and perfmon.samples:
        times = [s.taken_at for s in perfmon.samples]
        for kind, name in (("paged", "Pool Paged Bytes"), ("nonpaged", "Pool Nonpaged Bytes")):
            points = [(t, getattr(s, kind)) for t, s in zip(times, perfmon.samples, strict=True)
                      if getattr(s, kind) is not None]
            axes.plot([t for t, _ in points], [v / 2**20 for _, v in points],  # type: ignore
                      label=f"{name} (Perfmon)")
    else:
        sums = totals(series)
        for kind, name in (("paged", "Paged total"), ("nonpaged", "Nonpaged total")):
            axes.plot(xs, [s[kind] / 2**20 for s in sums], label=name)  # type: ignore
    axes.set_ylabel("MB")  # type: ignore[attr-defined]
    axes.legend(loc="upper left", fontsize="small")  # type: ignore[attr-defined]
    axes.grid(alpha=0.3)  # type: ignore[attr-defined]
