"""The rows the index hands out (SiteRow, FileRow, RefreshStats, IndexStats) and the
conversion of a site to and from its columns in the `sites` table. Plain data: no SQL runs
here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from ..tags import tag_to_str

_U64 = 1 << 64


class SiteRow(NamedTuple):
    """One site of one indexed file."""

    path: str
    sha256: str
    arch: str | None
    rva: int
    api: str
    tag: int | None
    evidence: str
    protected: bool
    pool: int | None
    size: int | None
    via: tuple[int, ...]
    function: int | None
    runtime: tuple[str, ...] = ()  # run-time values that may replace the tag (Site.runtime)
    origin: str | None = None  # where an imported result came from; None: scanned here

    @property
    def tag_str(self) -> str | None:
        return None if self.tag is None else tag_to_str(self.tag)


class FileRow(NamedTuple):
    """One indexed file. `error` is set when its content could not be scanned."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    arch: str | None
    error: str | None


@dataclass
class RefreshStats:
    """What one refresh did. Every listed file is counted once in unchanged, scanned or
    reused, unless it could not be read (then it is in failed) or vanished meanwhile.
    scanned counts files whose content was scanned; reused counts files that got the result of
    content already indexed (renamed or copied files, duplicates within this refresh).
    failed lists files that this refresh indexed with an error (timeouts included) or could
    not read; removed counts indexed paths dropped because they are no longer listed or gone."""

    total: int = 0
    unchanged: int = 0
    scanned: int = 0
    reused: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    timed_out: int = 0
    imported: int = 0  # of reused: files that got an imported result (share.py), no scan
    first_candidates: int | None = None  # contents scanned before a first answer (first.py)
    seconds: float = 0.0
    walk_seconds: float = 0.0  # finding the files before the refresh (set by its caller)


class IndexStats(NamedTuple):
    """Totals over the whole index."""

    path: str
    files: int
    contents: int
    sites: int
    failed_files: int
    scanner_version: int | None  # of the oldest row, None when empty
    last_refresh: float | None  # time.time() of the last refresh that wrote, None if never


# --- a site and its columns ----------------------------------------------------------------


def _to_i64(value: int | None) -> int | None:
    # SQLite integers are signed 64-bit; pool flags and sizes are unsigned 64-bit.
    if value is None:
        return None
    value %= _U64
    return value - _U64 if value >= _U64 // 2 else value


def _from_i64(value: int | None) -> int | None:
    if value is None:
        return None
    return value + _U64 if value < 0 else value


def _site_values(sha: str, site: dict) -> tuple:
    """The `sites` columns of one site of a scan (a dict, as it comes from a worker)."""
    tag = site["tag"]
    return (
        sha,
        site["rva"],
        site["api"],
        tag,
        None if tag is None else tag_to_str(tag),
        site["evidence"],
        int(bool(site["protected"])),
        _to_i64(site["pool"]),
        _to_i64(site["size"]),
        ",".join(str(v) for v in site["via"]),
        site["function"],
        " ".join(site.get("runtime", ())),
    )


def _site_row(row: tuple) -> SiteRow:
    """A SiteRow from path, sha256 and arch followed by the `sites` columns after sha256,
    then the content's origin."""
    (path, sha, arch, rva, api, tag, evidence, protected, pool, size, via, function, runtime,
     origin) = row
    return SiteRow(
        path=path,
        sha256=sha,
        arch=arch,
        rva=rva,
        api=api,
        tag=tag,
        evidence=evidence,
        protected=bool(protected),
        pool=_from_i64(pool),
        size=_from_i64(size),
        via=tuple(int(v) for v in via.split(",")) if via else (),
        function=function,
        runtime=tuple(runtime.split()) if runtime else (),
        origin=origin,
    )
