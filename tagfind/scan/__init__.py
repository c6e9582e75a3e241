"""Scanners: one PE file in, the sites where tags reach pool APIs out (one backend per arch).

scan_file never raises for a bad file: the result carries the error instead.
"""

from __future__ import annotations

import gc
import os

from ..apis import APIS_BY_IMPORT, RESOLVER_IMPORTS
from ..pe import PEError, PEImage
from .finder import SiteFinder
from .model import ScanResult, Site, evidence_for

SCANNER_VERSION = 8  # bump when results for the same file may change: invalidates the index

__all__ = ["SCANNER_VERSION", "ScanResult", "Site", "evidence_for", "scan_file", "scan_image"]


def _backend_for(image: PEImage):
    if image.arch == "x64":
        from .x64 import X64Backend

        return X64Backend(image)
    if image.arch == "x86":
        from .x86 import X86Backend

        return X86Backend(image)
    if image.arch == "arm64":
        from .arm64 import Arm64Backend

        return Arm64Backend(image)
    return None


def scan_image(image: PEImage, result: ScanResult) -> None:
    result.arch = image.arch
    result.image_base = image.image_base
    result.notes.extend(image.warnings)
    # A KMDF driver may import no pool API at all (WdfVersionBind is its way to WDF), and a
    # driver may find ExAllocatePool2 by name at run time (MmGetSystemRoutineAddress).
    uses_pool = any(
        name in APIS_BY_IMPORT or name in RESOLVER_IMPORTS for name in image.imports.values()
    ) or any(name in APIS_BY_IMPORT for name in image.exports.values())
    result.imports_pool_api = uses_pool
    if not uses_pool:
        return
    backend = _backend_for(image)
    if backend is None:
        result.error = f"unsupported machine type 0x{image.machine:04x}"
        return
    finder = SiteFinder(backend)
    result.sites = _unique_sites(finder.run())
    result.functions_analysed = len(finder.events)
    if finder.truncated:
        result.notes.append("analysis budget reached: results are partial")


def _unique_sites(sites: list[Site]) -> list[Site]:
    """One site per call instruction. Without .pdata (stripped or damaged) the backends may
    analyse overlapping regions that each report the same call; keep the reading from the
    nearest function start, preferring one whose tag is known."""
    readings: dict[tuple[int, str], list[Site]] = {}
    for site in sites:
        readings.setdefault((site.rva, site.api), []).append(site)
    out: list[Site] = []
    for group in readings.values():
        # The reading of one analysis (one function start) stands whole: several tags at one
        # call are alternatives that analysis proved, not a mix of readings.
        by_function: dict[int | None, list[Site]] = {}
        for site in group:
            by_function.setdefault(site.function, []).append(site)
        best = min(by_function.values(), key=lambda g: (
            all(s.tag is None for s in g), -(g[0].function or 0)))
        out.extend(dict.fromkeys(best))
    return sorted(out, key=lambda s: (s.rva, s.api, -1 if s.tag is None else s.tag))


def scan_file(path: str | os.PathLike[str], data: bytes | None = None) -> ScanResult:
    """Scan one file. Never raises for bad input: errors are reported in the result."""
    result = ScanResult(path=os.fspath(path))
    # The analysis makes millions of short-lived tuples, dicts and states and no reference
    # cycles: reference counting frees them, and the cyclic collector's passes over them
    # (every 700 allocations) cost a tenth of a scan. It runs again once the scan is done.
    collecting = gc.isenabled()
    gc.disable()
    try:
        image = PEImage(path, data)
        scan_image(image, result)
    except PEError as exc:
        result.error = str(exc)
    except (MemoryError, RecursionError) as exc:
        result.error = f"resource limit while scanning: {type(exc).__name__}"
    except Exception as exc:  # a damaged file must never stop a scan of many files
        result.error = f"scanner failure: {type(exc).__name__}: {exc}"
    finally:
        if collecting:
            gc.enable()
    return result
