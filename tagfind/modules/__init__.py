"""Loaded kernel modules: which drivers are running (or were, in a dump or a ticket).

- model.py: LoadedModule, ModuleList (and matching indexed files against it), ModulesError;
- live.py: NtQuerySystemInformation(SystemModuleInformation = 11) and the parsing of the
  RTL_PROCESS_MODULES buffer it fills (x64, x86, ARM64);
- ntpath.py: the names the kernel reports (`\\SystemRoot\\...`, `\\??\\C:\\...`,
  `System32\\...`) as file paths, on this system or under a `--root` tree;
- windbg.py: WinDbg `lm`, `lmf` and `lmv` text;
- files.py: `--modules-file FILE`: WinDbg text or a tagfind snapshot that recorded modules.
"""

from .files import load_modules_file
from .live import parse_process_modules, read_loaded_modules
from .model import LoadedModule, ModuleList, ModulesError
from .ntpath import nt_name_to_path
from .windbg import parse_lm

__all__ = [
    "LoadedModule",
    "ModuleList",
    "ModulesError",
    "load_modules_file",
    "nt_name_to_path",
    "parse_lm",
    "parse_process_modules",
    "read_loaded_modules",
]
