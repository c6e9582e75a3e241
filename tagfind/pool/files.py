"""Pool counter files: tell which kind a file is (tagfind snapshot JSON, poolmon display or
/n log, WinDbg !poolused) and load it, behind one entry point for `--pool-file`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .model import PoolSnapshot, PoolSourceError
from .poolmon import looks_like_poolmon, parse_poolmon_runs
from .poolused import looks_like_poolused, parse_poolused_runs
from .snapshot import is_snapshot_json, snapshot_from_json
from .textlines import decode_text

SNAPSHOT = "snapshot"
POOLUSED = "poolused"
POOLMON = "poolmon"

# Tried in this order: !poolused rows would not pass for poolmon rows, but a !poolused
# capture may quote a poolmon command line, so the more specific kinds go first.
_DETECTORS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    (SNAPSHOT, is_snapshot_json),
    (POOLUSED, looks_like_poolused),
    (POOLMON, looks_like_poolmon),
)


def detect_format(text: str) -> str | None:
    """"snapshot", "poolused" or "poolmon", or None when `text` is none of them."""
    for kind, looks_like in _DETECTORS:
        if looks_like(text):
            return kind
    return None


def parse_pool_text(text: str, name: str = "pool file") -> list[PoolSnapshot]:
    """Every snapshot `text` holds (several for appended poolmon /n runs or several !poolused
    commands), oldest first. Raises PoolSourceError when the kind is not recognised."""
    kind = detect_format(text)
    if kind == SNAPSHOT:
        return [snapshot_from_json(text, name)]
    if kind == POOLUSED:
        runs = parse_poolused_runs(text)
    elif kind == POOLMON:
        runs = parse_poolmon_runs(text)
    else:
        raise PoolSourceError(
            f"{name}: not a poolmon display or log, !poolused output or tagfind snapshot"
        )
    if not runs:
        raise PoolSourceError(f"{name}: looks like {kind} output but holds no table")
    return [replace(run, source=f"{run.source} {name}") for run in runs]


def load_pool_runs(path: str | Path) -> list[PoolSnapshot]:
    """Every snapshot in the file at `path`, oldest first."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PoolSourceError(f"cannot read pool file {path}: {error.strerror}") from None
    return parse_pool_text(decode_text(data), str(path))


def load_pool_file(path: str | Path) -> PoolSnapshot:
    """The snapshot in the file at `path`; for a file holding several, the last (newest)."""
    return load_pool_runs(path)[-1]
