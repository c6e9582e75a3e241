"""tagfind.pooltag: parsing every pooltag.txt line form, counts on Microsoft's list, lookup,
binary names, the shipped facts file, and where the files are found."""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagfind import pooltag
from tagfind.pooltag import Entry, PoolTagDb, parse

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "pooltag.txt"
SHIPPED = REPO / "data" / "pooltag.txt"


@pytest.fixture(scope="module")
def reference() -> pooltag.PoolTagFile:
    if not REFERENCE.is_file():
        pytest.skip(f"reference pooltag.txt not found at {REFERENCE} (shared/ beside the repo)")
    return pooltag.read_file(REFERENCE)


def one(line: str, **kwargs: bool) -> Entry:
    parsed = parse(line, "t.txt", **kwargs)
    assert not parsed.skipped, parsed.skipped
    (entry,) = parsed.entries
    return entry


def db_of(text: str) -> PoolTagDb:
    return PoolTagDb([parse(text, "t.txt")])


# ------------------------------------------------------------------------- line forms

LINE_FORMS = [
    # line, pattern, binary field, binaries, description
    ("Afd? - afd.sys      - AFD objects", "Afd?", "afd.sys", ("afd.sys",), "AFD objects"),
    ("Cc   - nt!cc        - Cache", "Cc  ", "nt!cc", ("nt!cc",), "Cache"),
    ("Dh 0 - <unknown>    - Heap", "Dh 0", "<unknown>", ("<unknown>",), "Heap"),
    ("PX1 - ndproxy.sys - PX_EVENT_TAG", "PX1 ", "ndproxy.sys", ("ndproxy.sys",), "PX_EVENT_TAG"),
    ("I4e -  tcpip.sys    - IPv4 Echo", "I4e ", "tcpip.sys", ("tcpip.sys",), "IPv4 Echo"),
    ("Io - io.sys - short tag", "Io  ", "io.sys", ("io.sys",), "short tag"),
    ("Tun4  - <unknown>   - Tunnel cache", "Tun4", "<unknown>", ("<unknown>",), "Tunnel cache"),
    (
        "eMyS-  win32k!CInputSystemMetrics::operator new - SYSTEMMETRICS_TAG",
        "eMyS",
        "win32k!CInputSystemMetrics::operator new",
        ("win32k!CInputSystemMetrics::operator new",),
        "SYSTEMMETRICS_TAG",
    ),
    ("AfdA - afd.sys      -     Afd EA buffer", "AfdA", "afd.sys", ("afd.sys",), "Afd EA buffer"),
    ("Xyz1 - x.sys - one - two - three", "Xyz1", "x.sys", ("x.sys",), "one - two - three"),
    (
        "Nv01 - netvsc50.sys/netvsc60.sys - Nic",
        "Nv01",
        "netvsc50.sys/netvsc60.sys",
        ("netvsc50.sys", "netvsc60.sys"),
        "Nic",
    ),
    (
        "SmSt - nt!store or rdyboost.sys - Store",
        "SmSt",
        "nt!store or rdyboost.sys",
        ("nt!store", "rdyboost.sys"),
        "Store",
    ),
    ("Mult - <multiple>   - Shared", "Mult", "<multiple>", ("<multiple>",), "Shared"),
    ("KmCl - kmcl.lib     - Lib", "KmCl", "kmcl.lib", ("kmcl.lib",), "Lib"),
    ("FDEl - FsLib        - DAX", "FDEl", "FsLib", ("FsLib",), "DAX"),
    ("Aml* - <unknown>    - AMLI", "Aml*", "<unknown>", ("<unknown>",), "AMLI"),
    ("Bu*  - <unknown>    - burn", "Bu* ", "<unknown>", ("<unknown>",), "burn"),
    ("ReMo - refs.sys     -     Mount.c", "ReMo", "refs.sys", ("refs.sys",), "Mount.c"),
    ("Tabs\t-\tt.sys\t-\tdesc", "Tabs", "t.sys", ("t.sys",), "desc"),
    ("NoDs - nodesc.sys -", "NoDs", "nodesc.sys", ("nodesc.sys",), None),
    # two fields: a binary, or a description
    ("ATmp - AppTag mount point", "ATmp", "", (), "AppTag mount point"),
    ("Bin2 - two.sys", "Bin2", "two.sys", ("two.sys",), None),
    ("Bin3 - nt!mm", "Bin3", "nt!mm", ("nt!mm",), None),
    ("Bin4 - <unknown>", "Bin4", "<unknown>", ("<unknown>",), None),
    ("Bin5 - nt", "Bin5", "nt", ("nt",), None),
    ("Desc - Timers", "Desc", "", (), "Timers"),
]


@pytest.mark.parametrize(("line", "pattern", "field", "binaries", "description"), LINE_FORMS)
def test_line_forms(line, pattern, field, binaries, description):
    entry = one(line)
    assert (entry.pattern, entry.binary_field, entry.binaries, entry.description) == (
        pattern,
        field,
        binaries,
        description,
    )
    assert (entry.source, entry.line) == ("t.txt", 1)


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        "//",
        "//    Copyright",
        "rem",
        "rem    Pooltag.txt",
        "REM FsLib allocations",
        "rem\tx - y.sys - z",
    ],
)
def test_blank_and_comment_lines_are_ignored(line):
    parsed = parse(line, "t.txt")
    assert parsed.entries == [] and parsed.skipped == []


@pytest.mark.parametrize(
    "line",
    ["QUIC Allocation tags are Qc00 through QcFF", "       <unknown>", "\tindented - x.sys - y"],
)
def test_free_text_and_orphans_are_skipped_and_counted(line):
    parsed = parse(f"Good - g.sys - ok\r\n{line}\r\n", "t.txt")
    assert [e.pattern for e in parsed.entries] == ["Good"]
    assert parsed.skipped == [(2, line)]


def test_line_numbers_with_crlf_lone_cr_and_lf():
    parsed = parse("//c\r\nAaaa - a.sys - x\rBbbb - b.sys - y\nCccc - c.sys - z\r", "t.txt")
    assert [(e.pattern, e.line) for e in parsed.entries] == [
        ("Aaaa", 2),
        ("Bbbb", 3),
        ("Cccc", 4),
    ]


def test_form_feed_and_nel_do_not_split_lines():
    entry = one("Aaaa - a.sys - x\x0cy\x85z")
    assert entry.description == "x\x0cy\x85z"


def test_read_file_bytes(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(b"Caf\xe9 - caf\xe9.sys - latin-1 \xff\r\nAaaa - a.sys - x\r")
    parsed = pooltag.read_file(path)
    assert [e.pattern for e in parsed.entries] == ["Caf\xe9", "Aaaa"]
    assert parsed.entries[0].description == "latin-1 \xff"
    path.write_bytes("\ufeffUtf8 - \u00e9.sys - x\n".encode())
    assert pooltag.read_file(path).entries[0].pattern == "Utf8"
    path.write_bytes("Ut16 - u.sys - x\r\n".encode("utf-16"))
    assert pooltag.read_file(path).entries[0].pattern == "Ut16"


def test_localtag_names_drivers_without_extension(tmp_path):
    path = tmp_path / "LocalTag.txt"
    path.write_text("IpEQ - ipsec\nEl90 - el90xbc5\n")
    entries = pooltag.read_file(path).entries
    assert [pooltag.binary_file_names(e) for e in entries] == [["ipsec.sys"], ["el90xbc5.sys"]]
    assert one("IpEQ - ipsec").description == "ipsec"  # elsewhere a lone word is a description


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_crashes(text):
    parsed = parse(text, "fuzz")
    for entry in parsed.entries:
        assert len(entry.pattern) == 4
        pooltag.binary_file_names(entry)
    PoolTagDb([parsed]).lookup("Test")


_PIECES = st.sampled_from(
    ["-", " - ", "  ", "\t", "*", "?", "!", "/", " or ", "<", ">", ".sys", "rem", "//", "\r", "x"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.text(max_size=5)), max_size=12))
def test_line_like_text_never_crashes(pieces):
    parsed = parse("".join(pieces), "fuzz")
    db = PoolTagDb([parsed])
    for entry in parsed.entries:
        db.lookup(entry.pattern.replace("*", "x").replace("?", "y"))


# ------------------------------------------------------------------- reference file


def test_reference_file_is_read_whole():
    if not REFERENCE.is_file():
        pytest.skip(f"reference pooltag.txt not found at {REFERENCE}")
    assert len(pooltag.decode(REFERENCE.read_bytes())) == 265_042


def test_reference_counts(reference):
    entries = reference.entries
    assert len(entries) == 4_689
    assert sum(e.is_wildcard for e in entries) == 101
    assert len({e.binary_field for e in entries if e.binary_field}) == 770
    # README: 4,634 distinct tags, counting a tag as written. `PX1  - <unknown>` and
    # `PX1 - ndproxy.sys` write one tag two ways; as padded patterns they are the same tag.
    lines = re.split(r"\r\n|\r|\n", pooltag.decode(REFERENCE.read_bytes()))
    written = {
        lines[e.line - 1][:3] if lines[e.line - 1][3:5] == " -" else e.pattern for e in entries
    }
    assert len(written) == 4_634
    assert len({e.pattern for e in entries}) == 4_633
    assert [(n, t.strip()) for n, t in reference.skipped] == [
        (887, "<unknown>"),
        (2681, "QUIC Allocation tags are Qc00 through QcFF"),
    ]


def test_reference_special_lines(reference):
    by_line = {e.line: e for e in reference.entries}
    assert by_line[2640].pattern == "PX1 " and by_line[2640].binaries == ("ndproxy.sys",)
    assert by_line[4591].pattern == "eMyS"
    assert by_line[138].binaries == () and by_line[138].description == "AppTag mount point"
    assert by_line[2923].pattern == "ReMo"  # not a `rem` comment


def test_reference_lookups(reference):
    db = PoolTagDb([reference])
    assert [e.binaries for e in db.lookup("PX1")] == [("<unknown>",), ("ndproxy.sys",)]
    assert [e.pattern for e in db.lookup("AfdA")] == ["AfdA", "Afd?"]
    assert [e.pattern for e in db.lookup("Npfx")] == ["Npf*"]
    assert [e.pattern for e in db.lookup("Dh 0")] == ["Dh 0"]
    assert db.lookup("dh 0") == []


# ---------------------------------------------------------------------------- lookups


def test_lookup_exact_then_wildcards_most_specific_first():
    db = db_of("Ab?? - q2.sys\nAb* - star.sys\nAbc? - q1.sys\nAbcd - exact.sys\nA* - a.sys\n")
    assert [e.pattern for e in db.lookup("Abcd")] == ["Abcd", "Abc?", "Ab??", "Ab* ", "A*  "]
    # `Ab* ` matches "Abxy": what follows `*` in the file is ignored
    assert [e.pattern for e in db.lookup("Abxy")] == ["Ab??", "Ab* ", "A*  "]
    assert [e.pattern for e in db.lookup("Ab")] == ["Ab??", "Ab* ", "A*  "]  # "Ab  "


def test_lookup_question_mark_is_one_character():
    db = db_of("Afd? - afd.sys\n")
    assert db.lookup("Afd1") and db.lookup("Afd ") and db.lookup("Afd\\x01")
    assert db.lookup("Afd")  # "Afd " padded
    assert not db.lookup("AfdXY")
    assert not db.lookup("Af1")


def test_lookup_tags_with_spaces_and_short_forms():
    db = db_of("Dh 0 - <unknown> - d\nIrp  - nt!io - irp\nPX1 - ndproxy.sys - p\n")
    assert [e.pattern for e in db.lookup("Dh 0")] == ["Dh 0"]
    assert not db.lookup("Dh 1") and not db.lookup("Dh0 ")
    assert [e.pattern for e in db.lookup("Irp")] == ["Irp "]
    assert [e.pattern for e in db.lookup("PX1 ")] == ["PX1 "]


def test_lookup_is_case_sensitive():
    db = db_of("Test - t.sys\nte?t - w.sys\n")
    assert [e.binaries for e in db.lookup("Test")] == [("t.sys",)]
    assert [e.binaries for e in db.lookup("test")] == [("w.sys",)]
    assert db.lookup("TEST") == []


def test_lookup_by_ulong_ignores_protected_bit():
    db = db_of("Test - t.sys\n")
    assert db.lookup(0x74736554) == db.lookup(0x74736554 | 0x80000000) == db.lookup("Test")


def test_lookup_literal_punctuation():
    db = db_of("a.b[ - dot.sys\n@MP  - at.sys\n")
    assert db.lookup("a.b[") and not db.lookup("axb[")
    assert db.lookup("@MP")


def test_merge_priority_and_repeats():
    user = parse("Test - t.sys - user words\nTest - t.sys - second line\n", "user")
    shipped = parse("Test - t.sys\nTest - other.sys\nOnly - o.sys\n", "shipped")
    db = PoolTagDb([user, shipped])
    found = db.lookup("Test")
    assert [(e.source, e.description) for e in found] == [
        ("user", "user words"),
        ("user", "second line"),
        ("shipped", None),
    ]
    assert found[2].binaries == ("other.sys",)
    assert db.lookup("Only")[0].source == "shipped"


def test_thousands_of_lookups_are_fast(reference):
    db = PoolTagDb([reference])
    tags = [f"{a}{b}{c}{d}" for a in "AbNT" for b in "fcPx" for c in "dp1 " for d in "A?xyz"]
    start = time.perf_counter()
    for _ in range(20):
        for tag in tags:
            db.lookup(tag)
    assert time.perf_counter() - start < 5  # 6,400 lookups; ~0.1 s here


# ------------------------------------------------------------------ binary file names


@pytest.mark.parametrize(
    ("binary", "name"),
    [
        ("tcpip.sys", "tcpip.sys"),
        ("TCPIP.SYS", "tcpip.sys"),
        ("hal.dll", "hal.dll"),
        ("ntoskrnl.exe", "ntoskrnl.exe"),
        ("nt!mm", "ntoskrnl.exe"),
        ("nt", "ntoskrnl.exe"),
        ("hal!x", "hal.dll"),
        ("win32k!Foo", "win32k.sys"),
        ("Win32k!AllocateHidDesc", "win32k.sys"),
        ("win32kbase!DirectComposition::CFoo::_allocate", "win32kbase.sys"),
        ("win23k!CInputQueueProp", "win32k.sys"),
        ("dxgkrnl!CDxgk", "dxgkrnl.sys"),
        ("<nvlddmkm.sys>", "nvlddmkm.sys"),
        ("<unknown>", None),
        ("<multiple>", None),
        ("kmcl.lib", None),
        ("FsLib", None),
        ("some words", None),
    ],
)
def test_binary_file_name(binary, name):
    assert pooltag.binary_file_name(binary) == name


def test_binary_file_names_of_entry():
    assert pooltag.binary_file_names(one("SmSt - nt!store or rdyboost.sys - s")) == [
        "ntoskrnl.exe",
        "rdyboost.sys",
    ]
    assert pooltag.binary_file_names(one("Nv01 - netvsc50.sys/netvsc60.sys - n")) == [
        "netvsc50.sys",
        "netvsc60.sys",
    ]
    assert pooltag.binary_file_names(one("Twic - nt!a/nt!b - n")) == ["ntoskrnl.exe"]
    assert pooltag.binary_file_names(one("ATmp - AppTag mount point")) == []


# ----------------------------------------------------------------- shipped facts file


def _make_pooltag():
    spec = importlib.util.spec_from_file_location("make_pooltag", REPO / "tools/make_pooltag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_file_parses_cleanly():
    shipped = pooltag.read_file(SHIPPED)
    assert shipped.skipped == []
    assert all(e.description is None and e.binaries for e in shipped.entries)
    installed = pooltag.shipped_path()  # data/ in a checkout, tagfind.data when installed
    assert installed is not None and installed.read_bytes() == SHIPPED.read_bytes()


def test_shipped_file_round_trips_reference(reference):
    make = _make_pooltag()
    learned, header = make.read_learned(REPO / "data" / "learned.txt")
    shipped = pooltag.read_file(SHIPPED)
    learned_facts = {e.fact for e in learned.entries}
    assert learned_facts  # facts the scanner learned from real drivers ship too
    assert {e.fact for e in shipped.entries} == {e.fact for e in reference.entries} | learned_facts
    assert SHIPPED.read_text(encoding="ascii") == make.render(reference, learned=learned,
                                                              learned_header=header)


def test_shipped_file_has_no_descriptions(reference):
    text = SHIPPED.read_text(encoding="ascii")
    assert "AFD objects" not in text and "AppTag mount point" not in text
    assert "ATmp - <unknown>\n" in text


# -------------------------------------------------------------------- finding sources


def _shipped() -> str:
    return str(pooltag.shipped_path())


def _touch(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_default_sources_offline_tree_case_insensitive(tmp_path, monkeypatch):
    monkeypatch.chdir(_touch(tmp_path / "cwd" / "x", "").parent)
    root = tmp_path / "win"
    x64 = _touch(root / "PROGRAM FILES (X86)/windows kits/10/Debuggers/X64/Triage/PoolTag.txt", "a")
    arm = _touch(root / "Program Files/Windows Kits/10/Debuggers/arm64/triage/pooltag.txt", "b")
    local = _touch(root / "windows/system32/LOCALTAG.TXT", "c")
    assert pooltag.default_sources(str(root)) == [str(x64), str(arm), str(local), _shipped()]


def test_default_sources_current_directory_localtag(tmp_path, monkeypatch):
    local = _touch(tmp_path / "localtag.txt", "Loca - loc\n")
    monkeypatch.chdir(tmp_path)
    assert pooltag.default_sources(str(tmp_path / "no-tree")) == [str(local), _shipped()]


def test_load_db_extra_files_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = _touch(tmp_path / "mine.txt", "Irp  - mine.sys - my words\nAfdA - afd.sys - mine\n")
    db = pooltag.load_db([str(extra)], root=str(tmp_path / "no-tree"))
    assert [f.source for f in db.files] == [str(extra), _shipped()]
    assert db.lookup("Irp ")[0].binaries == ("mine.sys",)
    afd = db.lookup("AfdA")
    assert afd[0].description == "mine"
    assert all(e.source == str(extra) for e in afd if e.pattern == "AfdA")  # no repeat


def test_load_db_missing_extra_file(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ValueError, match="pooltag file not found") as info:
        pooltag.load_db([str(missing)])
    assert "\n" not in str(info.value) and str(missing) in str(info.value)
