"""`tagfind watch --replay` run for real in a tmux terminal: keys sent with send-keys, the
screen read with capture-pane. Frames are snapshots generated from a real poolmon sample plus
the fixture driver's tag, and real poolmon screens; the Driver column comes from the index."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import skip_or_fail
from poolgen import POOLMON, generated_series, write_series

from tagfind.pool import PoolRow, load_snapshot

REPO = Path(__file__).resolve().parent.parent
LEAK = PoolRow("Test", "nonpaged", 5000, 4000, 80_000)


@pytest.fixture(scope="module")
def tmux() -> str:
    path = shutil.which("tmux")
    if path is None:
        skip_or_fail("tmux is not installed (apt-get install tmux)")
    try:
        import rich  # noqa: F401
    except ImportError:
        skip_or_fail("rich is not installed (pip install 'tagfind[watch]')")
    return path


@pytest.fixture(scope="module")
def drivers(fixture_driver, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("drivers")
    shutil.copy(fixture_driver("main", "O2"), folder / "main.sys")
    return folder


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Path]:
    snaps = generated_series("docs-sorted-by-allocs.txt", 2, timedelta(minutes=30),
                             {LEAK.key: (2, 160)}, extra=(LEAK,))
    return write_series(tmp_path_factory.mktemp("frames"), snaps)


class Screen:
    """One tagfind watch in its own tmux session (killed by name when done)."""

    def __init__(self, tmux: str, args: list[str], width: int = 200, height: int = 30):
        self.tmux, self.name = tmux, f"tagfind-{uuid.uuid4().hex[:8]}"
        command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "tagfind", *args])
        script = f"{command}; echo EXIT=$?; stty -a; sleep 600"
        env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color"}
        env.pop("CI", None)
        subprocess.run([tmux, "new-session", "-d", "-s", self.name, "-x", str(width), "-y",
                        str(height), "bash", "-c", script], check=True, env=env, cwd=REPO)

    def text(self, escapes: bool = False) -> str:
        args = [self.tmux, "capture-pane", "-p", "-t", self.name] + (["-e"] if escapes else [])
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout

    def wait_for(self, needle: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.text()
            if needle in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{needle!r} never appeared; the screen was:\n{self.text()}")

    def keys(self, *keys: str) -> None:
        for key in keys:
            subprocess.run([self.tmux, "send-keys", "-t", self.name, "-l", key]
                           if len(key) == 1 else [self.tmux, "send-keys", "-t", self.name, key],
                           check=True)
            time.sleep(0.15)

    def rows(self) -> list[str]:
        lines = self.text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("Tag "))
        return [line for line in lines[start + 1:]
                if line[4:].split()[:1] in (["Nonp"], ["Paged"])]

    def styled_row(self, tag: str) -> str:
        """The row of `tag` with its SGR escapes (the same line of the screen)."""
        plain, styled = self.text().splitlines(), self.text(escapes=True).splitlines()
        index = next(i for i, line in enumerate(plain) if line.startswith(tag))
        return styled[index]

    def close(self) -> None:
        subprocess.run([self.tmux, "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def watch(tmux, drivers, tmp_path):
    screens: list[Screen] = []

    def start(*files: Path, extra: tuple[str, ...] = ()) -> Screen:
        screen = Screen(tmux, ["watch", "--replay", *map(str, files), "--interval", "0.3",
                               "--drivers", str(drivers), "--index",
                               str(tmp_path / "index.sqlite3"), "--jobs", "1", *extra])
        screens.append(screen)
        return screen

    yield start
    for screen in screens:
        screen.close()


def _tags(rows: list[str]) -> list[str]:
    return [row[:4] for row in rows]


def test_sorts_driver_column_and_quit(watch, frames):
    screen = watch(*frames)
    screen.wait_for("frame 2")
    rows = screen.rows()
    assert _tags(rows) == ["Io  ", "Key ", "Test", "Wait", "SePa", "Ustm", "Gxlt", "ObSq",
                           "ObSt"]
    test_row = next(r for r in rows if r.startswith("Test"))
    assert "main.sys" in test_row and "call" in test_row and "(+160)" in test_row
    screen.keys("T")
    screen.wait_for("sort: Tag ascending")
    assert _tags(screen.rows()) == sorted(_tags(rows))
    screen.keys("A")
    screen.wait_for("sort: Allocs descending")
    assert _tags(screen.rows())[:2] == ["Wait", "ObSt"]
    screen.keys("(")
    screen.wait_for("sort: change of Allocs")
    assert _tags(screen.rows())[0] == "Test"  # the only row whose allocs moved
    screen.keys("q")
    after = screen.wait_for("EXIT=0")
    assert "tagfind watch |" not in after  # the alternate screen is gone
    modes = after.split()
    assert "icanon" in modes and "echo" in modes  # cbreak undone


def test_filters_pool_view_and_totals(watch, frames):
    screen = watch(*frames)
    screen.wait_for("frame 2")
    screen.keys("P")
    screen.wait_for("pool: paged")
    assert {row[4:].split()[0] for row in screen.rows()} == {"Paged"}
    screen.keys("P", "P", "i", "T", "e", "*", " ", "S", "?", "P", "a", "Enter")
    screen.wait_for("include: Te* S?Pa")
    assert _tags(screen.rows()) == ["Test", "SePa"]
    screen.keys("x", "S", "*", "Enter")
    screen.wait_for("exclude: S*")
    assert _tags(screen.rows()) == ["Test"]
    screen.keys("E")
    text = screen.wait_for("Paged total:")
    # the pool's totals, whatever the patterns, summed here from the frame files
    old, new = (load_snapshot(f) for f in frames)
    for pool, name in (("paged", "Paged"), ("nonpaged", "Nonpaged")):
        allocs = sum(r.allocs for r in new.rows if r.pool == pool)
        size = sum(r.bytes for r in new.rows if r.pool == pool)
        grew = size - sum(r.bytes for r in old.rows if r.pool == pool)
        assert f"{name} total: Allocs {allocs:,}" in text
        assert f"Bytes {size:,} ({grew:+,})" in text
    assert "(+160)" in text  # the fixture tag's growth is the nonpaged pool's
    screen.keys("Enter")
    detail = screen.wait_for("score")
    assert "main.sys" in detail and "call evidence at 0x" in detail
    screen.keys("Escape", "q")
    screen.wait_for("EXIT=0")


def test_changed_cells_are_highlighted(watch, frames):
    screen = watch(*frames)
    screen.wait_for("frame 2")
    changed, still = screen.styled_row("Test"), screen.styled_row("Wait")
    assert changed.count("7m") >= 8, repr(changed)  # 4 values and their changes, reversed
    assert "7m" not in still, repr(still)
    screen.keys("L")
    time.sleep(0.8)
    assert "7m" not in screen.styled_row("Test")
    screen.keys("q")
    screen.wait_for("EXIT=0")


def test_real_poolmon_screens_ctrl_c_and_small_window(tmux, drivers, tmp_path):
    files = [POOLMON / "docs-leak-drsd-before.txt", POOLMON / "docs-leak-drsd-after.txt"]
    screen = Screen(tmux, ["watch", "--replay", *map(str, files), "--interval", "0.3",
                           "--drivers", str(drivers), "--index", str(tmp_path / "i.sqlite3"),
                           "--jobs", "1"], width=90, height=12)
    try:
        screen.wait_for("frame 2")
        text = screen.text()
        assert all(len(line) <= 90 for line in text.splitlines())
        assert "(+4,992)" in text  # Drsd's byte growth between the two screens
        screen.keys("C-c")
        after = screen.wait_for("EXIT=")
        assert "EXIT=0" in after and "icanon" in after.split()
        assert "Traceback" not in after
    finally:
        screen.close()


def test_not_a_terminal_is_one_line(drivers, tmp_path, frames):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "tagfind", "watch", "--replay",
                             *map(str, frames), "--drivers", str(drivers)],
                            capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert result.stderr.strip() == ("tagfind: error: watch needs a terminal; for a table use "
                                      "tagfind --top N")
