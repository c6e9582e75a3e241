"""The fixture-driver tests the x86 and ARM64 scanner suites share (test_scan_x86.py,
test_scan_arm64.py), parameterised by arch.

A test module takes them by assignment, so they are collected there under their own names:

    built = archsuite.built_fixture(ARCH)
    test_sites_match_source = archsuite.sites_match_source(ARCH)

Each fixture (tests/fixtures/<arch>/*.c) is built in every variant of ARCHES[arch]
(tests/fixtures/build.py); the scanner must report exactly the EXPECT multiset, no DECOY tag,
and every site must sit on an instruction that really reaches the API
(tests/fixtures/archcheck.py, independent of tagfind).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import skip_or_fail
from fixtures import build as fixture_build
from fixtures.archcheck import (
    Transfers,
    declared_transfers,
    decoy_report,
    mismatch_report,
    site_problems,
)
from fixtures.expect import exported_names, parse_source
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagfind.scan import ScanResult, scan_file


def all_builds(arch: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(every (fixture, variant) of the arch, their test ids)."""
    spec = fixture_build.ARCHES[arch]
    builds = [(name, variant) for name in spec.fixtures for variant in spec.variants]
    return builds, [f"{name}-{variant}" for name, variant in builds]


def built_fixture(arch: str):
    """A module-scoped pytest fixture `built`: the factory built(name, variant) -> (path, scan
    result), compiled and scanned once per module."""

    @pytest.fixture(scope="module")
    def built(test_cache):
        cache: dict[tuple[str, str], tuple[Path, ScanResult]] = {}

        def get(name: str, variant: str) -> tuple[Path, ScanResult]:
            if not fixture_build.zig_available():
                skip_or_fail("the ziglang package is not installed (pip install ziglang==0.17.1)")
            if (name, variant) not in cache:
                try:
                    path = fixture_build.build_driver(name, variant, test_cache, arch=arch)
                except fixture_build.BuildError as exc:
                    pytest.fail(f"building {arch} fixture {name} ({variant}) failed:\n{exc}")
                cache[name, variant] = (path, scan_file(str(path)))
            return cache[name, variant]

        return get

    return built


def _truth(name: str, arch: str):
    return parse_source(fixture_build.source_path(name, arch))


# -- the fixtures themselves -------------------------------------------------------------------


def fixture_statements_parse(arch: str):
    @pytest.mark.parametrize("name", fixture_build.ARCHES[arch].fixtures)
    def test(name):
        assert _truth(name, arch).expected

    return test


def fixture_calls_match_statements(arch: str):
    builds, ids = all_builds(arch)

    @pytest.mark.parametrize(("name", "variant"), builds, ids=ids)
    def test(built, name, variant):
        """Scanner-independent: each pool import is reached by as many control transfers as the
        source declares direct sites and NOSITE calls (a compiler that duplicates or merges
        calls shows up here as a fixture problem)."""
        path, _ = built(name, variant)
        declared = declared_transfers(_truth(name, arch))
        counts = Transfers(str(path)).counts()
        assert {api: counts[api] for api in declared} == dict(declared)

    return test


# -- the scanner against the truth -------------------------------------------------------------


def scan_result_header(arch: str):
    builds, ids = all_builds(arch)

    @pytest.mark.parametrize(("name", "variant"), builds, ids=ids)
    def test(built, name, variant):
        path, result = built(name, variant)
        assert result.error is None, result.error
        assert result.arch == arch
        assert result.path == str(path)

    return test


def sites_match_source(arch: str):
    builds, ids = all_builds(arch)

    @pytest.mark.parametrize(("name", "variant"), builds, ids=ids)
    def test(built, name, variant):
        path, result = built(name, variant)
        report = mismatch_report(_truth(name, arch), result.sites, exported_names(path))
        assert report is None, f"{name} ({variant}): {report}"

    return test


def no_decoy_tag_reported(arch: str):
    builds, ids = all_builds(arch)

    @pytest.mark.parametrize(("name", "variant"), builds, ids=ids)
    def test(built, name, variant):
        _, result = built(name, variant)
        bad = decoy_report(_truth(name, arch), result.sites)
        assert not bad, "\n".join(bad)

    return test


def site_addresses_hold_the_call(arch: str):
    builds, ids = all_builds(arch)

    @pytest.mark.parametrize(("name", "variant"), builds, ids=ids)
    def test(built, name, variant):
        path, result = built(name, variant)
        problems = site_problems(Transfers(str(path)), result.sites)
        assert not problems, "\n".join(problems)

    return test


# -- damaged input -------------------------------------------------------------------------------


def random_damage_never_raises(arch: str):
    @settings(
        max_examples=int(os.environ.get("TAGFIND_FUZZ_EXAMPLES", "40")),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(data=st.data())
    def test(tmp_path, built, data):
        """Byte overwrites (often in the code, or ARM64's .pdata) and truncations: scan_file
        returns a result."""
        path, _ = built("main", "O2")
        buf = bytearray(path.read_bytes())
        for _ in range(data.draw(st.integers(1, 8), label="edits")):
            pos = data.draw(st.integers(0, len(buf) - 1), label="pos")
            chunk = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
            buf[pos : pos + len(chunk)] = chunk
        cut = data.draw(st.integers(len(buf) // 2, len(buf)), label="cut")
        damaged = tmp_path / "fuzz.sys"
        damaged.write_bytes(bytes(buf[:cut]))
        result = scan_file(str(damaged))
        assert isinstance(result, ScanResult)
        # A damaged file may be refused (PEError), but the scanner itself must not fail on it.
        assert not (result.error or "").startswith("scanner failure"), result.error

    return test
