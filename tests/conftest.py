"""Shared pytest fixtures: the test cache, fixture drivers built on demand, downloaded drivers.

Test material that needs a tool or the network (the ziglang compiler, pip downloads) is skipped
with a reason when it is unavailable on a developer machine, and fails instead when the
environment says it is CI (CI=true), so a CI run never passes by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

# As tagfind's own process has it (workers.py): numpy's OpenBLAS without a thread per core,
# so that this process has one thread and its index refreshes fork their workers as the
# command does, rather than always taking the fallback of new interpreters.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402
from fixtures import build as fixture_build  # noqa: E402


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """Skip on a developer machine; fail in CI, where missing material is a broken setup."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: not skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def test_cache() -> Path:
    """The cache directory for built and downloaded test material."""
    path = fixture_build.cache_root()
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def fixture_driver(test_cache):
    """Factory: fixture_driver(name, variant="O2") -> path of the built .sys (cached).

    Skips (or fails in CI) when the ziglang package is not installed; a compile error always
    fails, since it means the fixture sources or the recipe are broken."""
    built: dict[tuple[str, str], Path] = {}

    def get(name: str, variant: str = "O2") -> Path:
        if not fixture_build.zig_available():
            skip_or_fail("the ziglang package is not installed (pip install ziglang==0.17.1)")
        key = (name, variant)
        if key not in built:
            try:
                built[key] = fixture_build.build_driver(name, variant, test_cache)
            except fixture_build.BuildError as exc:
                pytest.fail(f"building fixture {name} ({variant}) failed:\n{exc}")
        return built[key]

    return get


@pytest.fixture(scope="session")
def wine() -> Path:
    """Debian's libwine x86_64-windows folder (real PE files), fetched on first use."""
    from pe_factory import MaterialMissing, wine_dir

    try:
        return wine_dir()
    except MaterialMissing as exc:
        skip_or_fail(f"libwine test material: {exc}")
