"""Kernel module names as file paths.

The loaded module list names images as the loader saw them: `\\SystemRoot\\system32\\
ntoskrnl.exe`, `\\SystemRoot\\System32\\drivers\\x.sys`, `\\??\\C:\\ProgramData\\...\\x.sys`
(a driver outside the Windows directory), `System32\\DriverStore\\...` or `system32\\
drivers\\x.sys` (relative to the Windows directory), sometimes `C:\\Windows\\...` or
`\\Windows\\...` (WinDbg prints these). On a live system these map to files directly; under a
`--root` tree the Windows directory is the tree's, and an absolute `C:\\...` path is taken
from the drive the tree's Windows directory sits on (its parent), matching each component
without regard to case.
"""

from __future__ import annotations

import ntpath
import os

from ..sources import resolve_nocase

# Prefixes that stand for the Windows directory (compared in lower case).
_WINDOWS_DIR_PREFIXES = ("\\systemroot\\", "%systemroot%\\", "%windir%\\", "\\windows\\")
# Prefixes before a drive-letter path.
_DOS_PREFIXES = ("\\??\\", "\\\\?\\", "\\dosdevices\\", "\\global??\\")


def nt_name_to_path(name: str, windows_dir: str, *, under_root: bool = False) -> str | None:
    """The file a kernel module name refers to, or None when it names no file here.

    `windows_dir` is the live Windows directory or the `--root` tree's. With `under_root`, a
    drive path (`C:\\Program Files\\...`) is looked for on the tree's drive (the Windows
    directory's parent) instead of this machine's, and every component is matched without
    regard to case; the result is None when that file is not there."""
    text = name.strip().strip('"').replace("/", "\\")
    if not text:
        return None
    lower = text.lower()
    relative: tuple[str, str] | None = None  # (base, path relative to it)
    for prefix in _WINDOWS_DIR_PREFIXES:
        if lower.startswith(prefix):
            relative = (windows_dir, text[len(prefix):])
            break
    if relative is None:
        for prefix in _DOS_PREFIXES:
            if lower.startswith(prefix):
                text = text[len(prefix):]
                lower = text.lower()
                break
        if len(text) >= 3 and text[1] == ":" and text[2] == "\\":
            if not under_root:
                return text if os.name == "nt" else None
            drive_root = os.path.dirname(os.path.abspath(windows_dir))
            relative = (drive_root, text[3:])
        elif text.startswith("\\"):
            return None  # another NT namespace path (\Device\...): not a file we can open
        elif "\\" in text:
            relative = (windows_dir, text)  # System32\drivers\x.sys
        else:
            return None  # a bare file name: no directory to look in
    base, rest = relative
    parts = [part for part in rest.split("\\") if part and part != "."]
    if not parts or ".." in parts:
        return None
    if under_root or os.name != "nt":
        return resolve_nocase(base, parts)
    return ntpath.join(base, *parts)
