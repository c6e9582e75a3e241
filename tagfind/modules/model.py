"""A list of loaded modules, wherever it came from, and the question the rest of tagfind asks
of it: is this indexed file one of them?

A module is known by its path when the source gave one (the live list, `lmf`, `lmv`), else
only by its name (`lm` prints the module name: the file name without extension, `nt` for
the kernel). A module whose path maps to a file here matches that file only (compared without
regard to case, as Windows compares); one without matches by file name, else module name.
"""

from __future__ import annotations

import ntpath
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

# Module names WinDbg gives images whose file name differs (the kernel and the HAL are
# renamed at load time; their files have one of these names).
MODULE_ALIASES: dict[str, tuple[str, ...]] = {
    "nt": ("ntoskrnl.exe", "ntkrnlmp.exe", "ntkrnlpa.exe", "ntkrpamp.exe", "ntkrla57.exe"),
    "hal": ("hal.dll", "halmacpi.dll", "halacpi.dll", "halaacpi.dll", "halextintc.dll"),
}


class ModulesError(Exception):
    """A module list could not be read. The message is one line for the user."""


@dataclass(frozen=True)
class LoadedModule:
    """One loaded image. `reported` is the name as the source printed it (a kernel path such
    as `\\SystemRoot\\system32\\ntoskrnl.exe`, or an `lm` module name); `path` is the file
    it maps to here, when that could be told; `base` and `size` when the source gave them."""

    reported: str
    path: str | None = None
    base: int | None = None
    size: int | None = None
    load_order: int | None = None

    @property
    def file_name(self) -> str | None:
        """The file name (with extension) when the source named one."""
        name = ntpath.basename(self.reported.replace("/", "\\"))
        return name if "." in name else None

    @property
    def module_name(self) -> str:
        """The name without extension, as `lm` shows it."""
        return ntpath.splitext(ntpath.basename(self.reported.replace("/", "\\")))[0]


@dataclass
class ModuleList:
    """Modules loaded at one moment on one machine (`source` says where the list came from)."""

    modules: list[LoadedModule] = field(default_factory=list)
    source: str = ""
    machine: str | None = None
    taken_at: datetime | None = None

    def matcher(self) -> ModuleMatcher:
        return ModuleMatcher(self.modules)


class ModuleMatcher:
    """Answers `is this file loaded?` for many files quickly (sets, built once)."""

    def __init__(self, modules: Iterable[LoadedModule]) -> None:
        self.paths: set[str] = set()
        self.files: set[str] = set()
        self.stems: set[str] = set()
        for module in modules:
            if module.path:
                # Known by its file: another file of that name (an older copy in the driver
                # store) is not the loaded one.
                self.paths.add(_key(module.path))
                continue
            name = module.file_name
            if name:
                self.files.add(name.casefold())
            else:
                stem = module.module_name.casefold()
                self.stems.add(stem)
                self.files.update(MODULE_ALIASES.get(stem, ()))

    def __contains__(self, path: str) -> bool:
        if _key(path) in self.paths:
            return True
        base = os.path.basename(path).casefold()
        return base in self.files or os.path.splitext(base)[0] in self.stems

    def loaded(self, paths: Iterable[str]) -> list[str]:
        return [p for p in paths if p in self]


def _key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path)).casefold()
