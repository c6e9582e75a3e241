"""Which files tagfind scans: this module owns the choice of source files, nothing else.

Three ways to name them:
- the live system (Windows only, the default): System32\\drivers and the driver store
  (recursive), the kernel images at the top of System32 (ntoskrnl.exe, hal.dll, win32k*.sys,
  ci.dll, ...), and the drivers that services point at from anywhere else (ImagePath);
- `root`: the same layout in a mounted or copied Windows tree, each path component matched
  without regard to case, as Windows does (a Linux mount is case-sensitive);
- `drivers`: folders of drivers, walked recursively.

A file counts when it is a kernel image: a `.sys` file always; any other file only when it is a
PE image whose optional header says the native subsystem (decided from its first 4 KB).
`all_pe=True` takes every PE file instead (for benchmarks on trees of user-mode binaries).
The walk never follows a symlink loop and never stops on an unreadable directory or file: those
land in `SourceSet.skipped` with a reason.
"""

from __future__ import annotations

import fnmatch
import os
import struct
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

IMAGE_SUBSYSTEM_NATIVE = 1
HEADER_READ = 4096
_MAX_E_LFANEW = 1 << 20  # a header further in than this is not a real image
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0)  # O_BINARY: Windows, no newline mangling
_MAX_DEPTH = 64  # directory depth limit when the file system gives no inode numbers

# Top-level System32 files that are kernel images (or load into the kernel). Globs, matched
# without regard to case; a non-.sys match still has to be a native-subsystem PE.
SYSTEM32_KERNEL_IMAGES: tuple[str, ...] = (
    "ntoskrnl.exe",
    "ntkrnl*.exe",  # ntkrnlpa.exe, ntkrnlmp.exe on older and 32-bit systems
    "ntkrpamp.exe",
    "ntkrla57.exe",  # 5-level paging kernel
    "hal*.dll",
    "kd*.dll",  # kdcom.dll, kdnet.dll, kdstub.dll, kd_02_*.dll (kernel debugger transports)
    "ci.dll",
    "bootvid.dll",
    "pshed.dll",
    "clfs.sys",
    "cng.sys",
    "mcupdate_*.dll",
    "cdd.dll",  # canonical display driver (session space)
    "tsddd.dll",
    "atmfd.dll",
    "*.sys",  # win32k.sys, win32kbase.sys, win32kfull.sys, win32kns.sys, ...
)

# Trees walked recursively, relative to the Windows directory.
SYSTEM_TREES: tuple[tuple[str, ...], ...] = (
    ("System32", "drivers"),
    ("System32", "DriverStore", "FileRepository"),
)

# Files that are never PE images: their header is not worth a read (the driver store is mostly
# these, and reading thousands of headers on every query would cost real time on Windows).
NOT_PE_EXTENSIONS = frozenset(
    ".inf .cat .pnf .ini .txt .log .xml .json .htm .html .chm .pdf .rtf .png .bmp .ico .jpg"
    " .jpeg .gif .cab .zip .msi .mof .mfl .man .cer .p7b .etl .evtx .ttf .otf .fon .mui"
    " .reg .cfg .conf .md .csv .dat .bin .fw .hex .db .sqlite3 .wav .mp4".split()
)


class SourcesError(Exception):
    """No usable source of files; the message is one line for the user."""


# A header verdict: a file's (size, mtime_ns) when its header was read, and the Subsystem it
# gave (None: not a PE image).
Verdict = tuple[int, int, int | None]

# On POSIX a directory entry's stat is a stat of the file. On Windows it comes from the
# directory listing, which can lag behind the file itself (a hard link changed through its
# other name), so the refresh must not take it for its no-change check there. (A verdict is
# still taken by it: a stale entry can only keep a file's old verdict, whether it is a PE
# image, until its listing catches up; the refresh then stats the file itself.)
ENTRY_STAT_IS_THE_FILES = os.name != "nt"


@dataclass
class SourceSet:
    """The files to scan (absolute, sorted, one per real file) and what was passed over.

    `verdicts` holds the header verdict of every file found in a folder whose header decided
    (not a .sys), when discover was given a cache of them: the cache's own where size and
    mtime still matched, else what a read gave (`headers_read` of those). `walked_ns` is when
    the walk began (no verdict is older). `stats` (POSIX only) the stats behind the taken
    files' verdicts, which the refresh need not repeat."""

    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    headers_read: int = 0
    walked_ns: int = 0
    stats: dict[str, os.stat_result] = field(default_factory=dict)


def discover(
    root: str | None = None,
    drivers: Sequence[str] = (),
    all_pe: bool = False,
    on_windows: bool | None = None,
    verdicts: Mapping[str, Verdict] | None = None,
) -> SourceSet:
    """The kernel images to scan: under `root` (a Windows tree), in `drivers` folders, or, when
    neither is given, on the live Windows system. Raises SourcesError with one line when there
    is nothing to look at (a missing folder, no Windows here).

    verdicts: header verdicts of earlier walks (the index keeps them, index/pe_headers.py).
    A file found in a folder with the size and mtime of its verdict is judged by it instead of
    by opening it again. On Linux, from the page cache, the open and read cost about what the
    stat does; on Windows the size and mtime come with the directory listing, so the driver
    store's DLLs and EXEs are not opened at all. The refresh trusts the same check to call a
    file unchanged. Given (even empty), the walk's verdicts come back in the SourceSet for
    the cache."""
    if on_windows is None:
        on_windows = os.name == "nt"
    walker = _Walker(all_pe, verdicts)
    if root is not None:
        _add_windows_tree(walker, _windows_dir_under(root))
    for folder in drivers:
        _add_drivers_folder(walker, folder)
    if root is None and not drivers:
        if not on_windows:
            raise SourcesError("no Windows here: use --root DIR (a Windows tree) or --drivers DIR")
        windows_dir = _live_windows_dir()
        _add_windows_tree(walker, windows_dir)
        for path in service_image_paths(windows_dir):
            walker.add_file(path, explicit=True)
    return walker.result()


def is_kernel_image(path: str, all_pe: bool = False) -> bool:
    """True for a .sys file, or a PE image with the native subsystem (any PE when all_pe).
    Raises OSError when the file cannot be read."""
    if path.lower().endswith(".sys"):
        return True
    return _takes(pe_subsystem(path), all_pe)


def _takes(subsystem: int | None, all_pe: bool) -> bool:
    """Whether a file that is not a .sys, with this header Subsystem (None: no PE image), is
    a kernel image to scan."""
    return subsystem is not None and (all_pe or subsystem == IMAGE_SUBSYSTEM_NATIVE)


def pe_subsystem(path: str) -> int | None:
    """The optional header's Subsystem, or None when the file is not a PE image.
    Reads the first 4 KB (one more small read only for an unusually placed header), through
    the OS calls themselves: a query reads the headers of every file in the folders, and a
    buffered file object costs several times the read."""
    fd = os.open(path, _READ_FLAGS)
    try:
        head = os.read(fd, HEADER_READ)
        if len(head) < 0x40 or head[:2] != b"MZ":
            return None
        (e_lfanew,) = struct.unpack_from("<I", head, 0x3C)
        # PE\0\0 (4) + file header (20) + optional header up to Subsystem (68) + 2 bytes
        need = e_lfanew + 4 + 20 + 70
        if need > len(head):
            if e_lfanew > _MAX_E_LFANEW:
                return None
            os.lseek(fd, e_lfanew, os.SEEK_SET)
            head = b"\0" * e_lfanew + os.read(fd, 4 + 20 + 70)
            if len(head) < need:
                return None
    finally:
        os.close(fd)
    if head[e_lfanew : e_lfanew + 4] != b"PE\0\0":
        return None
    optional = e_lfanew + 24
    (magic,) = struct.unpack_from("<H", head, optional)
    if magic not in (0x10B, 0x20B):  # PE32, PE32+
        return None
    # Subsystem sits at the same offset (68) in both optional header formats.
    (subsystem,) = struct.unpack_from("<H", head, optional + 68)
    return subsystem


# --- where the trees are -------------------------------------------------------------------


def _windows_dir_under(root: str) -> str:
    """The Windows directory of a tree: `root` may be a drive root (holding Windows\\), the
    Windows directory itself, or its System32."""
    if not os.path.isdir(root):
        raise SourcesError(f"--root: not a directory: {root}")
    root = os.path.abspath(root)
    for parts in (("Windows",), ()):
        candidate = resolve_nocase(root, parts)
        if candidate and resolve_nocase(candidate, ("System32",)):
            return candidate
    if resolve_nocase(root, ("drivers",)) or resolve_nocase(root, ("ntoskrnl.exe",)):
        return os.path.dirname(root)  # root is System32; its parent is the Windows directory
    raise SourcesError(f"--root: no Windows\\System32 under {root}")


def _live_windows_dir() -> str:
    windows_dir = os.environ.get("SystemRoot") or os.environ.get("windir") or r"C:\Windows"
    if not os.path.isdir(windows_dir):
        raise SourcesError(f"Windows directory not found: {windows_dir}")
    return windows_dir


def _system32_name(windows_dir: str) -> str:
    # A 32-bit Python on 64-bit Windows sees SysWOW64 under the name System32; the real
    # System32 (where the drivers are) is visible to it only as Sysnative.
    if os.name == "nt" and sys.maxsize <= 2**32:
        if os.path.isdir(os.path.join(windows_dir, "Sysnative")):
            return "Sysnative"
    return "System32"


def resolve_nocase(base: str, parts: Sequence[str]) -> str | None:
    """base/parts with each component matched without regard to case (exact name first, so a
    tree that already matches costs one stat), or None when some component is missing."""
    path = base
    for part in parts:
        exact = os.path.join(path, part)
        if os.path.lexists(exact):
            path = exact
            continue
        try:
            names = sorted(os.listdir(path))
        except OSError:
            return None
        folded = part.casefold()
        match = next((name for name in names if name.casefold() == folded), None)
        if match is None:
            return None
        path = os.path.join(path, match)
    return path


def _add_windows_tree(walker: _Walker, windows_dir: str) -> None:
    system32_name = _system32_name(windows_dir)
    system32 = resolve_nocase(windows_dir, (system32_name,))
    if system32 is None:
        raise SourcesError(f"no System32 under {windows_dir}")
    for parts in SYSTEM_TREES:
        tree = resolve_nocase(windows_dir, (system32_name, *parts[1:]))
        if tree is not None and os.path.isdir(tree):
            walker.walk(tree)
    for path in _top_level_kernel_images(walker, system32):
        walker.add_file(path)


def _top_level_kernel_images(walker: _Walker, system32: str) -> Iterator[str]:
    try:
        names = os.listdir(system32)
    except OSError as exc:
        walker.skip(system32, _reason("unreadable directory", exc))
        return
    for name in names:
        lower = name.lower()
        if any(fnmatch.fnmatchcase(lower, pattern) for pattern in SYSTEM32_KERNEL_IMAGES):
            path = os.path.join(system32, name)
            if os.path.isfile(path):
                yield path


def _add_drivers_folder(walker: _Walker, folder: str) -> None:
    if os.path.isfile(folder):
        walker.add_file(os.path.abspath(folder), explicit=True)
    elif os.path.isdir(folder):
        walker.walk(os.path.abspath(folder))
    else:
        raise SourcesError(f"--drivers: not a directory: {folder}")


# --- services (live Windows only) ----------------------------------------------------------

_KERNEL_SERVICE_TYPES = (1, 2)  # SERVICE_KERNEL_DRIVER, SERVICE_FILE_SYSTEM_DRIVER


def service_image_paths(windows_dir: str) -> list[str]:
    """Files that kernel-driver services point at (HKLM\\...\\Services\\*\\ImagePath), so a
    third-party driver installed outside System32\\drivers is found too. Empty off Windows."""
    try:
        import winreg
    except ImportError:
        return []
    found: list[str] = []
    key_path = r"SYSTEM\CurrentControlSet\Services"
    try:
        services = winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, key_path)
    except OSError:
        return []
    with services:
        for index in range(100_000):
            try:
                name = winreg.EnumKey(services, index)
            except OSError:
                break
            image = _service_image(winreg, services, name)
            if image is not None:
                path = image_path_to_file(image, windows_dir)
                if path is not None and os.path.isfile(path):
                    found.append(path)
    return found


def _service_image(winreg, services, name: str) -> str | None:
    try:
        with winreg.OpenKey(services, name) as key:
            kind, _ = winreg.QueryValueEx(key, "Type")
            if kind not in _KERNEL_SERVICE_TYPES:
                return None
            image, _ = winreg.QueryValueEx(key, "ImagePath")
            return image if isinstance(image, str) else None
    except OSError:
        return None


def image_path_to_file(image_path: str, windows_dir: str) -> str | None:
    """A service ImagePath as the kernel reads it -> a file path. Forms: `\\SystemRoot\\...`,
    `%SystemRoot%\\...`, `System32\\drivers\\x.sys` (relative to the Windows directory),
    `\\??\\C:\\...`, `C:\\...`, quoted or not."""
    text = image_path.strip().strip('"')
    if not text:
        return None
    lower = text.lower()
    for prefix in ("\\systemroot\\", "%systemroot%\\", "%windir%\\"):
        if lower.startswith(prefix):
            return _win_join(windows_dir, text[len(prefix) :])
    for prefix in ("\\??\\", "\\\\?\\"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    if len(text) >= 3 and text[1] == ":" and text[2] in "\\/":
        return text
    if text.startswith("\\"):  # some other NT namespace path: not a file we can open
        return None
    return _win_join(windows_dir, text)


def _win_join(base: str, relative: str) -> str:
    return os.path.join(base, *[part for part in relative.split("\\") if part])


# --- the walk ------------------------------------------------------------------------------


def _printable_path(path: str) -> str:
    """path itself when it encodes as UTF-8; else its bytes with the bad ones escaped."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def _reason(what: str, exc: OSError) -> str:
    return f"{what}: {exc.strerror or exc}"


class _Walker:
    """Collects kernel images from trees and single files, once per real file."""

    def __init__(self, all_pe: bool, verdicts: Mapping[str, Verdict] | None = None) -> None:
        self.all_pe = all_pe
        self._cached = verdicts  # None: no cache, headers are read and nothing is kept
        self._verdicts: dict[str, Verdict] = {}
        self._headers_read = 0
        self._stats: dict[str, os.stat_result] = {}
        self._started_ns = time.time_ns()
        self._by_real: dict[str, str] = {}  # normalised real path -> path as found
        self._skipped: dict[str, str] = {}
        self._walked: set[tuple[int, int]] = set()  # (st_dev, st_ino) of every directory seen

    def skip(self, path: str, reason: str) -> None:
        self._skipped.setdefault(_printable_path(path), reason)

    def result(self) -> SourceSet:
        files = sorted(set(self._by_real.values()))
        stats = {path: self._stats[path] for path in files if path in self._stats}
        return SourceSet(files=files, skipped=sorted(self._skipped.items()),
                         verdicts=self._verdicts, headers_read=self._headers_read,
                         walked_ns=self._started_ns, stats=stats)

    def add_file(self, path: str, explicit: bool = False, real: str | None = None,
                 entry: os.DirEntry | None = None) -> None:
        """Take `path` if it is a kernel image. `real` is its real path when the caller knows
        it (saves a realpath per file, which costs an open on Windows); `entry` its directory
        entry, when it was found in a folder."""
        if not path.isascii() and _printable_path(path) != path:
            # Not valid UTF-8 (possible on Linux mounts): the index (SQLite text) cannot hold
            # the name, so the file is named as skipped instead of failing the whole refresh.
            self.skip(path, "file name is not valid UTF-8")
            return
        try:
            if entry is not None and self._cached is not None:
                take = self._judge(path, entry)
            else:
                take = is_kernel_image(path, self.all_pe)
        except OSError as exc:
            self.skip(path, _reason("unreadable", exc))
            return
        if not take:
            if explicit:
                self.skip(path, "not a kernel image")
            return
        key = os.path.normcase(real or os.path.realpath(path))
        previous = self._by_real.get(key)
        if previous is None or path < previous:
            self._by_real[key] = path

    def _judge(self, path: str, entry: os.DirEntry) -> bool:
        """is_kernel_image for a file found in a folder, by its cached verdict when its size
        and mtime are the verdict's, else by its header (the verdict is kept either way).
        Raises OSError when the file cannot be read."""
        if path.lower().endswith(".sys"):
            return True
        st = entry.stat()
        cached = self._cached.get(path)
        if cached is not None and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            subsystem = cached[2]
        else:
            subsystem = pe_subsystem(path)
            self._headers_read += 1
        self._verdicts[path] = (st.st_size, st.st_mtime_ns, subsystem)
        take = _takes(subsystem, self.all_pe)
        if take and ENTRY_STAT_IS_THE_FILES:
            self._stats[path] = st
        return take

    def walk(self, top: str) -> None:
        real_top = os.path.realpath(top)
        self._walk_dir(top, real_top, ancestors=())

    def _walk_dir(self, path: str, real: str, ancestors: tuple[tuple[int, int], ...]) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            self.skip(path, _reason("unreadable directory", exc))
            return
        ident = (st.st_dev, st.st_ino)
        if st.st_ino == 0:  # no identity on this file system: only the depth limit guards
            if len(ancestors) >= _MAX_DEPTH:
                self.skip(path, "too deep (symlink loop?)")
                return
        elif ident in ancestors:
            self.skip(path, "symlink loop")
            return
        elif ident in self._walked:
            return  # reached again through another link: its files are already taken
        self._walked.add(ident)
        try:
            with os.scandir(path) as entries:
                children = sorted(entries, key=lambda entry: entry.name)
        except OSError as exc:
            self.skip(path, _reason("unreadable directory", exc))
            return
        chain = (*ancestors, ident)
        for entry in children:
            self._visit(entry, real, chain)

    def _visit(self, entry: os.DirEntry, real_parent: str, chain) -> None:
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir()  # follows links
            is_file = not is_dir and entry.is_file()
        except OSError as exc:
            self.skip(entry.path, _reason("unreadable", exc))
            return
        real = os.path.realpath(entry.path) if is_link else _join_name(real_parent, entry.name)
        if is_dir:
            self._walk_dir(entry.path, real, chain)
        elif is_file:
            if self._is_worth_reading(entry.name):
                self.add_file(entry.path, real=real, entry=entry)
        elif is_link and not os.path.exists(entry.path):
            self.skip(entry.path, "broken symlink")
        elif is_link:
            self.skip(entry.path, "symlink to something that is not a file")

    def _is_worth_reading(self, name: str) -> bool:
        ext = _extension(name).lower()
        return ext == ".sys" or ext not in NOT_PE_EXTENSIONS


# A query walks every file of the folders: the two helpers below do what os.path.join and
# os.path.splitext do for a directory entry's name (no separator in it), at a fraction of
# their cost.
_SEPARATORS = tuple(sep for sep in (os.sep, os.altsep) if sep)


def _join_name(folder: str, name: str) -> str:
    return folder + name if folder.endswith(_SEPARATORS) else folder + os.sep + name


def _extension(name: str) -> str:
    """os.path.splitext(name)[1]: from the last dot, unless only dots precede it."""
    dot = name.rfind(".")
    return name[dot:] if dot > 0 and name[:dot].lstrip(".") else ""
