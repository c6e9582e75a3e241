"""What the commands print besides the result tables: the refresh statistics line and the
per-file failures."""

from __future__ import annotations

from typing import Any

import click


def stats_line(stats: Any) -> str:
    failed = len(stats.failed)
    return (f"index: {stats.total} files, {stats.scanned} scanned, {stats.reused} reused, "
            f"{stats.unchanged} unchanged, {stats.removed} removed, {failed} failed "
            f"({_took(stats)})")


def _took(stats: Any) -> str:
    """How long finding and checking the files took: a refresh that finds nothing changed is
    the price of every query, so under a second it is given in ms, walk and refresh apart."""
    walk = getattr(stats, "walk_seconds", 0.0)
    total = walk + stats.seconds
    if total >= 1:
        return f"{total:.2f} s"
    return (f"{total * 1000:.0f} ms: walk {walk * 1000:.0f} ms, "
            f"refresh {stats.seconds * 1000:.0f} ms")


def echo_refresh_stats(stats: Any, verbose: int) -> None:
    if stats.failed:
        click.echo(f"tagfind: {len(stats.failed)} file(s) could not be scanned"
                   + ("" if verbose else " (-v names them)"), err=True)
        if verbose:
            for path, error in stats.failed:
                click.echo(f"tagfind:   {path}: {error}", err=True)
    if verbose:
        click.echo(f"tagfind: {stats_line(stats)}", err=True)


def index_json(stats: Any) -> str:
    """--rebuild-index --json: the refresh statistics as a JSON document."""
    import json

    from ..report import JSON_SCHEMA

    return json.dumps({"schema": JSON_SCHEMA, "index": {
        "files": stats.total, "scanned": stats.scanned, "reused": stats.reused,
        "unchanged": stats.unchanged, "removed": stats.removed,
        "failed": [{"path": path, "error": error} for path, error in stats.failed],
        "seconds": round(stats.seconds, 3)}}, indent=2)


SHOWN_CHARS = 24


def shorten(text: str) -> str:
    """User text as echoed in an error line: quoted, cut after SHOWN_CHARS characters."""
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return f"{text[:SHOWN_CHARS]!r}... ({len(text):,} characters)"


def echo_nothing(empty_reason: str | None, globs_only: bool = False) -> None:
    """The one line for a query that found nothing, saying why when it can."""
    line = "tagfind: no driver found for that query"
    if empty_reason:
        line += f": {empty_reason}"
    elif globs_only:
        line += " (globs match code evidence only; give the exact tag for byte matches)"
    click.echo(line, err=True)
