"""Pool counters: live (Windows), poolmon logs and !poolused text, saved snapshots.

Every provider gives a PoolSnapshot of PoolRow (one per tag and pool type):

- live.read_live_pool(): NtQuerySystemInformation on Windows;
- files.load_pool_file(path): a poolmon display or /n log, WinDbg !poolused output or a saved
  snapshot, detected by content (files.load_pool_runs for every run in an appended log);
- snapshot.save_snapshot / load_snapshot: tagfind's own JSON;
- growth.diff_snapshots(old, new): growth per tag, leak suspects first.

Failures a user can act on raise PoolSourceError with a one-line message.
"""

from .files import detect_format, load_pool_file, load_pool_runs, parse_pool_text
from .growth import PoolGrowth, diff_snapshots
from .live import read_live_pool
from .model import PoolRow, PoolSnapshot, PoolSourceError, counter_delta
from .poolmon import parse_poolmon, parse_poolmon_runs
from .poolused import parse_poolused, parse_poolused_runs
from .snapshot import load_snapshot, save_snapshot, snapshot_from_json, snapshot_to_json

__all__ = [
    "PoolGrowth",
    "PoolRow",
    "PoolSnapshot",
    "PoolSourceError",
    "counter_delta",
    "detect_format",
    "diff_snapshots",
    "load_pool_file",
    "load_pool_runs",
    "load_snapshot",
    "parse_pool_text",
    "parse_poolmon",
    "parse_poolmon_runs",
    "parse_poolused",
    "parse_poolused_runs",
    "read_live_pool",
    "save_snapshot",
    "snapshot_from_json",
    "snapshot_to_json",
]
