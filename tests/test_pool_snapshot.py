"""Saved snapshots (JSON round trip, damaged files) and growth between two snapshots (wrap,
tags on one side only, leak suspects first)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagfind.pool import (
    PoolRow,
    PoolSnapshot,
    PoolSourceError,
    diff_snapshots,
    load_pool_file,
    load_pool_runs,
    load_snapshot,
    save_snapshot,
    snapshot_from_json,
    snapshot_to_json,
)
from tagfind.pool.snapshot import FORMAT, VERSION

DATA = Path(__file__).parent / "data" / "poolmon"
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def deltas(g):
    return (g.delta_allocs, g.delta_frees, g.delta_diff, g.delta_bytes)


def snap(rows, taken_at=None, bits=32, **kw):
    return PoolSnapshot(rows=list(rows), taken_at=taken_at, counter_bits=bits, **kw)


# --- JSON --------------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    original = PoolSnapshot(
        rows=[
            PoolRow("Test", "paged", 1473, 1002, 1972392),
            PoolRow("Irp ", "nonpaged", 10, 5, 500, driver_text="[nt!io - Io request packets]"),
            PoolRow("\\x01ab\\xff", "paged", 1, 0, 64),
            PoolRow("Vad ", "nonpaged", None, None, 2192480, "Mm VADs", outstanding=13703),
        ],
        taken_at=T0,
        machine="SRV1",
        source="live SystemPoolTagInformation (22)",
        scope="session 3",
        counter_bits=32,
        warnings=[(7, "a warning")],
    )
    path = tmp_path / "before.json"
    save_snapshot(original, path)
    assert load_snapshot(path) == original
    assert load_pool_file(path) == original  # --pool-file accepts snapshots too
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["format"] == FORMAT and document["version"] == VERSION
    assert document["taken_at"] == "2025-03-01T12:00:00+00:00"
    assert document["rows"][0] == {
        "tag": "Test",
        "pool": "paged",
        "allocs": 1473,
        "frees": 1002,
        "bytes": 1972392,
    }
    assert document["rows"][3] == {
        "tag": "Vad ",
        "pool": "nonpaged",
        "outstanding": 13703,
        "bytes": 2192480,
        "driver_text": "Mm VADs",
    }


def test_round_trip_of_every_parsed_sample():
    for path in sorted(DATA.iterdir()):
        if path.name == "README.md":
            continue
        for run in load_pool_runs(path):
            assert snapshot_from_json(snapshot_to_json(run)) == run, path.name


_rows = st.lists(
    st.builds(
        PoolRow,
        tag=st.text(min_size=4, max_size=4),
        pool=st.sampled_from(["paged", "nonpaged"]),
        allocs=st.integers(0, 2**64 - 1),
        frees=st.integers(0, 2**64 - 1),
        bytes=st.integers(0, 2**64 - 1),
        driver_text=st.none() | st.text(max_size=30),
    ),
    max_size=10,
)


@settings(max_examples=100, deadline=None)
@given(_rows, st.none() | st.datetimes(timezones=st.just(timezone.utc)), st.none() | st.text())
def test_round_trip_property(rows, taken_at, machine):
    original = PoolSnapshot(rows=rows, taken_at=taken_at, machine=machine, source="x")
    assert snapshot_from_json(snapshot_to_json(original)) == original


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "other"}', "not a tagfind pool snapshot"),
        (json.dumps({"format": FORMAT, "version": VERSION + 1}), "format version"),
        (json.dumps({"format": FORMAT, "version": 1, "rows": [{"tag": "Test"}]}), "damaged"),
        (json.dumps({"format": FORMAT, "version": 1, "scope": "galaxy"}), "damaged"),
        (
            json.dumps(
                {
                    "format": FORMAT,
                    "version": 1,
                    "rows": [
                        {"tag": "Test", "pool": "paged", "allocs": -1, "frees": 0, "bytes": 0}
                    ],
                }
            ),
            "damaged",
        ),
    ],
)
def test_damaged_snapshots_give_one_line_errors(text, message):
    with pytest.raises(PoolSourceError, match=message) as info:
        snapshot_from_json(text, "old.json")
    assert "\n" not in str(info.value) and "old.json" in str(info.value)


def test_unreadable_snapshot(tmp_path):
    with pytest.raises(PoolSourceError, match="cannot read snapshot"):
        load_snapshot(tmp_path / "nope.json")


# --- growth ------------------------------------------------------------------------------------


def test_growth_sorted_leak_suspects_first():
    old = snap(
        [
            PoolRow("Leak", "nonpaged", 1000, 500, 500 * 64),
            PoolRow("Big ", "paged", 10, 0, 10 << 20),
            PoolRow("Calm", "paged", 5000, 4990, 640),
            PoolRow("Grow", "paged", 100, 90, 1000),
            PoolRow("Gone", "nonpaged", 3, 1, 200),
        ],
        taken_at=T0,
    )
    new = snap(
        [
            PoolRow("Leak", "nonpaged", 3000, 500, 2500 * 64),  # +2000 outstanding, +128000 B
            PoolRow("Big ", "paged", 10, 5, 5 << 20),  # shrank
            PoolRow("Calm", "paged", 9000, 8990, 640),  # busy but flat
            PoolRow("Grow", "paged", 200, 180, 2000),  # +10 outstanding, +1000 B
            PoolRow("New ", "nonpaged", 40, 0, 4000),  # appeared
        ],
        taken_at=T0 + timedelta(hours=2),
    )
    growth = diff_snapshots(old, new)
    assert [(g.tag, g.suspect) for g in growth] == [
        ("Leak", True),
        ("New ", True),
        ("Grow", True),
        ("Calm", False),
        ("Gone", False),
        ("Big ", False),
    ]
    leak = growth[0]
    assert deltas(leak) == (2000, 0, 2000, 128000)
    assert leak.interval_seconds == 7200.0 and leak.bytes_per_hour == 64000.0
    fresh = growth[1]
    assert fresh.old is None and deltas(fresh) == (
        40,
        0,
        40,
        4000,
    )
    calm = growth[3]
    assert deltas(calm) == (4000, 4000, 0, 0)
    gone = growth[4]
    assert gone.new is None and deltas(gone) == (None, None, -2, -200)


def test_growth_across_a_32_bit_counter_wrap():
    old = snap([PoolRow("Irp ", "nonpaged", 2**32 - 100, 2**32 - 150, 50 * 128)])
    new = snap([PoolRow("Irp ", "nonpaged", 400, 2**32 - 10, 410 * 128)])
    (g,) = diff_snapshots(old, new)
    assert (g.delta_allocs, g.delta_frees) == (500, 140)
    assert new.rows[0].diff == 410 and g.delta_diff == 360 and g.delta_bytes == 360 * 128
    assert g.suspect and g.interval_seconds is None and g.bytes_per_hour is None


def test_growth_with_64_bit_counters_does_not_wrap_at_32():
    old = snap([PoolRow("Irp ", "nonpaged", 2**32 - 100, 0, 0)], bits=64)
    new = snap([PoolRow("Irp ", "nonpaged", 2**32 + 400, 0, 0)], bits=64)
    assert diff_snapshots(old, new)[0].delta_allocs == 500
    # Compared with a 32-bit source, only the low 32 bits are comparable.
    old32 = snap([PoolRow("Irp ", "nonpaged", 2**32 - 100, 0, 0)], bits=32)
    assert diff_snapshots(old32, new)[0].delta_allocs == 500


def test_growth_of_poolused_outstanding_counts():
    old = snap([PoolRow("IoWI", "nonpaged", None, None, 112 * 1000, outstanding=1000)], bits=64)
    new = snap([PoolRow("IoWI", "nonpaged", None, None, 112 * 5000, outstanding=5000)], bits=64)
    (g,) = diff_snapshots(old, new)
    assert deltas(g) == (None, None, 4000, 448000) and g.suspect


def test_growth_between_the_two_drsd_samples():
    before = load_pool_file(DATA / "docs-leak-drsd-before.txt")
    after = load_pool_file(DATA / "docs-leak-drsd-after.txt")
    (g,) = diff_snapshots(before, after)
    assert (g.tag, g.pool, g.delta_allocs, g.delta_frees, g.delta_diff, g.delta_bytes) == (
        "Drsd",
        "paged",
        177,
        171,
        6,
        4992,
    )
    assert g.suspect


def test_interval_needs_comparable_times():
    naive = datetime(2025, 3, 1, 12, 0, 0)
    row = PoolRow("Test", "paged", 1, 0, 8)
    assert diff_snapshots(snap([row], naive), snap([row], T0))[0].interval_seconds is None
    later = naive + timedelta(minutes=5)
    assert diff_snapshots(snap([row], naive), snap([row], later))[0].interval_seconds == 300.0


def test_same_tag_in_both_pools_stays_apart():
    old = snap([PoolRow("Ntfr", "paged", 1, 0, 10), PoolRow("Ntfr", "nonpaged", 1, 0, 10)])
    new = snap([PoolRow("Ntfr", "paged", 1, 0, 10), PoolRow("Ntfr", "nonpaged", 9, 0, 90)])
    growth = diff_snapshots(old, new)
    assert [(g.pool, g.delta_diff) for g in growth] == [("nonpaged", 8), ("paged", 0)]
