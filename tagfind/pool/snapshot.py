"""Saved pool snapshots: PoolSnapshot to and from a small, versioned JSON document.

    {"format": "tagfind-pool-snapshot", "version": 1, "taken_at": "2025-01-02T03:04:05+00:00",
     "machine": "SRV1", "source": "live SystemPoolTagInformation (22)", "scope": "system",
     "counter_bits": 32, "boot_time": "2025-01-01T22:00:00+00:00", "os_build": "10.0.22631",
     "rows": [{"tag": "Test", "pool": "paged", "allocs": 1473,
     "frees": 1002, "bytes": 1972392}, ...], "warnings": [[4, "..."]]}

Rows from !poolused carry "outstanding" instead of "allocs"/"frees"; "driver_text" appears when
the source printed one. Derived values (diff, per alloc) are not stored. Live snapshots also
record "big_pool" ([{"tag", "pool", "count", "bytes", "largest"}]) and "modules"
({"source", "modules": [{"reported", "path", "base", "size", "load_order"}]}); both are
optional, so version 1 readers of older files are unaffected.

Growth between two snapshots lives in growth.py; diff_snapshots and PoolGrowth are re-exported
here because snapshots are what they compare.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .growth import PoolGrowth, diff_snapshots
from .model import PoolRow, PoolSnapshot, PoolSourceError

if TYPE_CHECKING:
    from ..modules.model import ModuleList
    from .bigpool import BigPoolUsage

FORMAT = "tagfind-pool-snapshot"
VERSION = 1

__all__ = [
    "FORMAT",
    "VERSION",
    "PoolGrowth",
    "diff_snapshots",
    "is_snapshot_json",
    "load_snapshot",
    "save_snapshot",
    "snapshot_from_json",
    "snapshot_to_json",
]


def snapshot_to_json(snapshot: PoolSnapshot) -> str:
    document = {
        "format": FORMAT,
        "version": VERSION,
        "taken_at": snapshot.taken_at.isoformat() if snapshot.taken_at else None,
        "machine": snapshot.machine,
        "source": snapshot.source,
        "scope": snapshot.scope,
        "counter_bits": snapshot.counter_bits,
        "boot_time": snapshot.boot_time.isoformat() if snapshot.boot_time else None,
        "os_build": snapshot.os_build,
        "rows": [_row_to_dict(row) for row in snapshot.rows],
        "warnings": [[line, message] for line, message in snapshot.warnings],
    }
    if snapshot.big_pool is not None:
        document["big_pool"] = [asdict(usage) for usage in snapshot.big_pool]
    if snapshot.modules is not None:
        document["modules"] = {
            "source": snapshot.modules.source,
            "modules": [asdict(module) for module in snapshot.modules.modules],
        }
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def snapshot_from_json(text: str, name: str = "snapshot") -> PoolSnapshot:
    """Parse a snapshot document; `name` (usually the path) goes into error messages."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        reason = f"{error.msg}, line {error.lineno}"
        raise PoolSourceError(f"{name}: not valid JSON ({reason})") from None
    if not is_snapshot_document(document):
        raise PoolSourceError(f"{name}: JSON, but not a tagfind pool snapshot")
    version = document.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise PoolSourceError(
            f"{name}: snapshot format version {version!r}; this tagfind reads up to {VERSION}"
        )
    from ..modules.model import ModulesError

    try:
        return PoolSnapshot(
            rows=[_row_from_dict(item) for item in document.get("rows", [])],
            taken_at=_parse_time(document.get("taken_at")),
            machine=document.get("machine"),
            source=str(document.get("source") or ""),
            scope=document.get("scope", "system"),
            counter_bits=document.get("counter_bits", 32),
            boot_time=_parse_time(document.get("boot_time")),
            os_build=_optional_str(document.get("os_build")),
            warnings=[(int(line), str(message)) for line, message in document.get("warnings", [])],
            big_pool=_big_pool_from(document.get("big_pool")),
            modules=modules_from_document(document, name),
        )
    except ModulesError as error:
        raise PoolSourceError(str(error)) from None
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise PoolSourceError(f"{name}: damaged pool snapshot ({error})") from None


def save_snapshot(snapshot: PoolSnapshot, path: str | Path) -> None:
    try:
        Path(path).write_text(snapshot_to_json(snapshot), encoding="utf-8")
    except OSError as error:
        raise PoolSourceError(f"cannot write snapshot {path}: {error.strerror}") from None


def load_snapshot(path: str | Path) -> PoolSnapshot:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise PoolSourceError(f"cannot read snapshot {path}: {reason}") from None
    return snapshot_from_json(text, str(path))


def is_snapshot_json(text: str) -> bool:
    """True when `text` is a tagfind snapshot document (any version)."""
    if not text.lstrip().startswith("{"):
        return False
    try:
        return is_snapshot_document(json.loads(text))
    except (json.JSONDecodeError, RecursionError):
        return False


def is_snapshot_document(document: Any) -> bool:
    return isinstance(document, dict) and document.get("format") == FORMAT


def _row_to_dict(row: PoolRow) -> dict[str, Any]:
    item: dict[str, Any] = {"tag": row.tag, "pool": row.pool}
    if row.allocs is not None:
        item["allocs"] = row.allocs
        item["frees"] = row.frees
    else:
        item["outstanding"] = row.outstanding
    item["bytes"] = row.bytes
    if row.driver_text is not None:
        item["driver_text"] = row.driver_text
    return item


def _row_from_dict(item: dict[str, Any]) -> PoolRow:
    def count(key: str) -> int | None:
        value = item.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
        return value

    tag = item["tag"]
    if not isinstance(tag, str):
        raise ValueError(f"tag must be a string, got {tag!r}")
    return PoolRow(
        tag=tag,
        pool=item["pool"],
        allocs=count("allocs"),
        frees=count("frees"),
        bytes=count("bytes") or 0,
        driver_text=item.get("driver_text"),
        outstanding=count("outstanding"),
    )


def _optional_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {value!r}")


def _big_pool_from(items: Any) -> list[BigPoolUsage] | None:
    from .bigpool import BigPoolUsage

    if items is None:
        return None
    usage = []
    for item in items:
        values = [item[k] for k in ("count", "bytes", "largest")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError(f"big_pool counts must be non-negative integers: {item!r}")
        if item["pool"] not in ("paged", "nonpaged") or not isinstance(item["tag"], str):
            raise ValueError(f"big_pool entry with a bad tag or pool: {item!r}")
        usage.append(BigPoolUsage(item["tag"], item["pool"], *values))
    return usage


def modules_from_document(document: Any, name: str) -> ModuleList | None:
    """The module list a snapshot document recorded, None when it recorded none. Raises
    ModulesError (a snapshot that is not one, damaged entries)."""
    from ..modules.model import LoadedModule, ModuleList, ModulesError

    if not is_snapshot_document(document):
        raise ModulesError(f"{name}: JSON, but not a tagfind pool snapshot")
    section = document.get("modules")
    if section is None:
        return None
    try:
        modules = []
        for item in section["modules"]:
            reported = item["reported"]
            numbers = [item.get(k) for k in ("base", "size", "load_order")]
            if not isinstance(reported, str) or not all(
                n is None or (isinstance(n, int) and not isinstance(n, bool) and n >= 0)
                for n in numbers
            ):
                raise ValueError(f"bad module entry {item!r}")
            path = item.get("path")
            modules.append(LoadedModule(reported, path if isinstance(path, str) else None,
                                        *numbers))
        return ModuleList(modules, source=f"snapshot {name} ({section.get('source', '')})",
                          machine=document.get("machine"),
                          taken_at=_parse_time(document.get("taken_at")))
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise ModulesError(f"{name}: damaged module list ({error})") from None


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value)
