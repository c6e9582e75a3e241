"""The x64 scanner against fixture drivers whose C sources state the truth, and damaged input.

Each fixture (tests/fixtures/<name>.c) is compiled with zig at several optimisation levels
(tests/fixtures/build.py). Its end-of-line comments (grammar in tests/fixtures/expect.py) say
which sites exist; the scanner must report exactly that multiset of
(api, tag, evidence, protected, pool, size, number of wrappers), no site with a DECOY tag, and
every reported address must hold a call/jmp that really reaches the API (checked independently
with pefile + capstone in tests/fixtures/pecheck.py).

A separate check, independent of the scanner, keeps the fixtures honest: the number of control
transfers to each pool import in the binary equals the number of direct sites the source
declares (plus NOSITE calls), so a compiler that duplicates or merges calls shows up as a fixture
problem, not a scanner one.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from pathlib import Path

import pefile
import pytest
from fixtures import build as fixture_build
from fixtures.expect import exported_names, format_key, format_tag, parse_source, site_key
from fixtures.pecheck import Image, check_function_field, check_site, imports_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagfind.scan import ScanResult, scan_file

FIXTURES = fixture_build.FIXTURES
VARIANTS = tuple(fixture_build.ARCHES["x64"].variants)
ALL_BUILDS = [(name, variant) for name in FIXTURES for variant in VARIANTS]
BUILD_IDS = [f"{name}-{variant}" for name, variant in ALL_BUILDS]


class Scanned:
    """One built fixture with its truth, its scan result and an independent view of the PE."""

    def __init__(self, name: str, variant: str, path: Path):
        self.name = name
        self.variant = variant
        self.path = path
        self.truth = parse_source(fixture_build.source_path(name))
        self.result = scan_file(str(path))
        self.image = Image(str(path))
        self.names = exported_names(path)

    def key(self, site) -> tuple:
        return site_key(site, self.names)

    def result_image_functions(self):
        from tagfind.pe import PEImage

        return PEImage(self.path).functions

    def describe_site(self, site) -> str:
        via = " via " + " -> ".join(hex(v) for v in site.via) if site.via else ""
        return f"  {site.rva:#x}{via}: {format_key(self.key(site))}\n{self.image.context(site.rva)}"


@pytest.fixture(scope="module")
def scanned(fixture_driver):
    cache: dict[tuple[str, str], Scanned] = {}

    def get(name: str, variant: str) -> Scanned:
        if (name, variant) not in cache:
            cache[name, variant] = Scanned(name, variant, fixture_driver(name, variant))
        return cache[name, variant]

    return get


# -- the fixtures themselves -----------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_statements_parse(name):
    truth = parse_source(fixture_build.source_path(name))
    assert truth.expected, f"{name}.c declares no sites"


@pytest.mark.parametrize(("name", "variant"), ALL_BUILDS, ids=BUILD_IDS)
def test_fixture_calls_match_statements(fixture_driver, name, variant):
    """Scanner-independent: each pool import is reached by as many calls/jmps as the source
    declares direct sites (via=0) and NOSITE calls for it."""
    truth = parse_source(fixture_build.source_path(name))
    image = Image(str(fixture_driver(name, variant)))
    declared: Counter = Counter()
    for api in truth.direct_calls():
        declared[_import_name(image, api)] += 1
    for api, _line in truth.nosite:
        declared[_import_name(image, api)] += 1
    found = Counter(name for _, name in image.api_transfers() if name in declared)
    assert found == declared, _transfer_report(image, declared, found)


def _import_name(image: Image, api: str) -> str:
    names = [n for n in imports_of(api) if n in image.slots.values()]
    assert names, f"the binary imports no {api}"
    return names[-1]


def _transfer_report(image: Image, declared: Counter, found: Counter) -> str:
    lines = [f"calls per import in the binary {dict(found)} != declared {dict(declared)}"]
    for t, name in image.api_transfers():
        if name in declared:
            lines.append(f"  {t.rva:#x}: {t.text} -> {name}")
    return "\n".join(lines)


# -- the scanner against the truth ------------------------------------------------------------


@pytest.mark.parametrize(("name", "variant"), ALL_BUILDS, ids=BUILD_IDS)
def test_scan_result_header(scanned, name, variant):
    s = scanned(name, variant)
    assert isinstance(s.result, ScanResult)
    assert s.result.error is None, s.result.error
    assert s.result.arch == "x64"
    assert s.result.path == str(s.path)


@pytest.mark.parametrize(("name", "variant"), ALL_BUILDS, ids=BUILD_IDS)
def test_sites_match_source(scanned, name, variant):
    s = scanned(name, variant)
    expected = s.truth.expected_keys()
    later = Counter(e.key for e in s.truth.later)
    reported = Counter(s.key(site) for site in s.result.sites)
    missing = expected - reported
    extra = reported - expected
    extra -= later  # LATER sites may be reported; if so they must match their statement
    if not missing and not extra:
        return
    lines = [f"{name} ({variant}): scanner sites differ from {name}.c"]
    if missing:
        lines.append("expected but not reported:")
        for exp in s.truth.expected:
            if missing[exp.key] > 0:
                missing[exp.key] -= 1
                lines.append(f"  {exp.describe()}")
    if extra:
        lines.append("reported but not expected:")
        for site in s.result.sites:
            if extra[s.key(site)] > 0:
                extra[s.key(site)] -= 1
                lines.append(s.describe_site(site))
    pytest.fail("\n".join(lines))


@pytest.mark.parametrize(("name", "variant"), ALL_BUILDS, ids=BUILD_IDS)
def test_no_decoy_tag_reported(scanned, name, variant):
    s = scanned(name, variant)
    decoys = {tag: line for tag, line in s.truth.decoys}
    bad = [
        f"DECOY {format_tag(site.tag)} (line {decoys[site.tag]}) reported:\n"
        + s.describe_site(site)
        for site in s.result.sites
        if site.tag in decoys
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("name", "variant"), ALL_BUILDS, ids=BUILD_IDS)
def test_site_addresses_hold_the_call(scanned, name, variant):
    s = scanned(name, variant)
    problems = []
    for site in s.result.sites:
        for problem in check_site(s.image, site) + check_function_field(s.image, site):
            problems.append(f"{problem}\n{s.image.context(site.rva)}")
    assert not problems, "\n".join(problems)


def test_tag_zero_is_never_a_site(scanned):
    s = scanned("main", "O2")
    assert all(site.tag != 0 for site in s.result.sites)


# -- damaged input ----------------------------------------------------------------------------


def _scan_bytes(tmp_path: Path, data: bytes, name: str = "damaged.sys") -> ScanResult:
    path = tmp_path / name
    path.write_bytes(data)
    result = scan_file(str(path))
    assert isinstance(result, ScanResult)
    assert result.path == str(path)
    return result


def _raw_end(data: bytes) -> int:
    pe = pefile.PE(data=data, fast_load=True)
    return max(s.PointerToRawData + s.SizeOfRawData for s in pe.sections)


@pytest.fixture(scope="module")
def main_bytes(fixture_driver) -> bytes:
    return fixture_driver("main", "O2").read_bytes()


@pytest.mark.parametrize("where", ["dos", "pe-header", "headers-end", "text", "late", "last-byte"])
def test_truncated_file_gives_error(tmp_path, main_bytes, where):
    pe = pefile.PE(data=main_bytes, fast_load=True)
    text = next(s for s in pe.sections if s.Name.rstrip(b"\0") == b".text")
    cut = {
        "dos": 0x20,
        "pe-header": pe.DOS_HEADER.e_lfanew + 0x30,
        "headers-end": pe.OPTIONAL_HEADER.SizeOfHeaders,
        "text": text.PointerToRawData + text.SizeOfRawData // 2,
        "late": len(main_bytes) * 3 // 4,
        "last-byte": len(main_bytes) - 1,
    }[where]
    assert cut < _raw_end(main_bytes)  # every cut loses declared section data
    result = _scan_bytes(tmp_path, main_bytes[:cut])
    assert result.error, f"truncated at {cut:#x} of {len(main_bytes):#x}: no error reported"


def test_zero_byte_file(tmp_path):
    assert _scan_bytes(tmp_path, b"").error


@pytest.mark.parametrize(
    "data",
    [
        b"This is a text file, not a driver.\n" * 20,
        b"\x7fELF\x02\x01\x01" + bytes(200),
        b"MZ" + bytes(0x3A) + struct.pack("<I", 0x10000) + bytes(64),  # e_lfanew past the end
        b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40) + b"XX\0\0" + bytes(300),  # no PE\0\0
    ],
    ids=["text", "elf", "mz-lfanew-past-end", "mz-bad-signature"],
)
def test_non_pe_file(tmp_path, data):
    assert _scan_bytes(tmp_path, data).error


def test_missing_file(tmp_path):
    path = tmp_path / "does-not-exist.sys"
    result = scan_file(str(path))
    assert isinstance(result, ScanResult)
    assert result.error


def test_directory_instead_of_file(tmp_path):
    result = scan_file(str(tmp_path))
    assert isinstance(result, ScanResult)
    assert result.error


def _patch_import_directory(data: bytes, rva: int, size: int) -> bytes:
    pe = pefile.PE(data=data, fast_load=True)
    entry = pe.OPTIONAL_HEADER.DATA_DIRECTORY[1]  # IMAGE_DIRECTORY_ENTRY_IMPORT
    out = bytearray(data)
    struct.pack_into("<II", out, entry.get_file_offset(), rva, size)
    return bytes(out)


def test_import_directory_outside_image(tmp_path, main_bytes):
    damaged = _patch_import_directory(main_bytes, 0x7FFF0000, 0x28)
    assert _scan_bytes(tmp_path, damaged).error


def test_import_directory_into_code(tmp_path, main_bytes):
    """Import descriptors read from .text are garbage; whatever the scanner makes of them, it
    must return a result and invent no sites."""
    pe = pefile.PE(data=main_bytes, fast_load=True)
    text = next(s for s in pe.sections if s.Name.rstrip(b"\0") == b".text")
    damaged = _patch_import_directory(main_bytes, text.VirtualAddress + 0x10, 0x28)
    result = _scan_bytes(tmp_path, damaged)
    assert result.error or not result.sites


@settings(
    max_examples=int(os.environ.get("TAGFIND_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_random_damage_never_raises(tmp_path, main_bytes, data):
    """Truncations and byte overwrites anywhere: scan_file returns a result, never raises."""
    buf = bytearray(main_bytes)
    for _ in range(data.draw(st.integers(1, 8), label="edits")):
        pos = data.draw(st.integers(0, len(buf) - 1), label="pos")
        chunk = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
        buf[pos : pos + len(chunk)] = chunk
    cut = data.draw(st.integers(0, len(buf)), label="cut")
    _scan_bytes(tmp_path, bytes(buf[:cut]), "fuzz.sys")


# -- chained unwind fragments -----------------------------------------------------------------


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("variant", ["O2", "O0"])
def test_sites_survive_chained_fragments(scanned, tmp_path, name, variant):
    """MSVC's chained .pdata fragments (UNW_FLAG_CHAININFO), made from the fixture by cutting
    each function right at each of its pool calls (tests/fixtures/chain.py): the call then
    lies in a fragment and its arguments are set in the primary part before it, the layout
    that loses them when a fragment is analysed on its own. The sites must stay exactly the
    source's."""
    from fixtures.chain import split

    s = scanned(name, variant)
    functions = [tuple(map(int, f)) for f in s.result_image_functions()]
    cuts = {site.rva for site in s.result.sites
            if any(begin < site.rva < end for begin, end in functions)}
    assert cuts, "no site to cut at"
    path = tmp_path / f"{name}-{variant}-chained.sys"
    path.write_bytes(split(s.path.read_bytes(), cuts))
    from tagfind.pe import PEImage

    image = PEImage(path)
    assert all(image.function_parts(image.function_containing(c)[0])[1] for c in cuts)
    result = scan_file(str(path))
    assert result.error is None, result.error
    before = Counter(s.key(site) for site in s.result.sites)
    after = Counter(s.key(site) for site in result.sites)
    assert after == before, (f"lost {dict(before - after)}; gained {dict(after - before)}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_kmdf_table_variable_lies_past_the_raw_data(fixture_driver, variant):
    """kmdf.c lays WdfFunctions out as MSVC does: in .data's zero-filled virtual tail, with no
    bytes in the file (so the sites of test_sites_match_source[kmdf-*] prove that the table is
    found there)."""
    path = fixture_driver("kmdf", variant)
    rva = {v: k for k, v in exported_names(path).items()}["WdfFunctions_01015"]
    pe = pefile.PE(str(path), fast_load=True)
    data = next(s for s in pe.sections if s.Name.rstrip(b"\0") == b".data")
    assert data.VirtualAddress + data.SizeOfRawData <= rva < (
        data.VirtualAddress + data.Misc_VirtualSize)
