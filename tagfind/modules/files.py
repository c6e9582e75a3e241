"""`--modules-file FILE`: a module list from a file, told by its content: a tagfind pool
snapshot that recorded the module list (`"modules"`), or WinDbg `lm` / `lmf` / `lmv` text.
Each reported name is mapped to a file under the given Windows directory (the `--root`
tree's, or this system's) when it can be."""

from __future__ import annotations

import json
from pathlib import Path

from .model import LoadedModule, ModuleList, ModulesError
from .ntpath import nt_name_to_path
from .windbg import looks_like_lm, parse_lm

MAX_BYTES = 64 << 20  # a module list is kilobytes; refuse to read a disk image by mistake


def load_modules_file(
    path: str | Path, windows_dir: str | None = None, *, under_root: bool = False
) -> ModuleList:
    """Read a module list; raises ModulesError with one line when the file is not one."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_BYTES:
            raise ModulesError(f"{path}: {size} bytes is too large for a module list")
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModulesError(f"cannot read module list {path}: {exc.strerror or exc}") from None
    text = _decode(data)
    if text.lstrip().startswith("{"):
        modules_list = _from_snapshot(text, str(path))
    elif looks_like_lm(text):
        modules_list = ModuleList(parse_lm(text), source=f"WinDbg lm {path}")
    else:
        raise ModulesError(f"{path}: neither WinDbg lm output nor a tagfind snapshot")
    if not modules_list.modules:
        raise ModulesError(f"{path}: no loaded modules found")
    if windows_dir is not None:
        modules_list.modules = [
            LoadedModule(m.reported, m.path or nt_name_to_path(m.reported, windows_dir,
                                                               under_root=under_root),
                         m.base, m.size, m.load_order)
            for m in modules_list.modules
        ]
    return modules_list


def _from_snapshot(text: str, name: str) -> ModuleList:
    from ..pool.snapshot import modules_from_document

    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModulesError(f"{name}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
    modules = modules_from_document(document, name)
    if modules is None:
        raise ModulesError(f"{name}: this snapshot recorded no module list")
    return modules


def _decode(data: bytes) -> str:
    # WinDbg logs (.logopen) are often UTF-16 with a BOM; pasted text is UTF-8.
    for bom, codec in ((b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"),
                       (b"\xef\xbb\xbf", "utf-8-sig")):
        if data.startswith(bom):
            return data.decode(codec, errors="replace")
    return data.decode("utf-8", errors="replace")
