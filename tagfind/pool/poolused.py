"""WinDbg `!poolused` output: optional prompt, progress dots and kd cache messages, a
`Sorting by ...` line, the two-line NonPaged/Paged header, then rows printed as
` %-4s %9d %12d %10d %12d` followed by a TAB and the pooltag.txt description (older debuggers
glue the description to the last number). Several commands in one capture give several runs.

!poolused counts only what is outstanding: its Allocs column is allocations not yet freed
(the WinDbg documentation: "the number of currently outstanding allocations for the given tag
and the number of bytes consumed by these allocations"). So rows carry `outstanding`, with
allocs and frees unknown, and a tag gets one row per pool in which it holds anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .model import PoolRow, PoolSnapshot
from .textlines import NUMBER, numbered_lines, shorten, tag_candidates

_ROW = re.compile(
    rf"^[ \t]+(?P<np_allocs>{NUMBER})[ \t]+(?P<np_used>{NUMBER})"
    rf"[ \t]+(?P<p_allocs>{NUMBER})[ \t]+(?P<p_used>{NUMBER})(?P<desc>[^0-9].*)?$",
    re.ASCII,
)
_PROMPT = re.compile(r"^\s*(?:[0-9]+:\s*)?kd>\s*(?P<command>.*)$")
_POOLUSED = re.compile(r"!poolused\b\s*(?P<args>.*)$", re.IGNORECASE)
_SORTING = re.compile(r"^\s*Sorting by\b", re.IGNORECASE)
_HEADER = re.compile(r"^\s*Tag\s+Allocs\s+(?:Frees\s+Diff\s+)?Used\b", re.IGNORECASE)
_POOL_NAMES = re.compile(r"^\s*(?:NonPaged\s+Paged|Pool Used:)\s*$", re.IGNORECASE)
_DOTS = re.compile(r"^\s*(?:\.+|\u2026)\s*$")

SESSION_POOL_FLAG = 0x8  # !poolused bit 3: session pool instead of the standard pools
SOURCE = "!poolused"


def parse_poolused_runs(text: str) -> list[PoolSnapshot]:
    """Every !poolused table in `text`, in order."""
    runs: list[PoolSnapshot] = []
    run = _Run()

    def close() -> None:
        nonlocal run
        if run.header or run.rows:
            runs.append(run.snapshot())
            run = _Run()

    for number, line in numbered_lines(text):
        if not line.strip():
            continue
        prompt = _PROMPT.match(line)
        if prompt:
            close()
            command = _POOLUSED.search(prompt.group("command"))
            # Another debugger command ends the table; its output is not ours to read.
            run.outside = command is None
            if command:
                run.scope = _scope_of(command.group("args"))
            continue
        if _SORTING.match(line):
            if run.rows:
                close()
            run.outside = False
            continue
        if _HEADER.match(line):
            run.header = True
            run.outside = False
            continue
        if _POOL_NAMES.match(line):
            continue
        if _DOTS.match(line):
            if run.rows:  # dots before the rows are progress, after them an elision
                run.warnings.append((number, "rows were left out here ('...'): table incomplete"))
            continue
        if run.outside:
            continue
        rows = _parse_row(line)
        if rows is not None:
            run.rows.extend(rows)
        elif run.header:
            run.warnings.append((number, f"not a !poolused row, skipped: {shorten(line)}"))
    close()
    return runs


def parse_poolused(text: str) -> PoolSnapshot:
    """The last !poolused table in `text`."""
    runs = parse_poolused_runs(text)
    if runs:
        return runs[-1]
    return PoolSnapshot(source=SOURCE, counter_bits=64, warnings=[(0, "no !poolused table found")])


def looks_like_poolused(text: str) -> bool:
    """True when `text` holds a !poolused command, its Sorting line or its column header."""
    return any(
        _HEADER.match(line) or _SORTING.match(line) or _POOLUSED.search(line)
        for _, line in numbered_lines(text)
    )


@dataclass
class _Run:
    scope: str = "system"
    header: bool = False
    outside: bool = False
    rows: list[PoolRow] = field(default_factory=list)
    warnings: list[tuple[int, str]] = field(default_factory=list)

    def snapshot(self) -> PoolSnapshot:
        # No cumulative counters here, so nothing can wrap: 64 says "take differences as-is".
        return PoolSnapshot(
            rows=self.rows,
            source=SOURCE,
            scope=self.scope,
            counter_bits=64,
            warnings=self.warnings,
        )


def _parse_row(line: str) -> list[PoolRow] | None:
    for tag, rest in tag_candidates(line):
        match = _ROW.match(rest)
        if not match:
            continue
        description = (match.group("desc") or "").strip() or None
        rows = []
        for pool, allocs, used in (
            ("nonpaged", match.group("np_allocs"), match.group("np_used")),
            ("paged", match.group("p_allocs"), match.group("p_used")),
        ):
            if int(allocs) or int(used):
                rows.append(
                    PoolRow(tag, pool, None, None, int(used), description, outstanding=int(allocs))
                )
        return rows
    return None


def _scope_of(args: str) -> str:
    # WinDbg reads bare numbers in its default radix, 16.
    word = args.split()[0] if args.split() else "0"
    try:
        flags = int(word[2:] if word.lower().startswith("0x") else word, 16)
    except ValueError:
        return "system"
    return "session" if flags & SESSION_POOL_FLAG else "system"

