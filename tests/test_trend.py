"""`tagfind trend`: ranking on series generated from real poolmon samples with known growth,
on the real before/after samples, the CLI with a fixture driver's index for the Driver column,
and plots read back."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import skip_or_fail
from poolgen import POOLMON, START, generated_series, typeperf_csv, write_series

from tagfind.cli import cli
from tagfind.pool import PoolRow
from tagfind.pool.series import load_series
from tagfind.trend import build_trends, least_squares_slope, rank, sparkline, steadiness

HALF_HOUR = timedelta(minutes=30)
# ("Io  ", nonpaged) leaks 3 allocations of 256 bytes per half hour: 1536 bytes/hour.
# ("Key ", paged) rises and falls: no steady growth.
GROWTH = {("Io  ", "nonpaged"): (3, 768), ("Ustm", "paged"): (1, 100)}
LEAK = PoolRow("Test", "nonpaged", 5000, 4000, 1000 * 80)


@pytest.fixture(scope="module")
def drivers(fixture_driver, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("drivers")
    shutil.copy(fixture_driver("main", "O2"), folder / "main.sys")
    return folder


def series_files(folder: Path, steps: int = 9) -> list[Path]:
    snaps = generated_series("docs-sorted-by-allocs.txt", steps, HALF_HOUR,
                             {**GROWTH, LEAK.key: (2, 160)}, extra=(LEAK,))
    for index, snap in enumerate(snaps):  # Key  goes up and down around where it was
        snap.rows = [r if r.key != ("Key ", "paged") else
                     PoolRow(r.tag, r.pool, r.allocs + index * 5, r.frees + index * 5,
                             r.bytes + (4000 if index % 2 else -4000)) for r in snap.rows]
    return write_series(folder, snaps)


def test_least_squares_matches_numpy():
    rng = np.random.default_rng(12)
    xs = np.sort(rng.uniform(0, 50, 40))
    ys = 1234.5 * xs + rng.normal(0, 500, 40) + 10_000
    assert least_squares_slope(list(xs), list(ys)) == pytest.approx(np.polyfit(xs, ys, 1)[0])
    assert least_squares_slope([1.0], [5.0]) is None
    assert least_squares_slope([2.0, 2.0], [1.0, 9.0]) is None


def test_steadiness_counts_intervals_that_grew():
    assert steadiness([1, 2, 3, 4]) == 1.0
    assert steadiness([1, 2, 1, 2, 1]) == 0.5
    assert steadiness([5, None, 6, 6]) == 0.5  # unknown samples are skipped, not zeros
    assert steadiness([5]) is None


def test_known_slopes_and_ranking(tmp_path):
    series = load_series(series_files(tmp_path))
    trends = {(t.tag, t.pool): t for t in build_trends(series)}
    io = trends[("Io  ", "nonpaged")]
    assert io.per_hour and io.slope == pytest.approx(768 * 2)
    assert io.steadiness == 1.0 and io.diff_growth == 3 * 8 and io.bytes_growth == 768 * 8
    assert trends[("Test", "nonpaged")].slope == pytest.approx(320)
    key = trends[("Key ", "paged")]
    assert key.steadiness == 0.5 and not key.growing
    assert not trends[("Wait", "nonpaged")].growing
    ranked = rank(trends.values())
    assert [(t.tag, t.pool) for t in ranked[:3]] == [
        ("Io  ", "nonpaged"), ("Test", "nonpaged"), ("Ustm", "paged")]
    assert [t.growing for t in ranked[:3]] == [True, True, True]
    assert not any(t.growing for t in ranked[3:])
    by_diff = rank(trends.values(), "diff", only_growing=True)
    assert [t.tag for t in by_diff] == ["Io  ", "Test", "Ustm"]
    assert rank(trends.values(), pool="paged", only_growing=True)[0].tag == "Ustm"
    assert io.shared  # Io   is the I/O manager's: marked shared


def test_real_before_after_samples():
    series = load_series([POOLMON / "docs-leak-drsd-before.txt",
                          POOLMON / "docs-leak-drsd-after.txt"])
    (drsd,) = build_trends(series)
    assert (drsd.tag, drsd.pool, drsd.per_hour) == ("Drsd", "paged", False)
    assert drsd.bytes_growth == 4992 and drsd.diff_growth == 6 and drsd.growing


def test_sparkline():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([3, None, 3]) == "▁ ▁"
    assert len(sparkline(list(range(100)), 16)) == 16


def run(drivers: Path, tmp_path: Path, *args: str):
    index = tmp_path / "index.sqlite3"
    return CliRunner().invoke(cli, ["trend", "--drivers", str(drivers), "--index", str(index),
                                    "--jobs", "1", *args])


def test_cli_table_names_the_driver(drivers, tmp_path):
    files = [str(p) for p in series_files(tmp_path / "s")]
    result = run(drivers, tmp_path, *reversed(files))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["Tag", "Type", "Bytes"]
    assert lines[1].startswith("Io ") and "[shared]" in lines[1]
    test_line = lines[2]
    assert test_line.startswith("Test") and "main.sys" in test_line and "call" in test_line
    assert "+320/h" in test_line and "100%" in test_line
    assert any(line.startswith("note: 'Io  '") for line in lines)


def test_cli_json_and_csv(drivers, tmp_path):
    files = [str(p) for p in series_files(tmp_path / "s")]
    document = json.loads(run(drivers, tmp_path, *files, "--json", "--growing").stdout)
    assert [r["tag"] for r in document["rows"]] == ["Io  ", "Test", "Ustm"]
    assert document["rows"][1]["drivers"][0]["driver"] == "main.sys"
    assert document["timed"] and document["hours"][-1] == 4.0
    csv_out = run(drivers, tmp_path, *files, "--csv", "--top", "2").stdout.splitlines()
    assert csv_out[1].startswith("Io  ,nonpaged,") and len(csv_out) == 3


def test_cli_refuses_mixed_boots_and_bad_input(drivers, tmp_path):
    first = write_series(tmp_path / "a", generated_series("docs-sorted-by-allocs.txt", 2,
                                                          HALF_HOUR, {}))
    other = generated_series("docs-sorted-by-allocs.txt", 2, HALF_HOUR, {},
                             boot=START + timedelta(hours=3))
    for snap in other:
        snap.taken_at += timedelta(hours=4)
    second = write_series(tmp_path / "b", other)
    result = run(drivers, tmp_path, *map(str, first + second))
    assert result.exit_code == 2 and "counters restart at boot" in result.output
    assert "Traceback" not in result.output
    result = run(drivers, tmp_path, *map(str, first + second), "--last-boot", "--json")
    assert result.exit_code == 1  # nothing grows within the newest boot
    assert len(json.loads(result.stdout)["snapshots"]) == 2
    for args, message in ((["--plot", "x.gif", str(first[0]), str(first[1])], ".png or .svg"),
                          ([str(first[0])], "at least two"),
                          ([str(tmp_path / "missing.json"), str(first[0])], "cannot read")):
        result = run(drivers, tmp_path, *args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        skip_or_fail("matplotlib is not installed (pip install 'tagfind[plot]')")


def test_plot_svg_shows_the_tags_and_drivers(drivers, tmp_path):
    _matplotlib()
    files = [str(p) for p in series_files(tmp_path / "s")]
    times = [START + i * HALF_HOUR for i in range(9)]
    perf = tmp_path / "perf.csv"
    perf.write_text(typeperf_csv([(t, 300_000_000 + i * 10**6, 90_000_000)
                                  for i, t in enumerate(times)]), newline="")
    out = tmp_path / "trend.svg"
    result = run(drivers, tmp_path, *files, "--plot", str(out), "--perfmon", str(perf))
    assert result.exit_code == 0, result.output
    texts = ["".join(e.itertext()) for e in ET.parse(out).iter("{http://www.w3.org/2000/svg}text")]
    assert "Test Nonp: main.sys" in texts
    assert "Io   Nonp: no driver found [shared]" in texts
    assert "Pool Paged Bytes (Perfmon)" in texts
    assert not any("Wait" in t for t in texts)  # not growing: not drawn


def test_plot_png_is_a_real_image(drivers, tmp_path):
    _matplotlib()
    from matplotlib import image
    from PIL import Image

    files = [str(p) for p in series_files(tmp_path / "s")]
    out = tmp_path / "trend.png"
    assert run(drivers, tmp_path, *files, "--plot", str(out)).exit_code == 0
    pixels = image.imread(out)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)) > 20  # lines, not blank
    assert "Test Nonp: main.sys" in Image.open(out).info["Description"]


def test_plot_without_matplotlib_is_one_line(drivers, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    files = [str(p) for p in series_files(tmp_path / "s", steps=3)]
    result = run(drivers, tmp_path, *files, "--plot", str(tmp_path / "p.png"))
    assert result.exit_code == 2
    assert result.output.strip() == ("tagfind: error: plotting needs matplotlib: "
                                     "pip install 'tagfind[plot]'")
