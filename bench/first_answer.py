"""Time to the first answer on a fresh index: `tagfind TAG` over a folder of drivers, against a
single-process capstone linear sweep of the same files, measured in the same run.

    python bench/first_answer.py DIR [--tags N] [--jobs 2] [--tagfind-path SRC]

The sweep (bench/_sweep.py, as in bench/speed.py) decodes every instruction of every
executable section (disasm_lite, skipdata) and analyses nothing. Then the index of DIR is
built once (the reference), N tags proven there are picked (a fixed spread over how many
files may hold them), and for each tag a fresh index is asked: the time until its answer is
on stdout, after which the process is interrupted (SIGINT,
exit 130 expected: the index must stay consistent). The answer must equal the reference's
answer for the same tag (stdout and exit code, also with --json and -v); a run that answers
only after finishing the index shows as such (the answer comes with the exit).
`--tagfind-path SRC` runs another checkout's tagfind (e.g. the code before this change).
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _sweep  # noqa: E402  (the project's sweep baseline, shared with bench/speed.py)


def sweep(files: list[str]) -> tuple[float, int]:
    """(seconds, instructions) of the project's sweep (bench/_sweep.py) of the files."""
    result = _sweep.sweep(files)
    return result.seconds, result.instructions


def pe_files(folder: str) -> list[str]:
    out = []
    for base, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as handle:
                if handle.read(2) == b"MZ":
                    out.append(path)
    return sorted(out)


def command(src: Path, folder: str, index: str, jobs: int, *args: str) -> list[str]:
    del src
    return [sys.executable, "-m", "tagfind", "--drivers", folder, "--index", index,
            "--jobs", str(jobs), *args]


def run_in(src: Path) -> dict:
    """Popen arguments that make `python -m tagfind` import `src`'s tagfind (-m puts the
    working directory first on the path)."""
    return {"env": env_for(src), "cwd": str(src)}


def env_for(src: Path) -> dict[str, str]:
    """Run `src`'s tagfind with bytecode caching on, as an installed package runs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def pick_tags(index: str, files: list[str], count: int) -> list[str]:
    """`count` proven tags spread over how many files may hold them (fewest to most)."""
    sys.path.insert(0, str(ROOT))
    from tagfind.holds import file_may_hold

    conn = sqlite3.connect(index)
    tags = sorted({t for (t,) in conn.execute(
        "SELECT DISTINCT tag_text FROM sites WHERE tag IS NOT NULL AND evidence != 'free'")
        if "\\" not in t and t.strip() == t and "*" not in t and "?" not in t})
    conn.close()
    step = max(1, len(tags) // (4 * count))
    sample = tags[::step][: 4 * count]
    from tagfind.tags import str_to_tag

    held = sorted((sum(file_may_hold(f, [str_to_tag(t)]) for f in files), t) for t in sample)
    picks = [held[round(i * (len(held) - 1) / max(1, count - 1))] for i in range(count)]
    return [t for _n, t in dict.fromkeys(picks)]


def first_answer(cmd: list[str], env: dict, interrupt: bool = True
                 ) -> tuple[float, str, int | None, float]:
    """(seconds to the first stdout output, the answer, exit code, seconds to the exit).
    With `interrupt`, the process is interrupted as soon as its answer is complete (its
    stdout is quiet for a while)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, **env)
    assert proc.stdout is not None
    first = proc.stdout.read1(1 << 20)
    seen = time.perf_counter() - start
    chunks = [first]
    os.set_blocking(proc.stdout.fileno(), False)
    quiet_since = time.perf_counter()
    while proc.poll() is None and (not interrupt or time.perf_counter() - quiet_since < 0.3):
        chunk = proc.stdout.read()
        if chunk:
            chunks.append(chunk)
            quiet_since = time.perf_counter()
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    proc.wait()
    os.set_blocking(proc.stdout.fileno(), True)
    chunks.append(proc.stdout.read())
    return seen, b"".join(chunks).decode(), proc.returncode, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--tags", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--tagfind-path", type=Path, default=ROOT)
    parser.add_argument("--plain-only", action="store_true",
                        help="Time the plain query only (not --json, -v, --no-bytes).")
    args = parser.parse_args()
    # Started in the background, a shell hands on SIGINT ignored: the children must get it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args.folder = os.path.abspath(args.folder)
    files = pe_files(args.folder)
    sweep_s, insns = sweep(files)
    print(f"{len(files)} files; sweep {sweep_s:.2f} s ({insns:,} instructions)")
    env = run_in(args.tagfind_path)
    problems = 0
    with tempfile.TemporaryDirectory() as tmp:
        ref = os.path.join(tmp, "ref.sqlite3")
        start = time.perf_counter()
        subprocess.run(command(args.tagfind_path, args.folder, ref, args.jobs,
                               "--rebuild-index"), **env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"cold full build {time.perf_counter() - start:.2f} s "
              f"({(time.perf_counter() - start) / sweep_s:.2f}x the sweep)")
        ratios = []
        for tag in pick_tags(ref, files, args.tags):
            forms = [()] if args.plain_only else [(), ("--json",), ("-v",), ("--no-bytes",)]
            for extra in forms:
                fresh = os.path.join(tmp, f"fresh-{len(ratios)}-{len(extra)}.sqlite3")
                cmd = command(args.tagfind_path, args.folder, fresh, args.jobs, tag, *extra)
                # --json runs to its end: its exit code must be the answer's too.
                interrupt = extra != ("--json",)
                seen, answer, code, total = first_answer(cmd, env, interrupt)
                want = subprocess.run(command(args.tagfind_path, args.folder, ref, args.jobs,
                                              tag, *extra), **env, capture_output=True)
                same = answer == want.stdout.decode() and (
                    code == want.returncode or (interrupt and code == 130))
                check = consistent(fresh)
                if not same or check:
                    problems += 1
                if extra:
                    print(f"  {tag!r} {' '.join(extra)}: answer {'same' if same else 'DIFFERS'}"
                          f"{'; index ' + check if check else ''}")
                    continue
                ratios.append(seen / sweep_s)
                print(f"  {tag!r}: first answer {seen:.2f} s ({seen / sweep_s:.2f}x the sweep), "
                      f"exit {code} after {total:.2f} s, answer {'same' if same else 'DIFFERS'}"
                      f"{'; index ' + check if check else ''}")
        if ratios:
            print(f"first answer / sweep: median {statistics.median(ratios):.2f}x, "
                  f"max {max(ratios):.2f}x")
    return 1 if problems else 0


def consistent(index: str) -> str:
    """'' when the index's invariants hold (tagfind.index.Index.check), else what broke."""
    sys.path.insert(0, str(ROOT))
    from tagfind.index import Index

    with Index(index) as idx:
        return "; ".join(idx.check())


if __name__ == "__main__":
    sys.exit(main())
