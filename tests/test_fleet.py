"""`tagfind trend --fleet`: snapshots of several generated machines (poolgen, from a real
poolmon sample) in folders, grouped by machine and boot; per tag the machines it grows on,
median/max bytes per hour and the driver from a fixture driver's index. The arrays of
fleet.series_growth are checked against trend.build_trends on the same series."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from poolgen import BOOT, generated_series, write_series

from tagfind.fleet import series_growth
from tagfind.pool import PoolRow
from tagfind.pool.fleet import load_fleet
from tagfind.pool.series import build_series, load_series
from tagfind.trend import build_trends

REPO = Path(__file__).resolve().parent.parent
HALF_HOUR = timedelta(minutes=30)
SAMPLE = "docs-sorted-by-allocs.txt"
LEAK = PoolRow("Test", "nonpaged", 5000, 4000, 1000 * 64)  # main.sys allocates Test, 64 bytes


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tagfind", "trend", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def machine(folder: Path, name: str | None, growth: dict, steps: int = 6, boot=BOOT,
            prefix: str = "snap") -> list[Path]:
    snaps = generated_series(SAMPLE, steps, HALF_HOUR, growth, machine=name, boot=boot,
                             extra=(LEAK,))
    paths = write_series(folder, snaps)
    return [p.rename(p.with_name(f"{prefix}-{p.name}")) for p in paths]


@pytest.fixture
def fleet_dir(tmp_path) -> Path:
    """SRV1-3 leak Test at 320, 640 and 960 bytes/hour; SRV4 does not; SRV3 also grows Ustm;
    SRV2 has an earlier boot in which nothing grows; an unnamed machine's snapshots lie in
    a folder of their own, and a README is no snapshot."""
    root = tmp_path / "fleet"
    machine(root / "srv1", "SRV1", {LEAK.key: (2, 160)})
    machine(root / "srv2", "srv2", {LEAK.key: (2, 320)})
    machine(root / "srv2", "SRV2", {}, steps=3, boot=BOOT - timedelta(days=2), prefix="old")
    for path in (root / "srv2").glob("old-*"):  # the earlier boot, a day before the first
        text = path.read_text().replace("2025-03-01T0", "2025-02-27T0")
        path.write_text(text)
    machine(root / "srv3", "SRV3", {LEAK.key: (2, 480), ("Ustm", "paged"): (1, 100)})
    machine(root / "srv4", "SRV4", {})
    machine(root / "lab-pc", None, {("Ustm", "paged"): (1, 50)})
    (root / "README.txt").write_text("snapshots collected on 2025-03-01\n")
    return root


def test_fleet_groups_by_machine_and_boot(fleet_dir):
    fleet = load_fleet([fleet_dir])
    assert fleet.machines == ["(lab-pc)", "SRV1", "SRV2", "SRV3", "SRV4"]
    assert len(fleet.series) == 6  # SRV2: two boots
    assert fleet.snapshots == 33
    assert any("1 file(s)" in w for w in fleet.warnings)
    assert any("named by their folder" in w for w in fleet.warnings)


def test_series_growth_agrees_with_trend():
    snaps = generated_series(SAMPLE, 8, HALF_HOUR, {LEAK.key: (2, 160), ("Io  ", "nonpaged"):
                                                    (3, 768)}, extra=(LEAK,))
    for index, snap in enumerate(snaps):  # Key  goes up and down; Ustm is missing twice
        snap.rows = [replace(r, bytes=r.bytes + (-4000 if index % 2 else 4000))
                     if r.key == ("Key ", "paged") else r for r in snap.rows
                     if r.key != ("Ustm", "paged") or index not in (2, 5)]
        snap.rows = [replace(r, bytes=r.bytes + 100 * index) if r.key == ("Ustm", "paged")
                     else r for r in snap.rows]
    series = build_series([type("P", (), {"label": str(i), "snapshot": s})() for i, s in
                           enumerate(snaps)])
    trends = build_trends(series)
    keys, grown = series_growth(series)
    assert keys == {(t.tag, t.pool) for t in trends}
    expected = {(t.tag, t.pool): t for t in trends if t.growing}
    assert set(grown) == set(expected) == {LEAK.key, ("Io  ", "nonpaged"), ("Ustm", "paged")}
    for key, growth in grown.items():
        assert growth.slope == pytest.approx(expected[key].slope)
        assert growth.per_alloc == expected[key].per_alloc


def test_series_growth_on_the_real_before_after_samples():
    series = load_series([REPO / "tests/data/poolmon/docs-leak-drsd-before.txt",
                          REPO / "tests/data/poolmon/docs-leak-drsd-after.txt"])
    _keys, grown = series_growth(series)
    assert set(grown) == {(t.tag, t.pool) for t in build_trends(series) if t.growing}


def test_fleet_cli(fleet_dir, fixture_driver, tmp_path):
    drivers = tmp_path / "drivers"
    drivers.mkdir()
    shutil.copy(fixture_driver("main", "O2"), drivers / "main.sys")
    common = ["--fleet", str(fleet_dir), "--drivers", str(drivers), "--index",
              str(tmp_path / "i.sqlite3"), "--jobs", "1"]
    done = run(*common, "--json", "--growing")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["schema"] == 1 and document["mode"] == "fleet"
    assert document["series"] == 6 and document["snapshots"] == 33
    rows = {(r["tag"], r["pool"]): r for r in document["rows"]}
    test = rows["Test", "nonpaged"]
    assert (test["machines_growing"], test["machines_seen"]) == (3, 5)
    assert test["median_rate"] == pytest.approx(640) and test["max_rate"] == pytest.approx(960)
    assert test["max_machine"] == "SRV3"
    assert [g["machine"] for g in test["growing_on"]] == ["SRV3", "SRV2", "SRV1"]
    assert [d["driver"] for d in test["drivers"]] == ["main.sys"]
    assert test["drivers"][0]["evidence"] == "call"
    ustm = rows["Ustm", "paged"]
    assert (ustm["machines_growing"], ustm["max_machine"]) == (2, "SRV3")
    assert [r["tag"] for r in document["rows"]][:2] == ["Test", "Ustm"]  # most machines first
    assert set(rows) == {("Test", "nonpaged"), ("Ustm", "paged")}
    assert "README.txt" not in done.stdout and "skipped" in done.stderr

    table = run(*common, "--top", "3").stdout.splitlines()
    assert table[0] == "5 machine(s), 6 series, 33 snapshot(s)"
    assert table[1].split()[:4] == ["Tag", "Type", "Growing", "on"]
    first = table[2].split()
    assert first[:5] == ["Test", "Nonp", "3", "of", "5"]
    assert "+640/h" in table[2] and "+960/h" in table[2] and "SRV3" in table[2]
    assert "main.sys" in table[2]
    csv_lines = run(*common, "--csv", "--growing").stdout.splitlines()
    assert csv_lines[0].startswith("tag,type,machines_growing,machines_seen,median_rate")
    assert csv_lines[1].startswith("Test,nonpaged,3,5,640.000,960.000,SRV3,bytes/hour,"
                                   "SRV3 SRV2 SRV1,main.sys,call")


@pytest.mark.parametrize("extra, message", [
    (["--plot", "x.png"], "--plot does not go with --fleet"),
    (["--sort", "diff"], "--sort does not apply"),
])
def test_fleet_refuses_what_does_not_apply(fleet_dir, extra, message):
    done = run("--fleet", str(fleet_dir), *extra)
    assert done.returncode == 2 and message in done.stderr
    assert done.stderr.count("\n") == 1


def test_fleet_bad_input_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    one = tmp_path / "one"
    machine(one, "SRV1", {}, steps=1)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "tagfind-pool-snapshot", "version": 1, "rows": [{"tag": 5}]}')
    for args, message in ((["--fleet", str(tmp_path / "empty")], "no files in"),
                          (["--fleet", str(one)], "no machine has two timed snapshots"),
                          (["--fleet", str(bad)], "damaged pool snapshot"),
                          (["--fleet", str(tmp_path / "none")], "no such file or folder"),
                          ([str(tmp_path / "empty")], "is a folder")):
        done = run(*args)
        assert done.returncode == 2, (args, done.stderr)
        last = done.stderr.splitlines()[-1]
        assert last.startswith("tagfind: error:") and message in last, done.stderr
        assert done.stderr.count("error") == 1 and "Traceback" not in done.stderr
