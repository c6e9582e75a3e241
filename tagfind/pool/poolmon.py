"""poolmon text: the console display (32- and 64-bit widths, `( delta)` groups, /g or /c driver
text, /e totals, session pool titles), the `poolmon /n` log (one file may hold several
appended runs), and the tables people paste into tickets and blogs from either (blank lines,
collapsed spaces, a missing Per Alloc column, markdown headers, `-----` rules, `...` elisions).

Rows are read as: tag (4 characters after the indent, see textlines.tag_candidates), type,
then numbers split on blanks around the `( )` groups, never by fixed columns, because a number
wider than its field pushes the rest of the line right. A line that cannot be read becomes a
warning with its line number; parsing goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .model import PoolRow, PoolSnapshot
from .textlines import NUMBER, numbered_lines, shorten, tag_candidates

_BLANK = r"[ \t]"
_DELTA = rf"(?:{_BLANK}*\({_BLANK}*-?{NUMBER}{_BLANK}*\))"
_ROW = re.compile(
    rf"^{_BLANK}+(?P<type>nonpaged|nonp|paged){_BLANK}+"
    rf"(?P<allocs>{NUMBER})(?P<d_allocs>{_DELTA})?{_BLANK}+"
    rf"(?P<frees>{NUMBER})(?P<d_frees>{_DELTA})?{_BLANK}+"
    rf"(?P<diff>-?{NUMBER}){_BLANK}+"
    rf"(?P<bytes>{NUMBER})(?P<d_bytes>{_DELTA})?"
    rf"(?:{_BLANK}+(?P<per>{NUMBER}))?"
    rf"(?:{_BLANK}+(?P<driver>\S.*?))?{_BLANK}*$",
    re.IGNORECASE | re.ASCII,
)
_TYPE_WORD = re.compile(r"[ \t](?:nonp|nonpaged|paged)[ \t]", re.IGNORECASE)
_HEADER = re.compile(r"\bTag\b.*\bType\b.*\bAllocs\b.*\bFrees\b", re.IGNORECASE)
_SUMMARY = re.compile(r"^\s*(?:Memory|Commit)\s*:", re.IGNORECASE)
_TITLE = re.compile(
    r"^\s*(?:(?P<system>System)|(?P<all>All sessions)|Session\s+(?P<id>[0-9]{1,10}))"
    r"\s+pool information\s*$",
    re.IGNORECASE,
)
_RULE = re.compile(r"^[\s|:+=-]*[-=]{3,}[\s|:+=-]*$")
_FENCE = re.compile(r"^\s*(?:```|~~~)")
_ELISION = re.compile(r"^\s*(?:\.{2,}|\u2026)\s*$")
_TOTAL = re.compile(r"^\s*Totals?\b", re.IGNORECASE)  # poolmon /e
_COMMAND = re.compile(r"\bpoolmon(?:\.exe)?(?:\s+[-/]|\s*$)", re.IGNORECASE)

_SOURCE_DISPLAY = "poolmon display"
_SOURCE_LOG = "poolmon /n log"
_SOURCE_TABLE = "poolmon table"


def parse_poolmon_runs(text: str) -> list[PoolSnapshot]:
    """Every table in `text`, in order: each poolmon /n run appended to a log, each captured
    screen. A new header, summary (Memory:/Commit:) or title line after rows starts a new one.
    Tables without a header (rows pasted alone) count too."""
    runs: list[PoolSnapshot] = []
    run = _Run()

    def close() -> None:
        nonlocal run
        if run.header or run.rows:
            runs.append(run.snapshot())
            run = _Run()

    for number, line in numbered_lines(text):
        if not line.strip() or _FENCE.match(line) or _RULE.match(line):
            continue
        if _SUMMARY.match(line):
            close()
            continue
        title = _TITLE.match(line)
        if title:
            close()
            run.scope = _scope(title)
            continue
        if _HEADER.search(line):
            close()
            run.header = True
            continue
        if _ELISION.match(line):
            if run.header or run.rows:
                run.warnings.append((number, "rows were left out here ('...'): table incomplete"))
            continue
        if _TOTAL.match(line):
            continue
        row = _parse_row(line, number, run.warnings)
        if row is not None:
            run.add(row, number)
            continue
        if _COMMAND.search(line):
            close()
            continue
        if run.header or run.rows or _TYPE_WORD.search(line):
            run.warnings.append((number, f"not a pool row, skipped: {shorten(line)}"))
    close()
    return runs


def parse_poolmon(text: str) -> PoolSnapshot:
    """The last table in `text` (the newest run of an appended /n log)."""
    runs = parse_poolmon_runs(text)
    if runs:
        return runs[-1]
    return PoolSnapshot(source=_SOURCE_TABLE, warnings=[(0, "no poolmon table found")])


def looks_like_poolmon(text: str) -> bool:
    """True when `text` holds a poolmon header or at least one poolmon row."""
    for number, line in numbered_lines(text):
        if _HEADER.search(line) or _parse_row(line, number, []) is not None:
            return True
    return False


@dataclass
class _Run:
    scope: str = "system"
    header: bool = False
    deltas: bool = False
    rows: list[PoolRow] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)
    first_seen: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, row: tuple[PoolRow, bool], number: int) -> None:
        pool_row, had_deltas = row
        self.deltas |= had_deltas
        earlier = self.first_seen.setdefault(pool_row.key, number)
        if earlier != number:
            self.warnings.append(
                (number, f"tag {pool_row.tag!r} ({pool_row.pool}) already listed on line {earlier}")
            )
        self.rows.append(pool_row)

    def kind(self) -> str:
        # Only the console display prints ( ) deltas; a table without rows could be either.
        if self.deltas:
            return _SOURCE_DISPLAY
        return _SOURCE_LOG if self.rows else _SOURCE_TABLE

    def snapshot(self) -> PoolSnapshot:
        wide = any(max(r.allocs or 0, r.frees or 0) >= 1 << 32 for r in self.rows)
        return PoolSnapshot(
            rows=self.rows,
            source=self.kind(),
            scope=self.scope,
            counter_bits=64 if wide else 32,
            warnings=self.warnings,
        )


def _parse_row(
    line: str, number: int, warnings: list[tuple[int, str]]
) -> tuple[PoolRow, bool] | None:
    """(row, whether it had `( )` groups), or None when `line` is not a poolmon row."""
    for tag, rest in tag_candidates(line):
        match = _ROW.match(rest)
        if match:
            return _row_from(tag, match, number, warnings), bool(match.group("d_allocs"))
    return None


def _row_from(
    tag: str, match: re.Match[str], number: int, warnings: list[tuple[int, str]]
) -> PoolRow:
    allocs, frees = int(match.group("allocs")), int(match.group("frees"))
    printed_diff = int(match.group("diff"))
    if (printed_diff - (allocs - frees)) % (1 << 32):
        warnings.append(
            (number, f"Diff column says {printed_diff} but Allocs - Frees is "
                     f"{allocs - frees}; using Allocs - Frees")
        )
    pool = "nonpaged" if match.group("type")[0] in "nN" else "paged"
    return PoolRow(
        tag=tag,
        pool=pool,
        allocs=allocs,
        frees=frees,
        bytes=int(match.group("bytes")),
        driver_text=match.group("driver"),
    )


def _scope(title: re.Match[str]) -> str:
    if title.group("system"):
        return "system"
    if title.group("all"):
        return "all sessions"
    return f"session {int(title.group('id'))}"

