"""Which scanner version the index's rows must carry: SCANNER_VERSION of tagfind.scan,
read from its source while the scanner is not imported (a query must not pay for numpy,
pefile and capstone to learn one number)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

_VERSION_LINE = re.compile(r"^SCANNER_VERSION\s*=\s*(\d+)\b", re.MULTILINE)


def current_scanner_version() -> int:
    """The scanner's SCANNER_VERSION, read at call time (tests bump it with monkeypatch).

    When tagfind.scan is not imported yet, the number is read from its source: importing the
    scanner (numpy, pefile, capstone) costs more than a whole warm refresh, and a query that
    finds nothing changed never needs it. Any doubt falls back to the import."""
    if "tagfind.scan" not in sys.modules:
        version = _scanner_version_from_source()
        if version is not None:
            return version
    # (An import, not sys.modules: another thread may be importing the scanner, and the
    # import waits until the module is whole.)
    from .. import scan as module

    return module.SCANNER_VERSION


def _scanner_version_from_source() -> int | None:
    try:
        spec = importlib.util.find_spec("tagfind.scan")
        origin = spec.origin if spec else None
        if not origin or not origin.endswith(".py"):
            return None
        found = _VERSION_LINE.findall(Path(origin).read_text(encoding="utf-8"))
    except (ImportError, OSError, UnicodeDecodeError, ValueError):
        return None
    return int(found[0]) if len(found) == 1 else None
