"""pooltag.txt files: parsing, merging, lookup of a tag's documented owners.

This module owns everything about pooltag.txt-style files (Microsoft's list from Debugging
Tools for Windows, poolmon's localtag.txt, the facts file tagfind ships as tagfind.data,
files the user names with --pooltag): reading them robustly, turning lines into entries
(tag pattern, owning binaries, description), finding the copies present on a Windows system
or offline tree, and answering "what does pooltag.txt say about this tag?".

It knows nothing about scanning binaries; the report joins its answers with scanned evidence
through binary_file_names(), which maps `nt!mm` or `win32k!Foo` to a driver file name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from tagfind.tags import PROTECTED_POOL, str_to_tag, tag_bytes

UNKNOWN = "<unknown>"

# A line is split into fields at a dash with whitespace around it; descriptions may contain
# more such dashes, so only the first two separators count.
_LEAD_DASH = re.compile(r"\s*-\s*(?P<rest>.*)$", re.DOTALL)
_SHORT_TAG = re.compile(r"(?P<tag>\S{1,3}) +-(?:\s+|$)(?P<rest>.*)$", re.DOTALL)
_FIELD_SEP = re.compile(r"\s+-(?:\s+|$)")
_COMMENT = re.compile(r"//|(?:rem|REM)(?:\s|$)")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# `a.sys/b.sys`, `nt!store or rdyboost.sys`
_BINARY_SPLIT = re.compile(r"\s*/\s*|\s+or\s+")

# What one owner in the binary field may look like; anything else is a description.
_BINARY_FORMS = (
    re.compile(r"<[^<>]+>"),  # <unknown>, <multiple>, <nvlddmkm.sys>
    re.compile(r"[^\s!]+![^\s!].*"),  # nt!mm, win32k!Class::method
    re.compile(r"[\w.~$-]+\.(?:sys|dll|exe|lib)", re.IGNORECASE),
)
_BARE_NAME = re.compile(r"[\w.~$-]+")

# Module names used in the `module!function` form whose file is not `<module>.sys`.
_MODULE_FILES = {
    "nt": "ntoskrnl.exe",
    "ntoskrnl": "ntoskrnl.exe",
    "hal": "hal.dll",
    "win23k": "win32k.sys",  # a typo in Microsoft's list (Usiq)
}
# Static libraries named without `.lib`: linked into drivers we cannot name from the list.
_LIBRARIES = {"fslib"}
_FILE_EXTENSIONS = (".sys", ".dll", ".exe")
_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


class Entry(NamedTuple):
    """One tag line. `pattern` is the 4-character tag as written (spaces kept; `?` matches
    one character, `*` the rest); `binary_field` is the owner text as written ("" when the
    line names none) and `binaries` the owners it lists."""

    pattern: str
    binary_field: str
    binaries: tuple[str, ...]
    description: str | None
    source: str
    line: int

    @property
    def is_wildcard(self) -> bool:
        return "*" in self.pattern or "?" in self.pattern

    @property
    def fact(self) -> tuple[str, tuple[str, ...]]:
        """(pattern, owners): what the shipped data keeps of a line; no owner is <unknown>."""
        return self.pattern, self.binaries or (UNKNOWN,)


@dataclass
class PoolTagFile:
    """A parsed file: its entries, and the non-comment lines that could not be read as tags
    (line number, text)."""

    source: str
    entries: list[Entry] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------- parsing


def decode(data: bytes) -> str:
    """Text of a pooltag file: BOM-marked UTF-8/16, else UTF-8, else latin-1 (never fails)."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data.decode(codec, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_file(
    path: str | os.PathLike[str], only_tags: Iterable[str] | None = None
) -> PoolTagFile:
    """Parse a file from disk. poolmon's localtag.txt names drivers without an extension."""
    bare_names = Path(path).name.lower() == "localtag.txt"
    return parse(decode(Path(path).read_bytes()), str(path), bare_names=bare_names,
                 only_tags=only_tags)


def parse(
    text: str, source: str, *, bare_names: bool = False, only_tags: Iterable[str] | None = None
) -> PoolTagFile:
    """Parse pooltag.txt text. With bare_names, a lone word after the tag is a driver name.
    With only_tags (displayed tags), lines that cannot concern them are skipped unparsed: a
    query needs a handful of tags, and parsing the whole list costs more than the query."""
    result = PoolTagFile(source)
    wanted = None if only_tags is None else {t[:4] for t in only_tags}
    # Split on CR, LF and CRLF only: str.splitlines() would also break at \x85, \x0c, ...
    for number, raw in enumerate(_LINE_BREAK.split(text), start=1):
        if wanted is not None and not _may_concern(raw, wanted):
            continue
        line = raw.rstrip()
        if not line or _COMMENT.match(line):
            continue
        entry = parse_line(line, source, number, bare_names=bare_names)
        if entry is None:
            result.skipped.append((number, raw))
        else:
            result.entries.append(entry)
    return result


def _may_concern(raw: str, wanted: set[str]) -> bool:
    head = raw[:4]
    if "*" in head or "?" in head:
        return True  # a wildcard line may match any wanted tag
    # Tags shorter than 4 characters are written unpadded ("PX1 - ...", "eMyS- ...").
    return head in wanted or head.split("-")[0].rstrip().ljust(4) in wanted


def parse_line(line: str, source: str, number: int, *, bare_names: bool = False) -> Entry | None:
    """One tag line as an Entry, or None for free text and indented orphans."""
    split = _split_tag(line)
    if split is None:
        return None
    pattern, rest = split
    fields = _FIELD_SEP.split(rest, maxsplit=1)
    first = fields[0].strip()
    if len(fields) == 2:
        binary_field, description = first, fields[1].strip() or None
    elif looks_like_binary(first, bare_names=bare_names):
        binary_field, description = first, None
    else:  # `ATmp - AppTag mount point`: the only field is a description
        binary_field, description = "", first or None
    binaries = tuple(b for b in _BINARY_SPLIT.split(binary_field) if b)
    return Entry(pattern, binary_field, binaries, description, source, number)


def _split_tag(line: str) -> tuple[str, str] | None:
    """(tag pattern, text after the dash). The tag is the first 4 characters; a shorter tag
    written without padding (`PX1 - ...`, `Io - ...`) is padded with spaces."""
    if line[0].isspace():  # indented text continues or annotates another line
        return None
    m = _LEAD_DASH.match(line, 4)
    if m:
        return line[:4], m["rest"]
    m = _SHORT_TAG.match(line)
    if m:
        return m["tag"].ljust(4), m["rest"]
    return None


def looks_like_binary(text: str, *, bare_names: bool = False) -> bool:
    """True when every owner in text looks like a binary rather than description words."""
    parts = [p for p in _BINARY_SPLIT.split(text.strip()) if p]
    return bool(parts) and all(_is_binary(p, bare_names) for p in parts)


def _is_binary(part: str, bare_names: bool) -> bool:
    if any(form.fullmatch(part) for form in _BINARY_FORMS):
        return True
    if part.lower() in _MODULE_FILES or part.lower() in _LIBRARIES:
        return True
    return bare_names and bool(_BARE_NAME.fullmatch(part))


# ------------------------------------------------------------------ binary normalisation


def binary_file_name(binary: str) -> str | None:
    """The driver file an owner names, lowercase: `nt!mm` -> ntoskrnl.exe, `win32k!Foo` ->
    win32k.sys, `tcpip.sys` -> tcpip.sys; None for `<unknown>`, static libraries, free text."""
    name = binary.strip().lower()
    if name.startswith("<") and name.endswith(">"):
        inner = name[1:-1]
        return inner if inner.endswith(_FILE_EXTENSIONS) else None
    if "!" in name:
        name = name.split("!", 1)[0]
    if name.endswith(_FILE_EXTENSIONS):
        return name
    if name in _MODULE_FILES:
        return _MODULE_FILES[name]
    if name.endswith(".lib") or name in _LIBRARIES or not _BARE_NAME.fullmatch(name):
        return None
    return name + ".sys"  # module names (`dxgkrnl!x`) and localtag.txt driver names


def binary_file_names(entry: Entry) -> list[str]:
    """The driver files an entry names, lowercase, without duplicates, in order."""
    names = (binary_file_name(b) for b in entry.binaries)
    return list(dict.fromkeys(n for n in names if n))


# ------------------------------------------------------------------------------ lookup


def _tag_key(tag: str | int) -> str:
    """A tag as 4 raw characters (latin-1 of its bytes), the form patterns are written in.
    Accepts the displayed form (`Irp `, `PX1`, `\\x01abc`) or the ULONG."""
    if isinstance(tag, int):
        return tag_bytes(tag & ~PROTECTED_POOL).decode("latin-1")
    try:
        return tag_bytes(str_to_tag(tag)).decode("latin-1")
    except ValueError:
        return tag  # not a tag poolmon could show; it can still equal a pattern


def _pattern_matches(pattern: str, key: str) -> bool:
    """`?` is one character and `*` matches the rest, whatever follows it in the file. (A
    plain loop: compiling a regex for each of the list's wildcard lines costs a query more
    than matching them all.)"""
    for i, ch in enumerate(pattern):
        if ch == "*":
            return True
        if i >= len(key) or (ch != "?" and ch != key[i]):
            return False
    return len(key) == len(pattern)


def _specificity(entry: Entry) -> tuple[int, bool]:
    """Sort key: more literal characters first, then `?` patterns before `*` patterns."""
    literal = entry.pattern.split("*", 1)[0]
    return -sum(ch != "?" for ch in literal), "*" in entry.pattern


class PoolTagDb:
    """Several parsed files merged; earlier files take priority. A fact (pattern, owners)
    already given by an earlier file is not repeated from a later one."""

    def __init__(self, files: Iterable[PoolTagFile]) -> None:
        self.files = list(files)
        self._exact: dict[str, list[Entry]] = {}
        self._wild: list[Entry] = []
        seen: set[tuple[str, tuple[str, ...]]] = set()
        for file in self.files:
            facts = {e.fact for e in file.entries}
            for entry in file.entries:
                if entry.fact not in seen:  # repeats inside one file are kept
                    self._add(entry)
            seen |= facts
        self._wild.sort(key=_specificity)  # stable: priority kept

    def _add(self, entry: Entry) -> None:
        if entry.is_wildcard:
            self._wild.append(entry)
        else:
            self._exact.setdefault(entry.pattern.ljust(4), []).append(entry)

    @property
    def entries(self) -> list[Entry]:
        exact = [e for group in self._exact.values() for e in group]
        return exact + self._wild

    def lookup(self, tag: str | int) -> list[Entry]:
        """Entries for a tag (case-sensitive): exact patterns first, then wildcard patterns,
        more specific first."""
        key = _tag_key(tag)
        wild = [e for e in self._wild if _pattern_matches(e.pattern, key)]
        return self._exact.get(key, []) + wild


# ------------------------------------------------------------------------------ sources

# Debugging Tools for Windows keep a pooltag.txt per architecture, relative to the system
# drive; poolmon reads localtag.txt from System32 or the current directory.
_DEBUGGERS = ("Windows Kits", "10", "Debuggers")
_DEBUGGER_ARCHES = ("x64", "x86", "arm64")
_PROGRAM_DIRS = ("Program Files (x86)", "Program Files")
_SYSTEM_COPIES: tuple[tuple[str, ...], ...] = (
    *(
        (program, *_DEBUGGERS, arch, "triage", "pooltag.txt")
        for program in _PROGRAM_DIRS
        for arch in _DEBUGGER_ARCHES
    ),
    ("Windows", "System32", "localtag.txt"),
)


def shipped_path() -> Path | None:
    """The facts file installed as tagfind.data/pooltag.txt (or data/ in a source tree)."""
    folder = shipped_data_dir()
    if folder is None:
        return None
    candidate = folder / "pooltag.txt"
    return candidate if _present(candidate) else None


def shipped_data_dir() -> Path | None:
    """The folder of the tagfind.data package on disk (data/ of a source tree when tagfind is
    run from one uninstalled); None when it is not a folder (a zipped install). Found through
    the package's __path__ rather than importlib.resources, whose import (with zipfile and
    tempfile) took 8-11 ms of every query."""
    try:
        import tagfind.data as data
    except (ImportError, OSError):  # a source checkout not installed, or one we may not read
        folder = Path(__file__).resolve().parents[1] / "data"
        return folder if os.path.isdir(folder) else None  # (isdir never raises)
    for location in getattr(data, "__path__", ()):
        if os.path.isdir(location):
            return Path(location)
    return None


def _resolve_nocase(base: Path, parts: Sequence[str]) -> Path | None:
    """base/parts, matching each component case-insensitively (an offline Windows tree on
    a Linux mount is case-sensitive, Windows names are not)."""
    path = base
    for part in parts:
        if (path / part).exists():
            path = path / part
            continue
        try:
            names = [p for p in path.iterdir() if p.name.lower() == part.lower()]
        except OSError:
            return None
        if not names:
            return None
        path = names[0]
    return path


def _system_base(root: str | None) -> Path | None:
    if root is not None:
        return Path(root)
    if os.name == "nt":
        return Path(os.environ.get("SystemDrive", "C:") + "\\")
    return None


def default_sources(root: str | None = None) -> list[str]:
    """pooltag files present, highest priority first: the Debugging Tools copies and
    localtag.txt files (newer than ours, and with descriptions), then the shipped facts."""
    found: list[Path] = []
    base = _system_base(root)
    if base is not None:
        found += [p for parts in _SYSTEM_COPIES if (p := _resolve_nocase(base, parts))]
    found.append(Path.cwd() / "localtag.txt")
    shipped = shipped_path()
    if shipped is not None:
        found.append(shipped)
    return list(dict.fromkeys(str(p) for p in found if _present(p)))


def _present(path: Path) -> bool:
    """Whether an optional pooltag file is there to read. A folder we may not look into
    (Path.is_file raises for EACCES: the current directory of a user who dropped privileges)
    holds none for us."""
    try:
        return path.is_file()
    except OSError:
        return False


def load_db(
    extra_files: Sequence[str] = (), root: str | None = None,
    only_tags: Iterable[str] | None = None, cache: Any = None,
) -> PoolTagDb:
    """Files named by the user (--pooltag) first, then default_sources(root). With only_tags,
    the db answers lookups for those tags only (and loads in a fraction of the time); with a
    `cache` too (a pooltag_cache.LineCache), files parsed before are not read again."""
    if only_tags is not None:
        only_tags = list(only_tags)

    def read(path: str) -> PoolTagFile:
        if cache is None or only_tags is None:
            return read_file(path, only_tags)
        from .pooltag_cache import read_file_cached

        return read_file_cached(path, only_tags, cache)

    files = []
    for path in extra_files:
        if not Path(path).is_file():
            raise ValueError(f"pooltag file not found: {path}")
        try:
            files.append(read(path))
        except OSError as exc:
            raise ValueError(f"cannot read pooltag file {path}: {exc.strerror or exc}") from exc
    for path in default_sources(root):
        try:
            files.append(read(path))
        except OSError:
            continue  # a system copy we may not read is no reason to fail
    return PoolTagDb(files)
