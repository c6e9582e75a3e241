"""How much the scanner proves on real drivers without ground truth, and why the rest is not.

    python bench/real_world.py DIR [--jobs N] [--json OUT] [--compare BEFORE.json]

Scans every PE file under DIR (recursively; other files are skipped, PE files that fail are
counted) and prints per architecture: drivers, drivers that reach pool APIs (imports, run-time
lookup, KMDF bind), pool call sites (distinct (rva, api)), wrapper sites, the share with a proven
tag, sites whose tag may be replaced at run time, drivers with no proven tag, the unproven sites
by cause (bench/_causes.py), KMDF pool-slot table loads against the sites found for them
(bench/_kmdf.py), and the time of the scans.

`--json OUT` saves the figures and one record per site (file, arch, rva, api, tags, cause) so two
runs can be diffed; `--compare BEFORE.json` prints the per-arch changes against an earlier run
and the sites proven before but not now, or whose tags changed. DIR may also be such a JSON
file, to print or compare saved runs without scanning again.

It reads only the stable public pieces: scan_file, PEImage, apis; Site.runtime is optional.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _causes import Classifier  # noqa: E402
from _kmdf import WDF_SLOTS, is_kmdf, table_calls  # noqa: E402

from tagfind.apis import POOL_APIS  # noqa: E402
from tagfind.pe import PEError, PEImage  # noqa: E402
from tagfind.scan import scan_file  # noqa: E402
from tagfind.tags import tag_to_str  # noqa: E402

ARCHES = ("x64", "x86", "arm64")
FORMAT = 1  # of the JSON output
NAMES_SHOWN = 8
EXAMPLES_SHOWN = 3
REGRESSIONS_SHOWN = 40


@dataclass
class Driver:
    """One PE file's scan, as plain data (pickled between processes, saved as JSON)."""

    file: str
    arch: str
    error: str | None = None
    pool: bool = False
    kmdf: bool = False
    seconds: float = 0.0
    code_bytes: int = 0
    sites: list[dict] = field(default_factory=list)
    wdf_table_loads: dict[str, list[int]] = field(default_factory=dict)  # [confirmed, any]


# --- scanning (worker processes) -----------------------------------------------------------
def _is_pe(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"MZ"
    except OSError:
        return False


def _scan(job: tuple[str, str]) -> Driver:
    path, root = job
    name = os.path.relpath(path, root)
    start = time.perf_counter()
    result = scan_file(path)
    seconds = time.perf_counter() - start
    driver = Driver(name, result.arch or "unknown", result.error, result.imports_pool_api,
                    seconds=seconds)
    grouped: dict[tuple[int, str], dict] = {}
    for site in result.sites:
        if site.evidence == "bytes":
            continue
        record = grouped.setdefault((site.rva, site.api), {
            "rva": site.rva, "api": site.api, "evidence": set(), "tags": set(),
            "runtime": set(), "function": site.function, "via": set()})
        record["evidence"].add(site.evidence)
        record["tags"].add(None if site.tag is None else tag_to_str(site.tag))
        record["runtime"].update(_runtime_names(getattr(site, "runtime", ()) or ()))
        record["via"].update(site.via)
    for record in grouped.values():
        tags = record["tags"]
        proven = sorted(t for t in tags if t is not None)
        driver.sites.append({
            "rva": record["rva"], "api": record["api"],
            "evidence": sorted(record["evidence"]),
            "tags": proven if proven else [None],
            "runtime": sorted(record["runtime"]),
            "function": record["function"], "via": sorted(record["via"]),
        })
    driver.sites.sort(key=lambda s: (s["rva"], s["api"]))
    return driver


def _runtime_names(values) -> list[str]:
    return [hex(v) if isinstance(v, int) else str(v) for v in values]


def _classify(job: tuple[str, Driver]) -> Driver:
    """Causes of the unproven direct sites, and KMDF table loads (a second pass, so the scan
    times above are the scanner's alone)."""
    path, driver = job
    if driver.error is not None or driver.arch not in ARCHES:
        return driver
    try:
        image = PEImage(path)
    except PEError as exc:
        for site in driver.sites:
            if site["tags"] == [None]:
                site["cause"], site["detail"], site["insns"] = "other", str(exc), []
        return driver
    driver.code_bytes = sum(s.size for s in image.code_sections)
    driver.kmdf = is_kmdf(image)
    if driver.kmdf:
        try:
            driver.wdf_table_loads = table_calls(image)
        except Exception as exc:  # an estimate must not stop the bench
            print(f"warning: {driver.file}: KMDF count failed: {exc}", file=sys.stderr)
    wrappers = {rva for site in driver.sites for rva in site["via"]}
    classifier = Classifier(image, wrappers)
    for site in driver.sites:
        if site["tags"] != [None] or "wrapper" in site["evidence"]:
            continue
        cause = classifier.classify(site["rva"], site["api"], site["function"])
        site["cause"], site["detail"], site["insns"] = cause.cause, cause.detail, list(
            cause.insns)
    return driver


def run(root: Path, jobs: int) -> tuple[list[Driver], float]:
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file() and _is_pe(str(p)))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        start = time.perf_counter()
        drivers = list(pool.map(_scan, [(p, str(root)) for p in paths], chunksize=2))
        wall = time.perf_counter() - start
        drivers = list(pool.map(_classify, list(zip(paths, drivers, strict=True)), chunksize=2))
    return drivers, wall


# --- figures -------------------------------------------------------------------------------
@dataclass
class ArchFigures:
    arch: str
    drivers: int = 0
    failures: list[str] = field(default_factory=list)
    pool_drivers: int = 0
    sites: int = 0
    wrapper_sites: int = 0
    untagged_sites: int = 0
    proven: int = 0
    runtime: int = 0
    unproven_direct: int = 0
    no_proven: list[str] = field(default_factory=list)
    causes: Counter = field(default_factory=Counter)
    unproven_by_driver: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0
    max_seconds: float = 0.0
    max_file: str = ""
    code_bytes: int = 0
    kmdf: int = 0
    wdf_loads: Counter = field(default_factory=Counter)
    wdf_sites: Counter = field(default_factory=Counter)
    wdf_drivers: Counter = field(default_factory=Counter)  # drivers with confirmed loads

    @property
    def share(self) -> float:
        return self.proven / self.sites if self.sites else 0.0

    def to_json(self) -> dict:
        return {
            "drivers": self.drivers, "failures": self.failures, "pool_drivers": self.pool_drivers,
            "sites": self.sites, "wrapper_sites": self.wrapper_sites,
            "untagged_sites": self.untagged_sites, "proven": self.proven,
            "proven_share": round(self.share, 4), "runtime_sites": self.runtime,
            "unproven_direct": self.unproven_direct, "drivers_without_proven_tag": self.no_proven,
            "causes": dict(self.causes.most_common()),
            "unproven_by_driver": dict(self.unproven_by_driver.most_common()),
            "scan_seconds": round(self.seconds, 3),
            "max_seconds": round(self.max_seconds, 3), "max_file": self.max_file,
            "code_mb": round(self.code_bytes / 1e6, 3), "kmdf_drivers": self.kmdf,
            "wdf_table_loads": dict(self.wdf_loads), "wdf_sites_found": dict(self.wdf_sites),
            "wdf_drivers_with_loads": dict(self.wdf_drivers),
        }


def figures(drivers: list[Driver]) -> dict[str, ArchFigures]:
    out = {arch: ArchFigures(arch) for arch in ARCHES}
    for driver in drivers:
        fig = out.setdefault(driver.arch, ArchFigures(driver.arch))
        if driver.error is not None:
            fig.failures.append(f"{driver.file}: {driver.error}")
            continue
        fig.drivers += 1
        fig.seconds += driver.seconds
        fig.code_bytes += driver.code_bytes
        if driver.seconds > fig.max_seconds:
            fig.max_seconds, fig.max_file = driver.seconds, driver.file
        fig.kmdf += driver.kmdf
        for name, (confirmed, candidates) in driver.wdf_table_loads.items():
            fig.wdf_loads[name] += confirmed
            fig.wdf_loads[name + " (any base)"] += candidates
            fig.wdf_drivers[name] += confirmed > 0
        if not driver.pool:
            continue
        fig.pool_drivers += 1
        any_proven = False
        for site in driver.sites:
            fig.sites += 1
            proven = site["tags"] != [None]
            any_proven |= proven
            fig.proven += proven
            fig.wrapper_sites += "wrapper" in site["evidence"]
            fig.untagged_sites += POOL_APIS[site["api"]].kind == "untagged" \
                if site["api"] in POOL_APIS else 0
            fig.runtime += bool(site["runtime"])
            if site["api"] in WDF_SLOTS.values():
                fig.wdf_sites[site["api"]] += 1
            cause = site.get("cause")
            if cause is not None:
                fig.unproven_direct += 1
                fig.causes[cause] += 1
                fig.unproven_by_driver[driver.file] += 1
                shown = fig.examples.setdefault(cause, [])
                if len(shown) < EXAMPLES_SHOWN:
                    shown.append(_example(driver.file, site))
        if not any_proven:
            fig.no_proven.append(driver.file)
    return {arch: fig for arch, fig in out.items() if fig.drivers or fig.failures}


def _example(file: str, site: dict) -> str:
    detail = f" [{site['detail']}]" if site.get("detail") else ""
    insns = " | ".join(site.get("insns") or ())
    return f"{file} {site['rva']:#x} {site['api']}{detail}: {insns}"


def render(figs: dict[str, ArchFigures], wall: float | None) -> str:
    lines = []
    for arch, fig in figs.items():
        mb = fig.code_bytes / 1e6
        lines.append(f"== {arch} ==")
        lines.append(f"drivers: {fig.drivers}  failures: {len(fig.failures)}  "
                     f"reaching pool APIs: {fig.pool_drivers}  KMDF: {fig.kmdf}")
        for failure in fig.failures[:NAMES_SHOWN]:
            lines.append(f"  failed: {failure}")
        lines.append(f"pool call sites: {fig.sites}  (wrapper sites {fig.wrapper_sites}, "
                     f"untagged APIs {fig.untagged_sites})")
        lines.append(f"proven tag: {fig.proven}/{fig.sites} = {100 * fig.share:.1f}%  "
                     f"(without untagged APIs: {_share_wo_untagged(fig)})  "
                     f"tag may be replaced at run time: {fig.runtime}")
        names = ", ".join(fig.no_proven[:NAMES_SHOWN])
        more = f", ... (+{len(fig.no_proven) - NAMES_SHOWN})" if len(
            fig.no_proven) > NAMES_SHOWN else ""
        lines.append(f"drivers reaching pool APIs with no proven tag: {len(fig.no_proven)}"
                     + (f": {names}{more}" if names else ""))
        top = ", ".join(f"{name} {count}" for name, count in fig.unproven_by_driver.most_common(5))
        lines.append(f"unproven direct sites by cause ({fig.unproven_direct}; most in: {top}):")
        for cause, count in fig.causes.most_common():
            lines.append(f"  {cause:17} {count:5}  {100 * count / fig.unproven_direct:5.1f}%")
            for example in fig.examples.get(cause, []):
                lines.append(f"      e.g. {example}")
        if fig.kmdf:
            loads = ", ".join(f"{name} {fig.wdf_loads.get(name, 0)} in "
                              f"{fig.wdf_drivers.get(name, 0)} drivers "
                              f"({fig.wdf_loads.get(name + ' (any base)', 0)} with any base)"
                              for name in WDF_SLOTS.values())
            found = ", ".join(f"{name} {fig.wdf_sites.get(name, 0)}"
                              for name in WDF_SLOTS.values())
            lines.append(f"KMDF table loads of pool slots: {loads}")
            lines.append(f"KMDF sites found by the scanner: {found}")
        per_mb = f"{mb / fig.seconds:.2f} MB/s" if fig.seconds else "-"
        lines.append(f"time: {fig.seconds:.2f} s of scans (one process each), {mb:.1f} MB of "
                     f"code, {per_mb}; slowest {fig.max_seconds:.2f} s ({fig.max_file})")
        lines.append("")
    if wall is not None:
        lines.append(f"wall time of all scans: {wall:.2f} s")
    return "\n".join(lines)


def _share_wo_untagged(fig: ArchFigures) -> str:
    sites = fig.sites - fig.untagged_sites
    proven = fig.proven - fig.untagged_sites
    return f"{100 * proven / sites:.1f}%" if sites else "-"


# --- saved runs ------------------------------------------------------------------------------
def to_json(drivers: list[Driver], figs: dict[str, ArchFigures], wall: float | None,
            root: str) -> dict:
    sites = []
    for driver in drivers:
        for site in driver.sites:
            sites.append({"file": driver.file, "arch": driver.arch, "rva": site["rva"],
                          "api": site["api"], "evidence": site["evidence"],
                          "tags": site["tags"], "runtime": site["runtime"],
                          "cause": site.get("cause"), "detail": site.get("detail", ""),
                          "insns": site.get("insns", [])})
    return {
        "format": FORMAT, "root": root, "wall_seconds": None if wall is None else round(wall, 3),
        "figures": {arch: fig.to_json() for arch, fig in figs.items()},
        "drivers": [{"file": d.file, "arch": d.arch, "error": d.error, "pool": d.pool,
                     "kmdf": d.kmdf, "seconds": round(d.seconds, 4), "code_bytes": d.code_bytes,
                     "wdf_table_loads": d.wdf_table_loads,
                     "sites": [{k: v for k, v in s.items() if k != "function"}
                               for s in d.sites]}
                    for d in drivers],
        "sites": sites,
    }


def from_json(data: dict) -> tuple[list[Driver], float | None]:
    if data.get("format") != FORMAT:
        raise ValueError("not a real_world.py JSON output (or another format version)")
    drivers = [Driver(d["file"], d["arch"], d["error"], d["pool"], d["kmdf"], d["seconds"],
                      d["code_bytes"], d["sites"], d["wdf_table_loads"])
               for d in data["drivers"]]
    return drivers, data.get("wall_seconds")


def compare(before: list[Driver], after: list[Driver]) -> str:
    old, new = figures(before), figures(after)
    lines = ["== compared with the earlier run =="]
    for arch in ARCHES:
        a, b = old.get(arch), new.get(arch)
        if a is None and b is None:
            continue
        a = a or ArchFigures(arch)
        b = b or ArchFigures(arch)
        lines.append(f"{arch}: sites {a.sites} -> {b.sites}, proven {a.proven} -> {b.proven} "
                     f"({100 * a.share:.1f}% -> {100 * b.share:.1f}%), run-time tags "
                     f"{a.runtime} -> {b.runtime}, drivers without proven tag "
                     f"{len(a.no_proven)} -> {len(b.no_proven)}, scan time "
                     f"{a.seconds:.2f} -> {b.seconds:.2f} s")
        for cause in sorted(set(a.causes) | set(b.causes),
                            key=lambda c: (-a.causes.get(c, 0), c)):
            x, y = a.causes.get(cause, 0), b.causes.get(cause, 0)
            lines.append(f"  {cause:17} {x:5} -> {y:5}  ({y - x:+d})")
    before_sites = _site_tags(before)
    after_sites = _site_tags(after)
    lost, changed = [], []
    for key, tags in sorted(before_sites.items()):
        if not tags:
            continue
        now = after_sites.get(key)
        if not now:
            lost.append((key, tags, now))
        elif not tags <= now:
            changed.append((key, tags, now))
    gained = sum(1 for key, tags in after_sites.items() if tags and not before_sites.get(key))
    lines.append(f"sites proven before and not now: {len(lost)}; whose tags changed: "
                 f"{len(changed)}; newly proven: {gained}")
    for label, rows in (("lost", lost), ("changed", changed)):
        for (file, rva, api), tags, now in rows[:REGRESSIONS_SHOWN]:
            shown = "gone" if now is None else ",".join(sorted(now)) or "unproven"
            lines.append(f"  {label}: {file} {rva:#x} {api}: {','.join(sorted(tags))} -> "
                         f"{shown}")
        if len(rows) > REGRESSIONS_SHOWN:
            lines.append(f"  ... {len(rows) - REGRESSIONS_SHOWN} more {label}")
    return "\n".join(lines)


def _site_tags(drivers: list[Driver]) -> dict[tuple[str, int, str], set[str]]:
    return {(d.file, s["rva"], s["api"]): {t for t in s["tags"] if t is not None}
            for d in drivers for s in d.sites}


def _load(path: Path) -> tuple[list[Driver], float | None]:
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: not a JSON output of real_world.py") from None
    return from_json(data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="folder of drivers, or a JSON file of a run")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, default=None, help="save figures and sites here")
    parser.add_argument("--compare", type=Path, default=None, help="an earlier --json output")
    args = parser.parse_args()
    try:
        if args.dir.is_file():
            drivers, wall = _load(args.dir)
        elif args.dir.is_dir():
            drivers, wall = run(args.dir, max(1, args.jobs))
        else:
            raise ValueError(f"no such folder or file: {args.dir}")
        before = _load(args.compare)[0] if args.compare else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    figs = figures(drivers)
    print(render(figs, wall))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(to_json(drivers, figs, wall, str(args.dir)), handle, indent=1)
    if before is not None:
        print()
        print(compare(before, drivers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
