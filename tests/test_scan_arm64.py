"""The ARM64 scanner against fixture drivers whose C sources state the truth, and against
damaged input.

Fixtures (tests/fixtures/arm64/*.c) are compiled by zig for aarch64-windows-gnu in four variants
(tests/fixtures/build.py, ARCHES["arm64"]). For each build the scanner must report exactly the
EXPECT multiset, no DECOY tag, and every site must sit on an instruction that really reaches
the API (tests/fixtures/archcheck.py, independent of tagfind).

Capstone 5 and 6 spell some operands differently (6 drops the `#` before adrp/branch targets
and literal addresses); the operand tests below feed both spellings through the semantics, so
they run whichever capstone is installed.
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
from fixtures.expect import parse_source
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagfind.pe import PEImage
from tagfind.scan import ScanResult, scan_file
from tagfind.scan.arm64 import Arm64Backend, Arm64Semantics, make_decoder
from tagfind.scan.dataflow import Insn

ARCH = "arm64"
SPEC = fixture_build.ARCHES[ARCH]
ALL_BUILDS = [(name, variant) for name in SPEC.fixtures for variant in SPEC.variants]
BUILD_IDS = [f"{name}-{variant}" for name, variant in ALL_BUILDS]


@pytest.fixture(scope="module")
def built(test_cache):
    """Factory: built(name, variant) -> (path, scan result), compiled and scanned once."""
    cache: dict[tuple[str, str], tuple[Path, ScanResult]] = {}

    def get(name: str, variant: str) -> tuple[Path, ScanResult]:
        if not fixture_build.zig_available():
            skip_or_fail("the ziglang package is not installed (pip install ziglang==0.17.1)")
        if (name, variant) not in cache:
            try:
                path = fixture_build.build_driver(name, variant, test_cache, arch=ARCH)
            except fixture_build.BuildError as exc:
                pytest.fail(f"building {ARCH} fixture {name} ({variant}) failed:\n{exc}")
            cache[name, variant] = (path, scan_file(str(path)))
        return cache[name, variant]

    return get


# -- the fixtures themselves -------------------------------------------------------------------


@pytest.mark.parametrize("name", SPEC.fixtures)
def test_fixture_statements_parse(name):
    assert parse_source(fixture_build.source_path(name, ARCH)).expected


@pytest.mark.parametrize(("name", "variant"), ALL_BUILDS, ids=BUILD_IDS)
def test_fixture_calls_match_statements(built, name, variant):
    """Scanner-independent: each pool import is reached by as many blr/br/bl/b as the source
    declares direct sites and NOSITE calls."""
    path, _ = built(name, variant)
    declared = declared_transfers(parse_source(fixture_build.source_path(name, ARCH)))
    counts = Transfers(str(path)).counts()
    assert {api: counts[api] for api in declared} == dict(declared)


@pytest.mark.parametrize(("name", "variant"), ALL_BUILDS, ids=BUILD_IDS)
def test_image_is_native_arm64_with_pdata(built, name, variant):
    path, _ = built(name, variant)
    image = PEImage(str(path))
    assert image.arch == ARCH and image.is_kernel_mode()
    assert len(image.functions) >= 4  # packed and unpacked .pdata records both parse


# -- the scanner against the truth -------------------------------------------------------------


@pytest.mark.parametrize(("name", "variant"), ALL_BUILDS, ids=BUILD_IDS)
def test_scan_result_header(built, name, variant):
    path, result = built(name, variant)
    assert result.error is None, result.error
    assert result.arch == ARCH
    assert result.path == str(path)


@pytest.mark.parametrize(("name", "variant"), ALL_BUILDS, ids=BUILD_IDS)
def test_sites_match_source(built, name, variant):
    _, result = built(name, variant)
    report = mismatch_report(parse_source(fixture_build.source_path(name, ARCH)), result.sites)
    assert report is None, f"{name} ({variant}): {report}"


@pytest.mark.parametrize(("name", "variant"), ALL_BUILDS, ids=BUILD_IDS)
def test_no_decoy_tag_reported(built, name, variant):
    _, result = built(name, variant)
    bad = decoy_report(parse_source(fixture_build.source_path(name, ARCH)), result.sites)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("name", "variant"), ALL_BUILDS, ids=BUILD_IDS)
def test_site_addresses_hold_the_call(built, name, variant):
    path, result = built(name, variant)
    problems = site_problems(Transfers(str(path)), result.sites)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("variant", SPEC.variants)
def test_in_function_tail_call_is_not_a_thunk(built, variant):
    """`if (p) ExFreePoolWithTag(p, tag)` in MyFree ends in the thunk's very shape
    (adrp/ldr/br): only the stubs the linker put after the code are thunks."""
    path, _ = built("main", variant)
    backend = Arm64Backend(PEImage(str(path)))
    transfers = Transfers(str(path))
    pool = set(backend.api_slots.values())
    pool_thunks = {rva for rva, name in transfers.thunks.items() if name in pool}
    assert set(backend.local_apis()) == pool_thunks


# -- operand spellings of capstone 5 and 6 --------------------------------------------------------


class _Image:
    """Just enough of a PEImage for the semantics: one IAT slot, no data."""

    image_base = 0x180000000
    size_of_image = 0x10000
    imports = {0x20C0: "ExAllocatePoolWithTag"}

    @staticmethod
    def is_readonly_data(_rva):
        return False


@pytest.mark.parametrize("hash_sign", ["#", ""], ids=["capstone5", "capstone6"])
def test_operand_spellings(hash_sign):
    sem = Arm64Semantics(_Image())
    program = [
        ("adrp", f"x8, {hash_sign}0x2000"),
        ("mov", "w2, #0x6554"),
        ("movk", "w2, #0x7473, lsl #16"),
        ("ldr", "x8, [x8, #0xc0]"),
        ("mov", "w0, #0x200"),
        ("str", "w2, [sp, #-0x10]!"),
    ]
    state = sem.entry_state()
    for i, (mnem, ops) in enumerate(program):
        sem.transfer(state, Insn(0x1000 + 4 * i, 4, mnem, ops))
    call = Insn(0x1100, 4, "blr", "x8")
    assert sem.call_target(state, call) == ("imp", "ExAllocatePoolWithTag")
    args = sem.call_args(state)
    assert args[0] == 0x200 and args[2] == 0x74736554
    assert state.regs["sp"] == ("sp", -0x10)
    assert sem.call_target(state, Insn(0x1104, 4, "bl", f"{hash_sign}0x1000")) == 0x1000
    flow = sem.flow(Insn(0x1108, 4, "cbz", f"w0, {hash_sign}0x1200"))
    assert flow.targets == (0x1200,) and flow.falls_through


def test_decoder_for_installed_capstone():
    insns = list(make_decoder().disasm_lite(bytes.fromhex("82aa8c52"), 0x1000))
    assert insns and insns[0][2] == "mov"


# -- damaged input -------------------------------------------------------------------------------


@settings(
    max_examples=int(os.environ.get("TAGFIND_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_random_damage_never_raises(tmp_path, built, data):
    """Byte overwrites (often in the code or .pdata) and truncations: scan_file returns."""
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
