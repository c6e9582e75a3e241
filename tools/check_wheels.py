"""Check that tagfind's dependencies resolve to wheels on every Windows it supports:
`pip download --only-binary=:all:` for win_amd64, win_arm64 and win32 on Python 3.10-3.13.

pip evaluates environment markers against the interpreter it runs in, not the --platform
given, so each requirement's marker is evaluated here for the target (sys_platform win32,
platform_machine AMD64 / ARM64 / x86) and only the ones that apply are passed to pip.

    python tools/check_wheels.py [--python 3.13] [--platform win_arm64] [--extra test]

Prints one line per pair and exits 1 when any pair fails (CI runs it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from packaging.requirements import Requirement

PLATFORMS = {"win_amd64": "AMD64", "win_arm64": "ARM64", "win32": "x86"}
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# Pairs left out: numpy has no win_arm64 wheel for 3.10 (python.org's ARM64 builds start at
# 3.11). Listed, not checked.
NO_SUCH_PYTHON = {("win_arm64", "3.10"): "numpy publishes no win_arm64 wheel for CPython 3.10"}
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements_for(platform_tag: str, python: str, extras: list[str]) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project.get("optional-dependencies", {}).get(extra, [])
    env = {"sys_platform": "win32", "platform_system": "Windows", "os_name": "nt",
           "platform_machine": PLATFORMS[platform_tag], "python_version": python,
           "python_full_version": f"{python}.0", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "extra": ""}
    chosen = []
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            chosen.append(str(req))
    return chosen


def check(platform_tag: str, python: str, extras: list[str]) -> tuple[bool, str]:
    reqs = requirements_for(platform_tag, python, extras)
    with tempfile.TemporaryDirectory() as dest:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
             "--platform", platform_tag, "--python-version", python, "--implementation", "cp",
             "--dest", dest, *reqs],
            capture_output=True, text=True,
        )
        wheels = sorted(p.name for p in Path(dest).glob("*.whl"))
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")]
        return False, (lines[-1] if lines else done.stderr.strip()[-300:])
    return True, ", ".join(wheels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", choices=PYTHONS)
    parser.add_argument("--platform", action="append", choices=sorted(PLATFORMS))
    parser.add_argument("--extra", action="append", default=[])
    args = parser.parse_args()
    failed = 0
    for platform_tag in args.platform or PLATFORMS:
        for python in args.python or PYTHONS:
            if (platform_tag, python) in NO_SUCH_PYTHON:
                print(f"skip {platform_tag} cp{python.replace('.', '')}:"
                      f" {NO_SUCH_PYTHON[platform_tag, python]}")
                continue
            ok, detail = check(platform_tag, python, args.extra)
            failed += not ok
            tag = f"cp{python.replace('.', '')}"
            print(f"{'ok  ' if ok else 'FAIL'} {platform_tag} {tag}: {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
