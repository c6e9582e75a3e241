"""`tagfind export --pooltag FILE`: what tagfind learned, as pooltag.txt lines that poolmon
(/g), PoolMonX, System Informer and WinDbg's !poolused read:

    WDiv - WinDivert64.sys - tagfind: call evidence, 30 sites

One line per tag and driver with code evidence (byte matches are not evidence and are not
written). The description is ours: the strongest evidence and the number of sites. Tags that
pooltag.txt cannot carry (a non-printable byte, or text its own parser would read otherwise)
are left out and counted. With a file to merge with, its lines are kept as they are and ours
are added only for (tag, driver) pairs it does not list yet.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .apis import EVIDENCE_RANK
from .pooltag import decode, parse, parse_line
from .report import driver_name
from .tags import tag_to_str

HEADER = "// tagfind: tags proven from driver code (tag - driver - evidence, sites)"


@dataclass
class ExportResult:
    lines: list[str]
    written: int  # our lines in the output
    already_listed: int  # pairs the merged file already had
    not_representable: int  # tags pooltag.txt cannot carry


def pooltag_lines(sites: Iterable[Any]) -> tuple[list[str], int]:
    """(lines, tags left out) for the code-evidence sites, sorted by tag then driver."""
    pairs: dict[tuple[str, str], list[Any]] = {}
    for site in sites:
        if site.tag is None or site.evidence == "bytes":
            continue
        pairs.setdefault((tag_to_str(site.tag), driver_name(site.path)), []).append(site)
    lines, skipped = [], set()
    for (tag, driver), group in sorted(pairs.items()):
        best = min(group, key=lambda s: EVIDENCE_RANK.get(s.evidence, 99)).evidence
        count = len({(s.sha256, s.rva, s.api) for s in group})
        line = f"{tag} - {driver} - tagfind: {best} evidence, {count} site{'s' * (count != 1)}"
        if _round_trips(line, tag, driver):
            lines.append(line)
        else:
            skipped.add(tag)
    return lines, len(skipped)


def _round_trips(line: str, tag: str, driver: str) -> bool:
    if not all(0x20 <= ord(c) < 0x7F for c in tag) or len(tag) != 4:
        return False
    entry = parse_line(line, "export", 1)
    return entry is not None and entry.pattern == tag and entry.binaries == (driver,)


def export_pooltag(sites: Iterable[Any], output: str | os.PathLike[str],
                   merge_with: str | os.PathLike[str] | None = None) -> ExportResult:
    """Write the lines (merged with `merge_with` when given) to `output` atomically."""
    ours, left_out = pooltag_lines(sites)
    kept: list[str] = []
    listed: set[tuple[str, str]] = set()
    if merge_with is not None:
        text = decode(Path(merge_with).read_bytes())
        kept = text.splitlines()
        for entry in parse(text, str(merge_with)).entries:
            listed.update((entry.pattern, b.casefold()) for b in entry.binaries)
    new = [line for line in ours if _pair(line) not in listed]
    lines = kept + ([HEADER] if new else []) + new
    target = Path(output)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temp.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8", newline="")
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return ExportResult(lines, len(new), len(ours) - len(new), left_out)


def _pair(line: str) -> tuple[str, str]:
    entry = parse_line(line, "export", 1)
    assert entry is not None  # every line of ours round-trips (_round_trips)
    return entry.pattern, entry.binaries[0].casefold()
