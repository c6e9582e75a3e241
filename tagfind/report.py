"""Joins code evidence (index site rows), byte matches and pooltag.txt into rows, and renders
rows as a table, JSON or CSV. No scanning and no I/O besides writing the rendering.
"""

from __future__ import annotations

import ntpath
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .apis import EVIDENCE_RANK, POOL_APIS, pool_name, pool_paging, runtime_text
from .bytematch import ByteMatch
from .pooltag import PoolTagDb, binary_file_names
from .tags import tag_to_str

# Tags the kernel uses on behalf of many drivers, or that many drivers borrow: ownership is
# shared and a single driver must not be presented as "the" owner.
GENERIC_TAGS = frozenset(
    {"None", "Ddk ", "File", "Proc", "Strg", "Irp ", "Mdl ", "Even", "Mutx", "Sema", "Key ",
     "Toke", "Thre", "Io  ", "Vad ", "ObNm", "Se  "}
)
MANY_DRIVERS = 5
JSON_SCHEMA = 1  # the "schema" field of every query's JSON document (docs/json.md)


@dataclass
class SiteView:
    """One site as shown under -v and in JSON."""

    rva: int
    api: str
    evidence: str
    pool: str | None
    size: int | None
    protected: bool
    via: list[int]
    function: int | None
    runtime: list[str] = field(default_factory=list)  # run-time values that may replace the tag
    origin: str | None = None  # the index export this result was imported from


@dataclass
class TagDriverRow:
    """One (tag, driver) pair with the evidence for it."""

    tag: str
    tag_value: int
    driver: str
    path: str
    arch: str | None
    evidence: str
    sites: list[SiteView] = field(default_factory=list)
    pool: str | None = None  # paged | nonpaged | paged+nonpaged; None: not provable
    pooltag_owner: str | None = None
    pooltag_description: str | None = None
    notes: list[str] = field(default_factory=list)
    byte_offset: int | None = None
    loaded: bool | None = None  # in the loaded module list; None when no list is known


def driver_name(path: str) -> str:
    return ntpath.basename(path) if "\\" in path else os.path.basename(path)


def _site_view(site: Any) -> SiteView:
    api = POOL_APIS.get(site.api)
    is_flags = api.pool_is_flags if api else False
    return SiteView(site.rva, site.api, site.evidence, pool_name(site.pool, is_flags), site.size,
                    bool(site.protected), list(site.via), site.function,
                    list(getattr(site, "runtime", ())), getattr(site, "origin", None))


def _paging_summary(sites: Iterable[Any]) -> str | None:
    kinds = set()
    for site in sites:
        api = POOL_APIS.get(site.api)
        if api is None or api.kind not in ("alloc", "lookaside", "untagged"):
            continue
        paging = pool_paging(site.pool, api.pool_is_flags)
        if paging:
            kinds.add(paging)
    if not kinds:
        return None
    return "+".join(sorted(kinds, key=lambda k: k != "paged"))


def pooltag_facts(db: PoolTagDb | None, tag: str) -> tuple[str | None, str | None, set[str]]:
    """(owner text, description, owner file names) from pooltag.txt for one tag."""
    if db is None:
        return None, None, set()
    entries = db.lookup(tag)
    if not entries:
        return None, None, set()
    owners = list(dict.fromkeys(e.binary_field or "<unknown>" for e in entries))
    descriptions = [e.description for e in entries if e.description]
    files = {name for e in entries for name in binary_file_names(e)}
    return ", ".join(owners), (descriptions[0] if descriptions else None), files


def tag_rows(
    sites: Iterable[Any],
    byte_matches: Iterable[ByteMatch] = (),
    db: PoolTagDb | None = None,
) -> list[TagDriverRow]:
    """Rows per (tag, driver): code evidence first (strongest evidence first), then drivers
    that only contain the tag's bytes. Sites whose tag is unknown are left out."""
    grouped: dict[tuple[int, str], list[Any]] = defaultdict(list)
    for site in sites:
        if site.tag is not None:
            grouped[(site.tag, site.path)].append(site)
    rows: list[TagDriverRow] = []
    for (tag, path), group in grouped.items():
        group.sort(key=lambda s: (EVIDENCE_RANK.get(s.evidence, 99), s.rva))
        rows.append(
            TagDriverRow(
                tag=tag_to_str(tag), tag_value=tag, driver=driver_name(path), path=path,
                arch=group[0].arch, evidence=group[0].evidence,
                sites=[_site_view(s) for s in group], pool=_paging_summary(group),
            )
        )
        replaced = [s for s in group if getattr(s, "runtime", ())]
        if replaced:
            rows[-1].notes.append(
                f"{len(replaced)} of {len(group)} sites may use a tag chosen at run time "
                "instead (-v names the value)")
    with_code = {(r.tag_value, r.path) for r in rows}
    for match in byte_matches:
        if (match.tag, match.path) in with_code:
            continue
        rows.append(
            TagDriverRow(
                tag=tag_to_str(match.tag), tag_value=match.tag, driver=driver_name(match.path),
                path=match.path, arch=None, evidence="bytes", byte_offset=match.offset,
                notes=[f"bytes only (first at file offset 0x{match.offset:x}"
                       f"{' in code' if match.in_code else ''}): not a proven allocation"],
            )
        )
    _annotate(rows, db)
    rows.sort(key=lambda r: (r.tag, EVIDENCE_RANK.get(r.evidence, 99), -len(r.sites), r.driver))
    return rows


def _annotate(rows: list[TagDriverRow], db: PoolTagDb | None) -> None:
    by_tag: dict[str, list[TagDriverRow]] = defaultdict(list)
    for row in rows:
        by_tag[row.tag].append(row)
    for tag, group in by_tag.items():
        owner, description, files = pooltag_facts(db, tag)
        code_drivers = {r.driver.lower() for r in group if r.evidence != "bytes"}
        for row in group:
            row.pooltag_owner, row.pooltag_description = owner, description
            if row.evidence == "bytes":
                continue
            generic = tag in GENERIC_TAGS or len(code_drivers) > MANY_DRIVERS
            if files and row.driver.lower() not in files and not generic:
                row.notes.append(f"pooltag.txt names {owner}, the code evidence names "
                                 f"{row.driver}: both shown")
            if generic:
                row.notes.append(f"{tag!r} is used by many drivers: shared, not one owner")


@dataclass
class RuntimeTagDriver:
    """A driver whose pool calls take a tag chosen at run time: for a tag no driver's code
    proves (a randomised tag, or one borrowed to hide the driver), the next place to look."""

    driver: str
    path: str
    calls: int  # pool calls whose tag is a run-time value (or may be replaced by one)
    sources: list[str]  # the values, in words

    def line(self) -> str:
        return (f"{self.driver}: {self.calls} pool call(s) with a tag chosen at run time "
                f"({'; '.join(self.sources)})  {self.path}")


RUNTIME_SOURCES = 4  # run-time values named per driver in the hint


def runtime_tag_drivers(sites: Iterable[Any]) -> list[RuntimeTagDriver]:
    """Per driver, its sites with a run-time tag, most calls first."""
    by_path: dict[str, list[Any]] = defaultdict(list)
    for site in sites:
        if getattr(site, "runtime", ()):
            by_path[site.path].append(site)
    out = []
    for path, group in by_path.items():
        # Globals first (a randomised tag lives in one), then structure fields, in RVA order.
        items = sorted({r for s in group for r in s.runtime},
                       key=lambda r: (not r.startswith("global:"), len(r), r))
        sources = [runtime_text(r) for r in items]
        calls = len({(s.rva, s.api) for s in group})
        out.append(RuntimeTagDriver(driver_name(path), path, calls, sources[:RUNTIME_SOURCES] + (
            [f"{len(sources) - RUNTIME_SOURCES} more"] if len(sources) > RUNTIME_SOURCES
            else [])))
    out.sort(key=lambda d: (-d.calls, d.driver))
    return out


def mark_loaded(items: Iterable[Any], modules: Any) -> None:
    """Set `loaded` on rows or driver candidates (anything with `path`) from a module list
    (modules.ModuleList); without one they stay None (not known)."""
    if modules is None:
        return
    matcher = modules.matcher()
    for item in items:
        item.loaded = item.path in matcher


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def unknown_site_counts(sites: Iterable[Any]) -> dict[str, int]:
    """Per driver path: calls to pool APIs whose tag could not be proven."""
    counts: dict[str, int] = defaultdict(int)
    for site in sites:
        if site.tag is None:
            counts[site.path] += 1
    return dict(counts)


# --- rendering --------------------------------------------------------------------------------
TABLE_COLUMNS = ("Tag", "Driver", "Evidence", "Sites", "Pool", "pooltag.txt", "Path")


def _table_cells(row: TagDriverRow) -> list[str]:
    owner = row.pooltag_owner or "-"
    if row.pooltag_description:
        owner = f"{owner} - {row.pooltag_description}"
    return [row.tag, row.driver, row.evidence, str(len(row.sites)) if row.sites else "-",
            row.pool or "-", owner, row.path]


def render_table(rows: Sequence[TagDriverRow], verbose: bool = False) -> str:
    cells = [list(TABLE_COLUMNS)] + [_table_cells(r) for r in rows]
    if any(r.loaded is not None for r in rows):  # a module list is known: say which are
        for line, row in zip(cells, [None, *rows], strict=True):
            line.insert(2, "Loaded" if row is None else _yes_no(row.loaded))
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]) - 1)]
    lines = []
    for index, line in enumerate(cells):
        text = "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=False))
        lines.append(f"{text}  {line[-1]}".rstrip())
        if index == 0:
            continue
        row = rows[index - 1]
        for note in row.notes:
            lines.append(f"      note: {note}")
        if verbose:
            for site in row.sites:
                lines.append("      " + _site_line(site, row.arch))
    return "\n".join(lines)


def _site_line(site: SiteView, arch: str | None) -> str:
    parts = [f"rva 0x{site.rva:x}", site.api, site.evidence]
    if site.via:
        parts.append("via " + " -> ".join(f"0x{v:x}" for v in site.via))
    parts.append(f"pool {site.pool or '?'}")
    parts.append(f"size {site.size if site.size is not None else '?'}")
    if site.protected:
        parts.append("PROTECTED")
    if arch:
        parts.append(arch)
    if site.runtime:
        parts.append("may be replaced at run time by "
                     + " or ".join(runtime_text(r) for r in site.runtime))
    if site.origin:
        parts.append(f"imported from {site.origin}")
    return "  ".join(parts)


def _json_row(row: TagDriverRow) -> dict[str, Any]:
    data = asdict(row)
    for site in data["sites"]:
        site["rva"] = f"0x{site['rva']:x}"
        site["via"] = [f"0x{v:x}" for v in site["via"]]
        if site["function"] is not None:
            site["function"] = f"0x{site['function']:x}"
    data["tag_value"] = f"0x{row.tag_value:08x}"
    return data


def render_json(rows: Sequence[TagDriverRow], extra: dict[str, Any] | None = None) -> str:
    payload: dict[str, Any] = {"schema": JSON_SCHEMA, "rows": [_json_row(r) for r in rows]}
    if extra:
        payload.update(extra)
    import json  # here: a table, the common output, needs no json nor csv

    return json.dumps(payload, indent=2)


CSV_COLUMNS = ("tag", "tag_value", "driver", "path", "arch", "evidence", "sites", "pool",
               "pooltag_owner", "pooltag_description", "notes", "site_rvas", "loaded")


def render_csv(rows: Sequence[TagDriverRow]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r.tag, f"0x{r.tag_value:08x}", r.driver, r.path, r.arch or "",
                         r.evidence, len(r.sites), r.pool or "-", r.pooltag_owner or "",
                         r.pooltag_description or "", "; ".join(r.notes),
                         " ".join(f"0x{s.rva:x}" for s in r.sites),
                         "" if r.loaded is None else int(r.loaded)])
    return out.getvalue()
