"""Hostile PE files through the whole per-file path (PEImage + scanner), from bytes in memory.

Seeds are real drivers: the x64 main fixture, WinDivert64.sys from pydivert 4.0.1 (as in
tests/test_windivert.py) and, where tests/fixtures/build.py builds them, the x86 and ARM64 main
fixtures. They are damaged by the structured mutations of tests/hostile_pe.py (truncation at
every header boundary, huge counts and sizes, overlapping sections, import and .pdata loops,
pointers past the end of the file or the image), by random bit flips (hypothesis) and by both.

For every input scan_file must return a result: an error, or sites that are believable (each
site's RVA inside an executable section). "scanner failure" and "resource limit" errors mean an
exception escaped the parser or the scanner and count as failures here. Memory is checked with
tracemalloc and, in a subprocess, under an address-space limit. The number of hypothesis
examples is $TAGFIND_FUZZ_EXAMPLES (default 60); tools/fuzz.py runs the long version.

Regression tests for what the fuzzing found are at the end, each built from a seed by a
described mutation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import hostile_pe
import pytest
from conftest import skip_or_fail
from fixtures import build as fixture_build
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagfind.pe import PEError, PEImage
from tagfind.scan import scan_file

EXAMPLES = int(os.environ.get("TAGFIND_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SEED_NAMES = ["x64-main", "windivert", "x86-main", "arm64-main"]


@pytest.fixture(scope="session")
def seeds(fixture_driver, test_cache) -> dict[str, bytes]:
    """The seed files that exist here (x64 main and WinDivert are required)."""
    from test_windivert import _download_driver

    out = {
        "x64-main": fixture_driver("main", "O2").read_bytes(),
        "windivert": _download_driver(test_cache, "pydivert-4.0.1").read_bytes(),
    }
    for arch in ("x86", "arm64"):
        try:
            path = fixture_build.build_driver("main", "O2", test_cache, arch=arch)
        except (TypeError, KeyError, FileNotFoundError, fixture_build.BuildError):
            continue  # build.py does not build this architecture (yet)
        out[f"{arch}-main"] = Path(path).read_bytes()
    return out


def _seed(seeds: dict[str, bytes], name: str) -> bytes:
    if name not in seeds:
        if name in ("x64-main", "windivert"):
            skip_or_fail(f"seed {name} unavailable")
        pytest.skip(f"tests/fixtures/build.py builds no {name} fixture here")
    return seeds[name]


def check(data: bytes, how: str = "") -> object:
    """Scan the bytes; fail on an escaped exception or an unbelievable site."""
    result = scan_file("hostile.sys", data)
    assert result is not None
    error = result.error or ""
    assert not error.startswith(("scanner failure", "resource limit")), f"{how}: {error}"
    if result.sites:
        image = PEImage("hostile.sys", data)  # it parsed once; it must parse the same again
        for site in result.sites:
            section = image.section_at(site.rva)
            assert section is not None and section.executable, (
                f"{how}: site {site} is not inside an executable section"
            )
    return result


# -- structured mutations ------------------------------------------------------------------------
@pytest.mark.parametrize("mutation", sorted(hostile_pe.MUTATIONS))
@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_mutation(seeds, seed_name, mutation):
    data = hostile_pe.apply(_seed(seeds, seed_name), mutation)
    check(data, f"{seed_name} {mutation}")


@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_truncation_at_every_boundary(seeds, seed_name):
    """A cut that loses declared section data or headers is an error, never a quiet result."""
    data = _seed(seeds, seed_name)
    raw_end = max(rawptr + rawsize for _o, _va, _vs, rawptr, rawsize in hostile_pe.sections(data))
    silent = []
    for cut in hostile_pe.boundaries(data):
        for at in (cut - 1, cut, cut + 1):
            if at < 0:
                continue
            result = check(data[:at], f"{seed_name} cut at {at:#x}")
            if at < raw_end and not result.error:
                silent.append(at)
    assert not silent, f"{seed_name}: no error for cuts at {[hex(c) for c in silent]}"


@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_mutation_pairs(seeds, seed_name):
    """Two mutations on top of each other (a sample of ordered pairs; fewer on the large
    WinDivert seed, where each scan without .pdata takes about a second)."""
    data = _seed(seeds, seed_name)
    names = sorted(hostile_pe.MUTATIONS)
    step = 9 if seed_name == "windivert" else 3
    for first in names[::step]:
        once = hostile_pe.apply(data, first)
        for second in names[1::4]:
            check(hostile_pe.apply(once, second), f"{seed_name} {first} + {second}")


# -- hypothesis ------------------------------------------------------------------------------
@FUZZ
@given(
    seed_name=st.sampled_from(SEED_NAMES),
    mutations=st.lists(st.sampled_from(sorted(hostile_pe.MUTATIONS)), max_size=2),
    flips=st.lists(st.integers(min_value=0, max_value=2**31), max_size=64),
    header_flips=st.lists(st.integers(min_value=0, max_value=2**31), max_size=16),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=2**20)),
)
def test_fuzz(seeds, seed_name, mutations, flips, header_flips, cut):
    if seed_name not in seeds:
        seed_name = "x64-main"
    data = seeds[seed_name]
    for name in mutations:
        data = hostile_pe.apply(data, name)
    data = hostile_pe.bit_flips(data, flips) if flips else data
    data = hostile_pe.header_flips(data, header_flips) if header_flips else data
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    check(data, f"{seed_name} {mutations} flips={flips} header={header_flips} cut={cut}")


@FUZZ
@given(seed_name=st.sampled_from(SEED_NAMES), data=st.data())
def test_fuzz_truncated_at_boundary_then_flipped(seeds, seed_name, data):
    if seed_name not in seeds:
        seed_name = "x64-main"
    raw = seeds[seed_name]
    cut = data.draw(st.sampled_from(hostile_pe.boundaries(raw)))
    flips = data.draw(st.lists(st.integers(min_value=0, max_value=cut * 8 + 7), max_size=8))
    damaged = hostile_pe.bit_flips(raw[:cut], flips) if cut and flips else raw[:cut]
    check(damaged, f"{seed_name} cut={cut} flips={flips}")


# -- memory ----------------------------------------------------------------------------------
MEMORY_MUTATIONS = ["section_4gb", "section_4gb_virtual", "size_of_image_huge", "huge_pdata",
                    "huge_import_dir", "huge_section_count", "rva_count_huge", "export_dir_huge",
                    "pdata_whole_image"]


@pytest.mark.parametrize("seed_name", ["x64-main", "windivert"])
def test_memory_stays_small(seeds, seed_name):
    """Files that claim gigabytes must not make the scanner allocate them (tracemalloc)."""
    data = _seed(seeds, seed_name)
    for name in MEMORY_MUTATIONS:
        damaged = hostile_pe.apply(data, name)
        tracemalloc.start()
        try:
            check(damaged, f"{seed_name} {name}")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 64 * 1024 * 1024 + 40 * len(data), f"{name}: peak {peak} bytes"


def test_memory_under_address_space_limit(seeds, tmp_path):
    """The same files scanned in a process limited to 1 GB of address space: a 4 GB claim
    would fail with MemoryError, which scan_file reports as a resource-limit error."""
    inputs = []
    for seed_name in ("x64-main", "windivert"):
        data = _seed(seeds, seed_name)
        for name in MEMORY_MUTATIONS:
            path = tmp_path / f"{seed_name}-{name}.sys"
            path.write_bytes(hostile_pe.apply(data, name))
            inputs.append(str(path))
    script = textwrap.dedent("""
        import resource, sys
        limit = 1 << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        from tagfind.scan import scan_file
        bad = []
        for path in sys.argv[1:]:
            result = scan_file(path)
            if result.error and result.error.startswith(("resource limit", "scanner failure")):
                bad.append(f"{path}: {result.error}")
        print("\\n".join(bad))
        print("maxrss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    proc = subprocess.run([sys.executable, "-c", script, *inputs], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("maxrss_kb")
    assert lines[:-1] == [] or lines[:-1] == [""], "\n".join(lines[:-1])


# -- regressions: what the fuzzing found -------------------------------------------------------
def test_truncated_in_section_table_is_an_error(seeds):
    """Found by truncation: a file cut inside its section table was parsed by pefile with no
    sections at all, so scan_file said "no pool use" without error."""
    data = _seed(seeds, "x64-main")
    lay = hostile_pe.layout(data)
    for cut in (lay.sections, lay.section(1) + 8, lay.section(lay.nsections) - 1):
        result = scan_file("cut.sys", data[:cut])
        assert result.error, f"cut at {cut:#x}: no error"


def test_windivert_without_pdata_reports_each_call_once(seeds):
    """Found by pdata_outside / pdata_reversed / pdata_overlapping on WinDivert: with no usable
    .pdata the x64 backend analyses overlapping regions, and every call was reported up to 27
    times (676 sites instead of 30). The calls and tags must be the unmutated file's (31 since
    scanner version 6 reads the NET_BUFFER_LIST pool parameters' tag at 0x331e)."""
    data = _seed(seeds, "windivert")
    original = {(s.rva, s.api, s.tag) for s in scan_file("w.sys", data).sites}
    assert len(original) == 31
    for name in ("pdata_outside", "pdata_reversed", "pdata_overlapping"):
        result = check(hostile_pe.apply(data, name), name)
        rvas = [s.rva for s in result.sites]
        assert len(rvas) == len(set(rvas)), f"{name}: duplicate sites"
        assert {(s.rva, s.api, s.tag) for s in result.sites} == original, name


def _page_writable_executable(data: bytes, index: int) -> bytes:
    """Section `index` renamed PAGE and marked writable and executable (what a bit flip in the
    Characteristics of a real driver's PAGE section does)."""
    off = hostile_pe.layout(data).section(index)
    characteristics = int.from_bytes(data[off + 36 : off + 40], "little")
    characteristics |= 0x20000000 | 0x80000000  # IMAGE_SCN_MEM_EXECUTE | IMAGE_SCN_MEM_WRITE
    return (data[:off] + b"PAGE\0\0\0\0" + data[off + 8 : off + 36]
            + characteristics.to_bytes(4, "little") + data[off + 40 :])


@pytest.mark.parametrize("seed_name", ["x64-main", "windivert"])
def test_writable_executable_page_section_is_parsed(seeds, seed_name):
    """Found by the fuzzer (issue 11, 8b): a section after the first named PAGE with both
    write and execute set made pefile look up the imports before it had finished the section
    table, raising AttributeError ('SectionStructure' object has no attribute
    'next_section_virtual_address'): the file was a 'scanner failure'. Such a section is
    plausible in a real driver: the file is scanned, and its calls are the unmutated file's."""
    data = _seed(seeds, seed_name)
    original = {(s.rva, s.api, s.tag) for s in scan_file("o.sys", data).sites}
    lay = hostile_pe.layout(data)
    assert lay.nsections >= 2
    for index in range(1, lay.nsections):
        mutated = _page_writable_executable(data, index)
        result = scan_file("page.sys", mutated)
        assert not (result.error or "").startswith("scanner failure"), (index, result.error)
        assert "AttributeError" not in (result.error or "")
        try:
            PEImage("page.sys", mutated)
        except PEError as exc:  # refused in words (the mutation may hit .reloc and the like)
            assert "damaged" in str(exc) or "not a valid" in str(exc), str(exc)
            continue
        assert result.error is None, (index, result.error)
        found = {(s.rva, s.api, s.tag) for s in result.sites}
        # A data section made writable may hold a tag constant no longer provably read-only:
        # fewer sites, or the same call with its tag unproven (None), never another tag or
        # call. A code section keeps every site.
        calls = {(rva, api) for rva, api, _tag in original}
        others = {site for site in found - original
                  if site[2] is not None or site[:2] not in calls}
        assert not others, f"section {index}: sites the unmutated file does not have"
        off = lay.section(index)
        if int.from_bytes(data[off + 36 : off + 40], "little") & 0x20000000:
            assert found == original, f"code section {index}: sites lost"
    check(_page_writable_executable(data, 1), "page-wx")
