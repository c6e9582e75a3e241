"""WinDbg's loaded module listings as text: `lm`, `lmf`, `lmn`, `lmv` (and `lm` with `t`,
`sm`), kernel or user mode, 32- or 64-bit addresses, pasted from a session, a log or a ticket.

What each form gives per module line (`start end module-name rest`):

- `lm`: rest is the symbol state (`(deferred)`, `(pdb symbols)  c:\\sym\\x.pdb`, optionally
  led by status letters `C`, `T`, `#`, `M`): the module name only;
- `lmf`: rest is the image path as the loader saw it (`\\SystemRoot\\system32\\x.sys`);
- `lmn`: rest is the image file name;
- `lmt`: rest is a time stamp (ignored);
- `lmv`: the `lm` line, then indented `Image path:` / `Image name:` lines (and more).

Lines after `Unloaded modules:` name modules that are no longer loaded: they end the list.
Anything else (prompts, banners, DML links) is skipped.
"""

from __future__ import annotations

import re

from .model import LoadedModule

_ADDRESS = r"[0-9a-fA-F]{8}(?:`?[0-9a-fA-F]{8})?"
_MODULE_LINE = re.compile(rf"^\s*(?P<start>{_ADDRESS})\s+(?P<end>{_ADDRESS})\s+(?P<name>\S+)"
                          r"(?:\s+(?P<rest>.*?))?\s*$")
_SYMBOL_STATE = re.compile(r"^(?:[CT#M]\s+)*\(")  # `(deferred)`, `C (no symbols)`, ...
_TIME_STAMP = re.compile(r"^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) \w{3} +\d")
_VERBOSE_FIELD = re.compile(r"^\s+(?P<key>Image path|Image name):\s*(?P<value>.+?)\s*$")
_UNLOADED = re.compile(r"^\s*Unloaded modules:", re.IGNORECASE)
_HEADER = re.compile(r"^\s*start\s+end\s+module name\s*$")


def looks_like_lm(text: str) -> bool:
    """True when text holds an `lm` header or at least one module line."""
    lines = text.splitlines()[:400]
    return any(_HEADER.match(line) for line in lines) or (
        sum(1 for line in lines if _module_line(line)) >= 1
    )


def parse_lm(text: str) -> list[LoadedModule]:
    """The loaded modules an `lm`-family listing shows, in its order. A module's `reported`
    name is its image path when the listing gave one (`lmf`, `lmv`'s Image path), else its
    image file name (`lmn`, `lmv`'s Image name), else the module name."""
    found: list[dict] = []
    for line in text.splitlines():
        if _UNLOADED.match(line):
            break
        verbose = _VERBOSE_FIELD.match(line)
        if verbose and found:
            key = "path" if verbose["key"] == "Image path" else "image"
            found[-1].setdefault(key, verbose["value"])
            continue
        m = _module_line(line)
        if m is None:
            continue
        start, end = _address(m["start"]), _address(m["end"])
        item = {"name": m["name"], "base": start, "size": max(0, end - start)}
        rest = (m["rest"] or "").strip()
        if rest and not _SYMBOL_STATE.match(rest) and not _TIME_STAMP.match(rest):
            key = "path" if "\\" in rest or "/" in rest else "image"
            item[key] = rest
        found.append(item)
    modules = []
    for item in found:
        reported = _best_name(item)
        modules.append(LoadedModule(reported=reported, base=item["base"], size=item["size"]))
    return modules


def _best_name(item: dict) -> str:
    path = item.get("path")
    # lmv prints a bare file name as Image path when the debugger found no path.
    if path and ("\\" in path or "/" in path):
        return path
    return item.get("image") or path or item["name"]


def _module_line(line: str) -> re.Match[str] | None:
    return _MODULE_LINE.match(line)


def _address(text: str) -> int:
    return int(text.replace("`", ""), 16)
