"""Every speed goal of tagfind as a ratio to a baseline measured in the same run, in one table.

    python bench/speed.py [--only SECTION ...] [--material NAME ...] [--runs 7] [--jobs 2]
                          [--json FILE] [--corpus DIR] [--python PATH]

Material: each half of the shared corpus of real drivers (../shared/corpus: x64-x86-vendor,
arm64-soc; skipped with a note when this machine has none) and Debian's libwine PE tree
(`--all-pe`, bench/_material.py). The baseline of the build and first-answer goals is the
project's sweep (bench/_sweep.py): one process disassembling every executable section of the
same files with capstone, analysing nothing. tagfind runs as a process (`python -m tagfind`)
with this checkout first on PYTHONPATH and bytecode caching on (PYTHONDONTWRITEBYTECODE is
removed from the child's environment, and every command runs once before it is timed).
`--python PATH` runs tagfind's processes with another interpreter, still on this checkout:
say a venv where `pip install .` put the dependencies, as a user's install has them. A
development Python can run code at every start that a user's does not (an editable install's
import finder, other .pth files); the warm rows print the chosen interpreter's bare start.

Sections (--only, repeatable; default all):
  build     cold `tagfind --rebuild-index --jobs N` wall time / the sweep of the same files,
            per material. Goal <= 0.75x (stretch 0.4x).
  analysis  per analysed function, as CPU time in --jobs worker processes: the backend's
            analysis without its decoding / the backend's decoding of that function
            (bench/_probe.py hooks Backend.analyse and the decode functions). Goal <= 3x.
            Also printed: capstone alone decoding the same bytes, and analysis / that.
            On the corpus halves (libwine, a few dozen functions, only without them).
  warm      median of --runs process runs with a warm index of libwine: `None`,
            `None --no-bytes` and `Bthp --no-bytes`, each against `grep -rlF TAG` over the
            tree. Goals <= 100 ms and <= 0.2x grep (5x faster).
  first     fresh index, `tagfind TAG` per corpus half: the time until the first answer row
            on stdout (read as it comes; PYTHONUNBUFFERED=1, as a terminal would get it) / the
            sweep of that folder. Goal <= 0.25x. TAG has call evidence in a full index of the
            folder (fewest drivers, then alphabetical; printed); the complete output is
            compared with the same query on the full index.
  refresh   libwine, warm, nothing changed: the refresh time `tagfind -v` prints, median of
            --runs; and an upper bound, a warm `--no-bytes` query minus python's bare start.
            Goal <= 20 ms.

Times are wall-clock (the analysis section's are CPU time) on a shared machine: the load
average at start and end is printed; read the ratios more than the seconds. Exit status 2 when
a section could not be measured (the message says why, e.g. the analysis hooks moved), else 0
whatever the goals say.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from _material import CORPUS_HALVES, corpus_root, files_under, libwine_tree  # noqa: E402
from _probe import HookError, measure_files  # noqa: E402
from _sweep import SweepResult, sweep  # noqa: E402

SECTIONS = ("build", "analysis", "warm", "first", "refresh")
FORMAT = 1  # of the --json output
CHILD_TIMEOUT = 900.0  # seconds; a child past it is killed and its section reported failed
WARM_QUERIES = (("None", ()), ("None", ("--no-bytes",)), ("Bthp", ("--no-bytes",)))
STATS_LINE = re.compile(r"index: (\d+) files\b.*\((\d+(?:\.\d+)?) ?(ms|s)\b[^)]*\)")
ANALYSIS_BATCHES = 8  # per material, spread over --jobs worker processes
PRINTABLE_TAG = re.compile(r"[A-Za-z0-9]{4}")


# --- what is reported ---------------------------------------------------------------------------
@dataclass
class Row:
    """One measured figure against its goal. `figure` is a ratio (unit "x") or milliseconds;
    `goal` is an upper bound on it; ok is None for figures shown for information."""

    check: str
    material: str
    measured: str
    baseline: str
    figure: float
    unit: str
    goal: float | None = None
    stretch: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool | None:
        return None if self.goal is None else self.figure <= self.goal

    def result(self) -> str:
        if self.ok is None:
            return "info"
        text = "PASS" if self.ok else "FAIL"
        if self.ok and self.stretch is not None:
            text += " (stretch met)" if self.figure <= self.stretch else " (stretch not met)"
        return text


def _fmt(value: float, unit: str) -> str:
    return f"{value:.2f}x" if unit == "x" else f"{value:.0f} ms" if value >= 10 else \
        f"{value:.1f} ms"


@dataclass
class Material:
    name: str
    path: Path
    all_pe: bool
    corpus: bool  # a half of the shared corpus (the first-answer goal is measured there)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", file=sys.stderr)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.check} [{row.material}]: {_fmt(row.figure, row.unit)} "
              f"({row.measured} vs {row.baseline}) {row.result()}", file=sys.stderr)


# --- running tagfind and other programs -----------------------------------------------------------
def child_env() -> dict[str, str]:
    """This checkout first, bytecode caching on (as an installed package has it), no index
    from the environment."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("TAGFIND_INDEX", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


@dataclass
class Ran:
    seconds: float
    code: int
    stdout: str
    stderr: str


def run(cmd: list[str], env: dict[str, str]) -> Ran:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT)
    return Ran(time.perf_counter() - start, proc.returncode, proc.stdout, proc.stderr)


def median_run(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, list[Ran]]:
    """Median wall time of `runs` runs, after one untimed run (bytecode, page cache)."""
    run(cmd, env)
    done = [run(cmd, env) for _ in range(runs)]
    return statistics.median(r.seconds for r in done), done


def stats_of(text: str) -> tuple[int, float] | None:
    """(files, seconds) from tagfind's refresh statistics line, when the text has one."""
    match = STATS_LINE.search(text)
    if match is None:
        return None
    seconds = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
    return int(match.group(1)), seconds


def stats_resolution(text: str) -> float | None:
    """The resolution, in seconds, of the time in tagfind's statistics line."""
    match = STATS_LINE.search(text)
    if match is None:
        return None
    decimals = len(match.group(2).partition(".")[2])
    return 10.0 ** -decimals / (1000 if match.group(3) == "ms" else 1)


@dataclass
class Streamed:
    first_line: float | None  # seconds from start to the first line on stdout
    first_answer: float | None  # ... to the first line that is an answer row
    seconds: float
    code: int
    stdout: str


def streamed(cmd: list[str], env: dict[str, str], is_answer) -> Streamed:
    """Run cmd, reading its stdout line by line as it comes, timing the first line and the
    first line is_answer accepts."""
    env = {**env, "PYTHONUNBUFFERED": "1"}
    lines: list[str] = []
    first_line = first_answer = None
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        timer = threading.Timer(CHILD_TIMEOUT, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                now = time.perf_counter() - start
                line = raw.decode("utf-8", errors="replace")
                lines.append(line)
                if first_line is None:
                    first_line = now
                if first_answer is None and is_answer(line):
                    first_answer = now
            code = proc.wait()
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
    return Streamed(first_line, first_answer, seconds, code, "".join(lines))


# --- the bench --------------------------------------------------------------------------------
class Bench:
    """Materials, and what several sections share: each material's file list, sweep and one
    full index (built by the build section, or on demand)."""

    def __init__(self, args: argparse.Namespace, tmp: Path, report: Report) -> None:
        self.args = args
        self.tmp = tmp
        self.report = report
        self.env = child_env()
        self.python = str(args.python) if args.python else sys.executable
        self._bare_start: float | None = None
        self._files: dict[str, list[str]] = {}
        self._sweeps: dict[str, SweepResult] = {}
        self._indexes: dict[str, Path] = {}
        self.materials = self._materials()

    def _materials(self) -> list[Material]:
        out = []
        corpus = self.args.corpus or corpus_root(ROOT)
        for half in CORPUS_HALVES:
            path = corpus / half if corpus else None
            if path is not None and path.is_dir():
                out.append(Material(half, path, all_pe=False, corpus=True))
            else:
                self.report.note(f"corpus half {half} absent here: its rows are skipped "
                                 "(--corpus DIR or $TAGFIND_CORPUS names the corpus)")
        try:
            out.append(Material("libwine", libwine_tree(), all_pe=True, corpus=False))
        except (OSError, subprocess.CalledProcessError) as exc:
            self.report.note(f"libwine tree unavailable ({exc}): its rows are skipped")
        wanted = self.args.material
        return [m for m in out if not wanted or m.name in wanted]

    def material(self, name: str) -> Material | None:
        return next((m for m in self.materials if m.name == name), None)

    def tagfind(self, m: Material, index: Path, *extra: str) -> list[str]:
        return [self.python, "-m", "tagfind", "--drivers", str(m.path),
                *(["--all-pe"] if m.all_pe else []), "--index", str(index), *extra]

    def bare_start(self) -> float:
        """The median wall time of `python -c pass` with tagfind's interpreter, measured once."""
        if self._bare_start is None:
            self._bare_start, _ = median_run([self.python, "-c", "pass"], self.env,
                                             self.args.runs)
        return self._bare_start

    def files(self, m: Material) -> list[str]:
        """The files tagfind scans in that folder (its own discovery), read once so that every
        measurement reads them from the page cache."""
        if m.name not in self._files:
            try:
                from tagfind.sources import discover

                files = discover(drivers=[str(m.path)], all_pe=m.all_pe).files
            except (ImportError, TypeError, AttributeError) as exc:
                self.report.note(f"tagfind.sources.discover unusable ({exc}): every file under "
                                 f"{m.path} is taken")
                files = files_under(m.path)
            for path in files:
                with open(path, "rb") as handle:
                    while handle.read(1 << 20):
                        pass
            self._files[m.name] = files
        return self._files[m.name]

    def sweep(self, m: Material) -> SweepResult:
        if m.name not in self._sweeps:
            self._sweeps[m.name] = sweep(self.files(m))
        return self._sweeps[m.name]

    def build(self, m: Material) -> tuple[Path, Ran]:
        index = self.tmp / f"{m.name}-full.sqlite3"
        ran = run(self.tagfind(m, index, "--rebuild-index", "--jobs", str(self.args.jobs)),
                  self.env)
        if ran.code != 0:
            raise RuntimeError(f"tagfind --rebuild-index on {m.name} exited {ran.code}: "
                               f"{ran.stderr.strip()[-300:]}")
        self._indexes[m.name] = index
        return index, ran

    def full_index(self, m: Material) -> Path:
        if m.name not in self._indexes:
            self.files(m)
            self.build(m)
        return self._indexes[m.name]

    def code_tags(self, m: Material) -> dict[str, set[str]]:
        """Tag -> the drivers whose code gives it call evidence, from the full index."""
        ran = run(self.tagfind(m, self.full_index(m), "--no-bytes", "--json", "*"), self.env)
        if ran.code not in (0, 1):
            raise RuntimeError(f"tagfind '*' on {m.name} exited {ran.code}: {ran.stderr[-300:]}")
        tags: dict[str, set[str]] = {}
        for row in json.loads(ran.stdout)["rows"]:
            if row["evidence"] == "call":
                tags.setdefault(row["tag"], set()).add(row["path"])
        return tags


# --- sections ---------------------------------------------------------------------------------
def section_build(bench: Bench) -> None:
    for m in bench.materials:
        files = bench.files(m)
        base = bench.sweep(m)
        _, ran = bench.build(m)
        stats = stats_of(ran.stdout + ran.stderr)
        indexed = stats[0] if stats else None
        detail = (f"{len(files)} files, {base.code_bytes / 1e6:.1f} MB of code, "
                  f"{base.instructions / 1e6:.1f} M instructions")
        if indexed is not None and indexed != base.files:
            detail += f"; tagfind indexed {indexed} files, the sweep {base.files}"
        bench.report.add(Row("cold build / sweep", m.name, f"build {ran.seconds:.2f} s",
                             f"sweep {base.seconds:.2f} s", ran.seconds / base.seconds, "x",
                             goal=0.75, stretch=0.4, detail=detail))


def section_analysis(bench: Bench) -> None:
    # libwine adds a few dozen functions for a minute of scanning user-mode DLLs: it is the
    # material only when no corpus half is here.
    materials = [m for m in bench.materials if m.corpus] or bench.materials
    for m in materials:
        files = sorted(bench.files(m), key=os.path.getsize, reverse=True)
        # Batches in worker processes (the hooks are installed in each): the time per function
        # is measured inside one process, so parallel batches only shorten the bench.
        batches = [files[i::ANALYSIS_BATCHES] for i in range(ANALYSIS_BATCHES)]
        with ProcessPoolExecutor(max_workers=bench.args.jobs) as pool:
            parts = list(pool.map(measure_files, batches))
        functions = [f for part in parts for f in part.functions]
        if not functions:
            bench.report.note(f"analysis [{m.name}]: no function analysed")
            continue
        rest = sum(f[1] for f in functions)
        decode = sum(f[2] for f in functions)
        alone = sum(f[3] for f in functions)
        per_function = statistics.median(f[1] / f[2] for f in functions if f[2] > 0)
        by_arch = Counter(f[0] for f in functions)
        arches = ", ".join(f"{n} {a}" for a, n in sorted(by_arch.items()))
        scanned = sum(p.scan_seconds for p in parts)
        analysed = sum(p.analyse_seconds for p in parts)
        detail = (f"{len(functions)} functions ({arches}); analyse is {analysed:.1f} s of "
                  f"{scanned:.1f} s of scan_file; median per function {per_function:.1f}x")
        bench.report.add(Row("analysis / backend decode", m.name, f"analysis {rest:.2f} s",
                             f"decode {decode:.2f} s", rest / decode, "x", goal=3.0,
                             detail=detail))
        bench.report.add(Row("analysis / capstone alone", m.name, f"analysis {rest:.2f} s",
                             f"capstone {alone:.2f} s", rest / alone, "x",
                             detail=f"backend decode / capstone alone {decode / alone:.2f}x"))


def section_warm(bench: Bench) -> None:
    m = bench.material("libwine")
    if m is None:
        bench.report.note("warm: no libwine tree, skipped")
        return
    index = bench.full_index(m)
    runs = bench.args.runs
    greps: dict[str, float] = {}
    for tag, flags in WARM_QUERIES:
        if tag not in greps:
            greps[tag], done = median_run(["grep", "-rlF", tag, str(m.path)], bench.env, runs)
            hits = len(done[-1].stdout.splitlines())
            bench.report.note(f"warm: grep -rlF {tag!r} finds {hits} files of {m.name}")
        seconds, done = median_run(bench.tagfind(m, index, *flags, tag), bench.env, runs)
        query = " ".join([tag, *flags])
        code = (f"exit {done[-1].code}, median of {runs}; python's bare start "
                f"{bench.bare_start() * 1000:.0f} ms")
        bench.report.add(Row("warm query", m.name, f"tagfind {query}", "-", seconds * 1000,
                             "ms", goal=100.0, detail=code))
        bench.report.add(Row("warm query / grep", m.name, f"tagfind {seconds * 1000:.0f} ms",
                             f"grep -rlF {greps[tag] * 1000:.0f} ms", seconds / greps[tag], "x",
                             goal=0.2, detail=query))


def section_first(bench: Bench) -> None:
    for m in bench.materials:
        if not m.corpus:
            continue
        tags = {t: d for t, d in bench.code_tags(m).items()
                if PRINTABLE_TAG.fullmatch(t) and not t.startswith("Tag")}
        if not tags:
            bench.report.note(f"first [{m.name}]: no tag with call evidence; skipped")
            continue
        tag = min(tags, key=lambda t: (len(tags[t]), t))
        bench.report.note(f"first [{m.name}]: tag {tag!r} chosen (call evidence in "
                          f"{len(tags[tag])} driver(s): fewest drivers, then alphabetical)")
        reference = run(bench.tagfind(m, bench.full_index(m), tag), bench.env)
        fresh = bench.tmp / f"{m.name}-fresh.sqlite3"
        got = streamed(bench.tagfind(m, fresh, tag), bench.env,
                       lambda line, tag=tag: line.startswith(tag + " "))
        base = bench.sweep(m)
        same = got.code == reference.code and got.stdout == reference.stdout
        detail = (f"first line {got.first_line or 0:.2f} s, process done {got.seconds:.2f} s; "
                  f"output {'the same as' if same else 'DIFFERENT from'} the full index's")
        if not same:
            bench.report.errors.append(f"first [{m.name}]: `tagfind {tag}` on a fresh index "
                                       "printed other than on the full index")
        if got.first_answer is None:
            bench.report.errors.append(f"first [{m.name}]: no answer row for {tag!r} "
                                       f"(exit {got.code})")
            continue
        bench.report.add(Row("first answer / sweep", m.name,
                             f"first row {got.first_answer:.2f} s",
                             f"sweep {base.seconds:.2f} s", got.first_answer / base.seconds,
                             "x", goal=0.25, detail=f"tag {tag}; {detail}"))


def section_refresh(bench: Bench) -> None:
    m = bench.material("libwine")
    if m is None:
        bench.report.note("refresh: no libwine tree, skipped")
        return
    index = bench.full_index(m)
    runs = bench.args.runs
    tag, flags = WARM_QUERIES[-1]
    bare = bench.bare_start()
    imports, _ = median_run([bench.python, "-c", "import tagfind.cli"], bench.env, runs)
    query, done = median_run(bench.tagfind(m, index, *flags, "-v", tag), bench.env, runs)
    printed = [stats_of(r.stderr) for r in done]
    files = len(bench.files(m))
    bound = (query - bare) * 1000
    if all(printed):
        refresh = statistics.median(p[1] for p in printed) * 1000
        resolution = stats_resolution(done[-1].stderr) or 0.0
        shown = STATS_LINE.search(done[-1].stderr)
        bench.report.add(Row("no-change refresh (printed)", m.name,
                             f"{printed[-1][0]} files ({shown.group(2)} {shown.group(3)})", "-",
                             refresh, "ms", goal=20.0,
                             detail=f"`tagfind -v` prints it to {resolution * 1000:g} ms; "
                                    f"median of {runs}"))
    else:
        bench.report.note("refresh: `tagfind -v` printed no refresh time; the upper bound "
                          "decides")
    bench.report.add(Row("no-change refresh (upper bound)", m.name,
                         f"query {query * 1000:.0f} ms", f"python start {bare * 1000:.0f} ms",
                         bound, "ms", goal=None if all(printed) else 20.0,
                         detail=f"`tagfind {' '.join([*flags, tag])}` minus a bare python; "
                                f"{files} files; importing tagfind.cli takes "
                                f"{(imports - bare) * 1000:.0f} ms of it"))


SECTION_RUNS = {"build": section_build, "analysis": section_analysis, "warm": section_warm,
                "first": section_first, "refresh": section_refresh}


# --- output -----------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    head = ("check", "material", "measured", "baseline", "ratio", "goal", "result")
    body = [(r.check, r.material, r.measured, r.baseline, _fmt(r.figure, r.unit),
             "-" if r.goal is None else f"<= {_fmt(r.goal, r.unit)}", r.result())
            for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in [head, *body]]
    lines.insert(1, "-" * len(lines[0]))
    details = [f"  {r.check} [{r.material}]: {r.detail}" for r in rows if r.detail]
    return "\n".join(lines + ([""] + details if details else []))


def environment() -> dict:
    import capstone

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"commit": commit, "python": sys.version.split()[0],
            "capstone": capstone.__version__, "cpus": os.cpu_count()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="measure only this section (repeatable)")
    parser.add_argument("--runs", type=int, default=7,
                        help="process runs per warm and refresh median (default 7)")
    parser.add_argument("--jobs", type=int, default=2, help="--jobs of the cold build")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--corpus", type=Path, help="the shared corpus folder")
    parser.add_argument("--material", action="append",
                        choices=[*CORPUS_HALVES, "libwine"],
                        help="measure only on this material (repeatable; default all)")
    parser.add_argument("--python", type=Path,
                        help="the interpreter of tagfind's processes (default: this one)")
    args = parser.parse_args()
    if args.runs < 1 or args.jobs < 1:
        parser.error("--runs and --jobs take a positive number")
    sections = [s for s in SECTIONS if s in (args.only or SECTIONS)]
    report = Report()
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tagfind-speed-") as tmp:
        bench = Bench(args, Path(tmp), report)
        for name in sections:
            print(f"{name} ...", file=sys.stderr)
            try:
                SECTION_RUNS[name](bench)
            except HookError as exc:
                report.errors.append(f"{name}: the analysis hooks moved: {exc} "
                                     "(update HOOKS in bench/_probe.py)")
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                report.errors.append(f"{name}: {exc}")
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()
    env = environment()
    env["tagfind_python"] = bench.python
    print(table(report.rows))
    print()
    for text in report.notes:
        print(f"note: {text}")
    print(f"commit {env['commit']}, python {env['python']}, capstone {env['capstone']}, "
          f"{env['cpus']} cpus; load average {load_before[0]:.2f} before, {load_after[0]:.2f} "
          f"after; bench took {elapsed:.0f} s; tagfind ran with {env['tagfind_python']}")
    for text in report.errors:
        print(f"speed.py: {text}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({
            "format": FORMAT, "environment": env, "seconds": elapsed,
            "load_average": [load_before[0], load_after[0]],
            "rows": [{**asdict(r), "ok": r.ok} for r in report.rows],
            "notes": report.notes, "errors": report.errors}, indent=2) + "\n")
    return 2 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
