"""The source and index options every command shares, as one frozen dataclass, and opening the
refreshed index from them: query, --top and any later command get their Driver column from
the same index, refreshed with the same options."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from .errors import Fatal
from .render import echo_refresh_stats

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class SourceOptions:
    """Where the drivers are and where their index lives."""

    root: str | None
    drivers: tuple[str, ...]
    all_pe: bool
    index_path: str | None
    jobs: int | None
    timeout: float
    pooltag_files: tuple[str, ...]
    loaded: bool = False
    modules_file: str | None = None

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SourceOptions:
        """Take this dataclass's fields out of click's parsed parameters (removing them)."""
        return cls(root=params.pop("root"), drivers=tuple(params.pop("drivers")),
                   all_pe=params.pop("all_pe"), index_path=params.pop("index_path"),
                   jobs=params.pop("jobs"), timeout=params.pop("timeout"),
                   pooltag_files=tuple(params.pop("pooltag_files", ())),
                   loaded=params.pop("loaded"), modules_file=params.pop("modules_file"))


_SOURCE_OPTIONS = [
    click.option("--root", type=click.Path(file_okay=False), default=None,
                 help="A mounted or copied Windows tree to scan instead of this system."),
    click.option("--drivers", "drivers", multiple=True, type=click.Path(file_okay=False),
                 help="A folder of drivers to scan (repeatable)."),
    click.option("--all-pe", is_flag=True,
                 help="Scan every PE file in the folders, not only kernel-mode ones."),
    click.option("--index", "index_path", type=click.Path(dir_okay=False), default=None,
                 help="Index file (default: $TAGFIND_INDEX, else in the user's cache directory)."),
    click.option("--jobs", type=click.IntRange(1, 256), default=None,
                 help="Parallel scan processes (default: all cores)."),
    click.option("--timeout", type=click.FloatRange(0.1, 3600), default=60.0,
                 show_default=True, help="Per-file scan time limit in seconds."),
    _POOLTAG_OPTION := click.option(
        "--pooltag", "pooltag_files", multiple=True, type=click.Path(dir_okay=False),
        help="Extra pooltag.txt-style file (repeatable; takes priority)."),
    click.option("--loaded", is_flag=True,
                 help="Only drivers in the loaded module list (live, or --modules-file)."),
    click.option("--modules-file", type=click.Path(dir_okay=False), default=None,
                 help="Loaded modules from WinDbg lm/lmf/lmv output or a tagfind snapshot."),
]


def source_options(func: F | None = None, *, pooltag_input: bool = True) -> Any:
    """Add the shared source/index options to a click command. `pooltag_input=False` leaves
    out --pooltag (for `tagfind export`, where --pooltag names the file written)."""

    def add(target: F) -> F:
        for option in reversed(_SOURCE_OPTIONS):
            if pooltag_input or option is not _POOLTAG_OPTION:
                target = option(target)
        return target

    return add(func) if func is not None else add


@dataclass
class OpenIndex:
    """An index refreshed against the files of the sources (index None: no sources, when the
    command can do without drivers; `note` then says so). `files` are the ones queries look
    at: all of them, or with --loaded only the loaded ones. `loaded` is the module list when
    one is known (--modules-file, --loaded, or live on Windows): the output marks loaded
    drivers from it."""

    index: Any
    files: list[str]
    stats: Any
    note: str | None = None
    empty_reason: str | None = None  # why nothing can be found: 0 files indexed, and why
    loaded: Any = None


NO_DRIVERS_NOTE = ("no drivers were indexed (no Windows here): the Driver(s) column needs "
                   "--drivers DIR or --root DIR")


def load_module_list(src: SourceOptions) -> Any:
    """The loaded module list of --modules-file, or the live one; None when neither is
    asked for. Names map to files under --root when given."""
    if src.modules_file is None and not src.loaded:
        return None
    from .. import modules
    from ..sources import SourcesError, _windows_dir_under

    try:
        windows_dir = _windows_dir_under(src.root) if src.root else None
        if src.modules_file is not None:
            return modules.load_modules_file(src.modules_file, windows_dir,
                                             under_root=src.root is not None)
        if src.root is not None or src.drivers:
            raise Fatal("--loaded with --root or --drivers needs --modules-file FILE (the "
                        "live module list names this system's files)")
        return modules.read_loaded_modules()
    except (modules.ModulesError, SourcesError) as exc:
        raise Fatal(str(exc)) from None


def _live_module_list() -> Any:
    """This system's loaded module list on Windows, None elsewhere or when it cannot be
    read (the output then does not say what is loaded)."""
    import sys

    if sys.platform != "win32":
        return None
    from .. import modules

    try:
        return modules.read_loaded_modules()
    except modules.ModulesError:
        return None


def _live_module_files() -> list[str]:
    """On live Windows, the loaded drivers are sources too (they may live anywhere:
    ProgramData, Program Files). Any failure only means none are added."""
    import os

    from .. import modules

    try:
        listing = modules.read_loaded_modules()
    except modules.ModulesError:
        return []
    return [m.path for m in listing.modules if m.path and os.path.isfile(m.path)]


def _import_scanner_if_fresh(index_path: str) -> None:
    """A query that may answer early on an index that does not exist yet will scan its
    candidate files in this process: start importing the scanner now (index/workers.py). Not
    on an existing index, where a warm query would only lose time to that import."""
    if not os.path.exists(index_path):
        from ..index.workers import import_scanner_in_background

        import_scanner_in_background()


@contextmanager
def open_index(src: SourceOptions, *, rebuild: bool = False, verbose: int = 0,
               verbose_stats: int | None = None,
               allow_no_sources: bool = False,
               first: Any = None) -> Iterator[OpenIndex]:
    """Discover the source files, open the index and refresh it; index warnings (a damaged
    file found and rebuilt) are printed once when the block ends. With `allow_no_sources`,
    having no Windows here and no --root/--drivers gives an OpenIndex without an index.
    `first` (cli/first.py's EarlyAnswer) may answer during the refresh, from the index as
    far as it is then (index/first.py)."""
    from .. import index as index_mod
    from .. import sources

    if first is not None:
        _import_scanner_if_fresh(src.index_path or index_mod.default_index_path())
    loaded = load_module_list(src)
    index_path = src.index_path or index_mod.default_index_path()
    # What earlier walks read in the files' headers (a rebuild reads them all again).
    read_verdicts = index_mod.read_verdicts
    walk_start = time.perf_counter()  # (after the imports, which the index needs anyway)
    verdicts = {} if rebuild else read_verdicts(index_path)
    try:
        source_set = sources.discover(root=src.root, drivers=src.drivers, all_pe=src.all_pe,
                                      verdicts=verdicts)
    except sources.SourcesError as exc:
        if not (allow_no_sources and src.root is None and not src.drivers):
            raise Fatal(str(exc)) from None
        source_set = None
    if source_set is None:
        yield OpenIndex(None, [], None, note=NO_DRIVERS_NOTE)
        return
    if src.root is None and not src.drivers:
        known = set(source_set.files)
        source_set.files += sorted(p for p in _live_module_files() if p not in known)
    walk_seconds = time.perf_counter() - walk_start
    if verbose:
        for path, reason in source_set.skipped:
            click.echo(f"tagfind: skipped {path}: {reason}", err=True)
    files = source_set.files
    if loaded is not None and src.loaded:
        files = loaded.matcher().loaded(files)
    elif loaded is None and src.root is None:
        loaded = _live_module_list()  # on Windows: mark what is loaded
    try:
        with index_mod.Index(index_path) as idx:
            try:
                if first is not None:
                    first.bind(OpenIndex(idx, files, None, loaded=loaded), source_set.files)
                stats = idx.refresh(source_set.files, rebuild=rebuild, jobs=src.jobs,
                                    timeout=src.timeout, first=first, stats=source_set.stats)
                stats.walk_seconds = walk_seconds
                idx.store_pe_headers(verdicts, source_set.verdicts, source_set.walked_ns)
                echo_refresh_stats(stats, verbose if verbose_stats is None else verbose_stats)
                empty = None if source_set.files else _empty_reason(src)
                yield OpenIndex(idx, files, stats, empty_reason=empty, loaded=loaded)
            finally:
                for warning in dict.fromkeys(idx.warnings):
                    click.echo(f"tagfind: warning: {warning}", err=True)
    except index_mod.IndexUnavailable as exc:
        raise Fatal(str(exc)) from None


USER_MODE_LOOK_LIMIT = 20000  # files looked at to tell why a folder gave no kernel image


def _empty_reason(src: SourceOptions) -> str:
    """'0 files were indexed', with a hint when the folders hold user-mode PE files."""
    if src.all_pe:
        return "0 files were indexed: the folders hold no PE files"
    user_mode = _count_user_mode_pe(src.drivers)
    if user_mode:
        return (f"0 files were indexed: {user_mode} PE file(s) were skipped as user-mode; "
                "--all-pe takes them")
    return "0 files were indexed: no kernel-mode PE files in the folders"


def _count_user_mode_pe(folders: tuple[str, ...]) -> int:
    from ..sources import pe_subsystem

    count = looked = 0
    for folder in folders:
        for base, _dirs, names in os.walk(folder):
            for name in names:
                looked += 1
                if looked > USER_MODE_LOOK_LIMIT:
                    return count
                try:
                    count += pe_subsystem(os.path.join(base, name)) is not None
                except OSError:
                    continue
    return count


SAMPLE_PREFIX = "sample:"


def resolve_pool_file(path: str) -> str:
    """A pool file as the user named it; `sample:NAME` is a sample shipped with tagfind
    (data/samples), unless a file of that very name exists."""
    if not path.startswith(SAMPLE_PREFIX) or os.path.exists(path):
        return path
    name = path[len(SAMPLE_PREFIX):]
    folder = samples_dir()
    candidate = os.path.join(folder, name)
    available = sorted(n for n in os.listdir(folder) if n != "README.md")
    if "/" in name or "\\" in name or name not in available:
        raise Fatal(f"no sample named {name!r}; the samples are {', '.join(available)}")
    return candidate


def samples_dir() -> str:
    """The folder of the shipped sample pool logs (tagfind.data/samples, or data/samples in a
    source tree)."""
    from pathlib import Path

    from ..pooltag import shipped_data_dir

    # A source checkout first (data/ beside the package): an editable install of another
    # checkout would otherwise answer for tagfind.data.
    here = Path(__file__).resolve().parents[2] / "data" / "samples"
    if (here / "README.md").is_file() and (here.parent / "pooltag.txt").is_file():
        return str(here)
    installed = shipped_data_dir()
    return str(installed / "samples") if installed is not None else str(here)


def load_pooltag_db(src: SourceOptions, tags: set[str], index: Any = None) -> Any:
    """pooltag.txt facts for these tags (shipped list, the user's copies, --pooltag files);
    with an index, the files' parsed lines are kept in it (pooltag_cache.py)."""
    from ..pooltag import load_db

    cache = index.pooltag_lines() if index is not None else None
    try:
        return load_db(src.pooltag_files, root=src.root, only_tags=sorted(tags), cache=cache)
    except ValueError as exc:
        raise Fatal(str(exc)) from None
