"""The watch model (frames, changes, poolmon's sort keys and views, patterns, totals,
scrolling) on real poolmon samples, and key decoding from what POSIX terminals and Windows'
msvcrt.getwch() hand over."""

from __future__ import annotations

from dataclasses import replace

import pytest
from poolgen import POOLMON

from tagfind.pool import load_pool_file
from tagfind.watch.keys import WindowsKeys, decode_posix, decode_windows
from tagfind.watch.model import DETAIL, TABLE, WatchModel


@pytest.fixture
def model() -> WatchModel:
    before = load_pool_file(POOLMON / "docs-sorted-by-allocs.txt")
    rows = [replace(r, allocs=r.allocs + 7, bytes=r.bytes + 700) if r.tag == "Key " else r
            for r in before.rows]
    m = WatchModel()
    m.push(before)
    m.push(replace(before, rows=rows))
    return m


def tags(model: WatchModel) -> list[str]:
    return [r.tag for r in model.rows()]


def test_changes_and_changed_cells(model):
    by_tag = {r.tag: r for r in model.rows()}
    key = by_tag["Key "]
    assert key.changes == {"allocs": 7, "frees": 0, "diff": 7, "bytes": 700}
    assert key.changed == {"allocs", "diff", "bytes"}
    assert by_tag["Wait"].changed == frozenset()


@pytest.mark.parametrize("key, expected", [
    ("b", ["Io  ", "Key ", "Wait", "SePa", "Ustm", "Gxlt", "ObSq", "ObSt"]),
    ("t", ["Gxlt", "Io  ", "Key ", "ObSq", "ObSt", "SePa", "Ustm", "Wait"]),
    ("a", ["Wait", "ObSt", "Gxlt", "Ustm", "Io  ", "ObSq", "Key ", "SePa"]),
    ("d", ["Key ", "Io  ", "Ustm", "Wait", "SePa", "Gxlt", "ObSq", "ObSt"]),
    ("m", ["Io  ", "Wait", "SePa", "Gxlt", "Key ", "Ustm", "ObSq", "ObSt"]),
])
def test_sort_keys(model, key, expected):
    if key == "b":
        model.handle_key("T")  # bytes is the default: B now would reverse it
    model.handle_key(key.upper())
    assert tags(model) == expected


def test_same_key_reverses_and_change_sort(model):
    model.handle_key("B")
    assert tags(model)[:2] == ["ObSq", "ObSt"]  # bytes again: ascending (ties by tag)
    model.handle_key("B")
    model.handle_key("(")
    assert tags(model)[0] == "Key "  # the only one whose bytes changed
    assert model.handle_key(")") and not model.by_change


def test_pool_view_cycles_and_patterns(model):
    model.handle_key("p")
    assert {r.pool for r in model.rows()} == {"paged"}
    model.handle_key("P")
    assert {r.pool for r in model.rows()} == {"nonpaged"}
    model.handle_key("p")
    assert model.pool_view == "both"
    for key in ["i", *"Ob* ?e*", "enter"]:
        model.handle_key(key)
    assert model.mode == TABLE and sorted(tags(model)) == ["Key ", "ObSq", "ObSt", "SePa"]
    for key in ["x", *"ObS?", "enter"]:
        model.handle_key(key)
    assert sorted(tags(model)) == ["Key ", "SePa"]
    for key in ["i", *["backspace"] * 10, "enter", "x", "esc"]:
        model.handle_key(key)
    assert model.include == [] and model.exclude == ["ObS?"] and len(tags(model)) == 6


def test_totals_over_the_pool(model):
    model.handle_key("i")
    model.handle_key("W")
    model.handle_key("enter")  # patterns do not change the pool's totals
    totals = model.totals()
    assert totals["paged"].bytes == 864 + 2464 + 0 + 87528 + 700
    assert totals["paged"].delta_bytes == 700 and totals["nonpaged"].delta_bytes == 0
    assert totals["nonpaged"].diff == 30 + 0 + 127 + 27


def test_scroll_enter_and_quit(model):
    model.page_size = 3
    for _ in range(4):
        model.handle_key("down")
    assert model.selected == 4 and model.offset == 2
    assert [r.tag for r in model.visible_rows()] == tags(model)[2:5]
    model.handle_key("end")
    assert model.selected == 7 and model.offset == 5
    model.handle_key("pgup")
    assert model.selected == 4
    model.handle_key("enter")
    assert model.mode == DETAIL
    assert model.handle_key("q") and model.mode == TABLE  # q leaves the detail view first
    assert model.handle_key("q") is False


def test_new_rows_are_all_change():
    snap = load_pool_file(POOLMON / "docs-leak-drsd-before.txt")
    m = WatchModel()
    m.push(snap)
    assert m.rows()[0].changes is None and m.rows()[0].changed == frozenset()
    m.push(load_pool_file(POOLMON / "docs-leak-drsd-after.txt"))
    (row,) = m.rows()
    assert row.changes == {"allocs": 177, "frees": 171, "diff": 6, "bytes": 4992}


def test_decode_posix():
    assert decode_posix("\x1b[A\x1b[B\x1b[5~\x1b[6~bq\r\x1b") == [
        "up", "down", "pgup", "pgdn", "b", "q", "enter", "esc"]
    assert decode_posix("\x1b[1;5A(x") == ["(", "x"]  # an unknown sequence is dropped whole
    assert decode_posix("\x1bOH\x1b[4~\x7f") == ["home", "end", "backspace"]


def test_decode_windows_getwch():
    """msvcrt.getwch() gives "\\xe0" or "\\x00" then a scan code for the special keys."""
    chars = iter(["\xe0", "H", "\x00", "P", "\xe0", "I", "\xe0", "Q", "b", "\r", "\x1b"])
    assert decode_windows(chars) == ["up", "down", "pgup", "pgdn", "b", "enter", "esc"]
    with pytest.raises(KeyboardInterrupt):
        decode_windows(iter(["\x03"]))


def test_windows_keys_through_standin_msvcrt():
    queue = ["\xe0", "P", "t"]
    keys = WindowsKeys(kbhit=lambda: bool(queue), getwch=lambda: queue.pop(0),
                       sleep=lambda s: None)
    assert [keys.read(0.1), keys.read(0.1), keys.read(0.0)] == ["down", "t", None]
