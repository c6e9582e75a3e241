"""poolmon and !poolused text parsing, on every sample in tests/data/poolmon/.

The samples are byte-for-byte copies of ../shared/reference/poolmon-samples/ (see the README
beside them); issue-4-pasted.txt is the table pasted in issue 4, as it stands there (the issue
quotes it with 6 spaces of indent). Expected values below were read off the files by eye, not
produced by the parser.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagfind.pool import (
    PoolRow,
    PoolSourceError,
    detect_format,
    load_pool_file,
    load_pool_runs,
    parse_pool_text,
    parse_poolmon,
    parse_poolmon_runs,
    parse_poolused,
    parse_poolused_runs,
)

DATA = Path(__file__).parent / "data" / "poolmon"
REFERENCE = Path(__file__).parents[2] / "shared" / "reference" / "poolmon-samples"


def rows_of(snapshot, tag, pool):
    return [r for r in snapshot.rows if r.tag == tag and r.pool == pool]


def only_row(snapshot, tag, pool) -> PoolRow:
    found = rows_of(snapshot, tag, pool)
    assert len(found) == 1, (tag, pool, found)
    return found[0]


def counts(row: PoolRow):
    return (row.allocs, row.frees, row.bytes, row.diff, row.per_alloc, row.driver_text)


def used(row: PoolRow):
    return (row.outstanding, row.bytes, row.per_alloc, row.driver_text)


# --- every sample: kind, run count, row count, scope ------------------------------------------

SAMPLES = {
    # file: (kind, rows per run, scope of the last run, number of warnings in the last run)
    "docs-sorted-by-allocs.txt": ("poolmon", [8], "system", 0),
    "docs-mapped-driver-ntf.txt": ("poolmon", [13], "system", 0),
    "docs-unknown-driver-mem.txt": ("poolmon", [3], "system", 0),
    "docs-localtag-el90xbc5.txt": ("poolmon", [3], "system", 0),
    "docs-localtag-pooltag-ip.txt": ("poolmon", [8], "system", 0),
    "docs-leak-drsd-before.txt": ("poolmon", [1], "system", 0),
    "docs-leak-drsd-after.txt": ("poolmon", [1], "system", 0),
    "docs-session-all.txt": ("poolmon", [16], "all sessions", 1),
    "docs-session0.txt": ("poolmon", [16], "session 0", 1),
    "docs-session0-mapped.txt": ("poolmon", [16], "session 0", 0),
    "docs-session-empty.txt": ("poolmon", [0], "all sessions", 0),
    "docs-gflags-dashes.txt": ("poolmon", [4], "system", 0),
    "docs-debugger-markdown-mangled.txt": ("poolmon", [4], "system", 0),
    "wide-x64-mapped.txt": ("poolmon", [2], "system", 0),
    "poolsnap-x86-summary-dedented.log": ("poolmon", [13], "system", 0),
    "poolused-2-nonpaged-amda.txt": ("poolused", [12], "system", 0),
    "poolused-2-nonpaged-cachemsgs.txt": ("poolused", [21], "system", 0),
    "poolused-2-and-4-truncated.txt": ("poolused", [6, 8], "system", 1),
    "issue-4-pasted.txt": ("poolmon", [4], "system", 3),
}


def test_every_sample_file_is_covered():
    on_disk = {p.name for p in DATA.iterdir() if p.name != "README.md"}
    assert on_disk == set(SAMPLES)


def test_samples_are_byte_for_byte_copies():
    if not REFERENCE.is_dir():
        pytest.skip("shared reference samples not present on this machine")
    for original in REFERENCE.iterdir():
        assert (DATA / original.name).read_bytes() == original.read_bytes(), original.name


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_shape(name):
    kind, rows_per_run, scope, n_warnings = SAMPLES[name]
    text = (DATA / name).read_text(encoding="utf-8")
    assert detect_format(text) == kind
    runs = load_pool_runs(DATA / name)
    assert [len(run.rows) for run in runs] == rows_per_run
    last = load_pool_file(DATA / name)
    assert last.rows == runs[-1].rows
    assert last.scope == scope
    assert len(last.warnings) == n_warnings, last.warnings
    assert last.taken_at is None and last.machine is None
    assert str(DATA / name) in last.source


# --- poolmon console display ---------------------------------------------------------------


def test_sorted_by_allocs():
    snap = load_pool_file(DATA / "docs-sorted-by-allocs.txt")
    assert snap.source.startswith("poolmon display")
    assert snap.counter_bits == 32
    assert [r.tag for r in snap.rows] == [
        "Wait",
        "ObSt",
        "Gxlt",
        "Ustm",
        "Io  ",
        "ObSq",
        "Key ",
        "SePa",
    ]
    assert counts(only_row(snap, "Wait", "nonpaged")) == (3971107, 3971077, 8456, 30, 281, None)
    assert counts(only_row(snap, "ObSt", "nonpaged")) == (2791258, 2791258, 0, 0, None, None)
    assert counts(only_row(snap, "Io  ", "nonpaged")) == (1021112, 1020985, 91912, 127, 723, None)
    assert counts(only_row(snap, "Key ", "paged")) == (954821, 953979, 87528, 842, 103, None)


def test_mapped_driver_text_kept_with_its_spacing():
    snap = load_pool_file(DATA / "docs-mapped-driver-ntf.txt")
    assert counts(only_row(snap, "NtFA", "nonpaged")) == (
        9112,
        9112,
        0,
        0,
        None,
        "[ntfs.sys  -  AttrSup.c]",
    )
    assert counts(only_row(snap, "NtFC", "paged")) == (
        1579279,
        1579269,
        640,
        10,
        64,
        "[ntfs.sys  -  Create.c]",
    )
    assert counts(only_row(snap, "NtFs", "nonpaged")) == (
        48825,
        47226,
        64536,
        1599,
        40,
        "[ntfs.sys  -  StrucSup.c]",
    )
    assert counts(only_row(snap, "NtFv", "paged"))[:3] == (551, 551, 0)


def test_hand_edited_unknown_driver():
    snap = load_pool_file(DATA / "docs-unknown-driver-mem.txt")
    assert counts(only_row(snap, "1MEM", "nonpaged")) == (1, 0, 3344, 1, 3344, "Unknown Driver")
    assert counts(only_row(snap, "3MEM", "nonpaged")) == (3, 0, 248, 3, 82, "Unknown Driver")


def test_localtag_driver_names():
    snap = load_pool_file(DATA / "docs-localtag-el90xbc5.txt")
    assert [r.tag for r in snap.rows] == ["1MEM", "2MEM", "3MEM"]
    assert counts(only_row(snap, "2MEM", "nonpaged")) == (1, 0, 3944, 1, 3944, "[el90xbc5]")


def test_concatenated_driver_field():
    snap = load_pool_file(DATA / "docs-localtag-pooltag-ip.txt")
    assert only_row(snap, "IpEQ", "nonpaged").driver_text == "[ipsec][ipsec.sys    -  event queue]"
    assert counts(only_row(snap, "IpSI", "nonpaged")) == (
        1027,
        0,
        53272,
        1027,
        51,
        "[ipsec][ipsec.sys    - initial allcoations]",
    )
    assert counts(only_row(snap, "IpHP", "nonpaged")) == (
        1,
        1,
        0,
        0,
        None,
        "[ipsec.sys    - IP Security]",
    )


def test_older_layout_without_indent_or_title():
    before = load_pool_file(DATA / "docs-leak-drsd-before.txt")
    after = load_pool_file(DATA / "docs-leak-drsd-after.txt")
    assert counts(only_row(before, "Drsd", "paged")) == (560, 539, 17472, 21, 832, None)
    assert counts(only_row(after, "Drsd", "paged")) == (737, 710, 22464, 27, 832, None)


def test_session_pool_all_sessions_tags_with_spaces():
    snap = load_pool_file(DATA / "docs-session-all.txt")
    assert snap.scope == "all sessions"
    assert counts(only_row(snap, "Dh 1", "paged")) == (24, 24, 0, 0, None, None)
    assert counts(only_row(snap, "Dh 2", "paged")) == (344, 344, 0, 0, None, None)
    assert counts(only_row(snap, "GTmp", "paged")) == (88876, 88876, 0, 0, None, None)
    assert counts(only_row(snap, "Gcac", "paged")) == (3761, 3706, 288968, 55, 5253, None)
    assert all(r.pool == "paged" for r in snap.rows)
    assert snap.warnings == [(22, "rows were left out here ('...'): table incomplete")]


def test_session0():
    snap = load_pool_file(DATA / "docs-session0.txt")
    assert snap.scope == "session 0"
    assert counts(only_row(snap, "GTmp", "paged")) == (89079, 89079, 0, 0, None, None)
    assert counts(only_row(snap, "Gcac", "paged")) == (3762, 3707, 283632, 55, 5156, None)
    assert snap.warnings[0][0] == 22


def test_session0_mapped():
    snap = load_pool_file(DATA / "docs-session0-mapped.txt")
    assert snap.scope == "session 0"
    assert counts(only_row(snap, "Bmfd", "paged")) == (
        421,
        396,
        57832,
        25,
        2313,
        "[Font related stuff]",
    )
    assert counts(only_row(snap, "Dh 2", "paged")) == (367, 364, 912, 3, 304, "Unknown Driver")
    assert only_row(snap, "Gcsl", "paged").driver_text == "[Gdi string resource script names]"


def test_session_pool_header_without_rows():
    snap = load_pool_file(DATA / "docs-session-empty.txt")
    assert snap.rows == [] and snap.warnings == [] and snap.scope == "all sessions"


def test_hand_made_table_with_rule_and_shifted_tags():
    snap = load_pool_file(DATA / "docs-gflags-dashes.txt")
    # " CM " and " Fat" are written one column right; tags are read left-aligned.
    assert [r.tag for r in snap.rows] == ["CM  ", "Strg", "Fat ", "MmSt"]
    assert counts(only_row(snap, "CM  ", "paged")) == (1283, 1002, 1377312, 281, 4901, None)
    assert counts(only_row(snap, "Strg", "paged")) == (10385, 6658, 317952, 3727, 85, None)
    assert counts(only_row(snap, "Fat ", "paged")) == (6662, 4971, 174560, 1691, 103, None)
    assert counts(only_row(snap, "MmSt", "paged")) == (614, 441, 83456, 173, 482, None)


def test_markdown_mangled_table():
    snap = load_pool_file(DATA / "docs-debugger-markdown-mangled.txt")
    assert [r.tag for r in snap.rows] == ["CM  ", "Strg", "Fat ", "MmSt"]
    assert counts(only_row(snap, "CM  ", "paged")) == (1283, 1002, 1377312, 281, 4901, None)
    assert counts(only_row(snap, "Strg", "paged")) == (10385, 6658, 317952, 3727, 85, None)
    assert counts(only_row(snap, "MmSt", "paged")) == (614, 441, 83456, 173, 482, None)


# --- poolmon /n logs -------------------------------------------------------------------------


def test_wide_x64_snapshot_rows():
    snap = load_pool_file(DATA / "wide-x64-mapped.txt")
    assert snap.source.startswith("poolmon /n log")
    assert counts(only_row(snap, "ConT", "nonpaged")) == (
        3097,
        2409,
        42770432,
        688,
        62166,
        "Unknown Driver",
    )
    assert counts(only_row(snap, "Thre", "nonpaged")) == (
        180351,
        176602,
        13179648,
        3749,
        3515,
        "[nt!ps - Thread objects]",
    )


def test_x86_snapshot_with_overflowing_fields_and_no_final_newline():
    assert not (DATA / "poolsnap-x86-summary-dedented.log").read_bytes().endswith(b"\n")
    snap = load_pool_file(DATA / "poolsnap-x86-summary-dedented.log")
    assert snap.rows[0].tag == "EtwB" and snap.rows[-1].tag == "CM25"
    assert counts(only_row(snap, "EtwB", "nonpaged")) == (6394, 4056, 163418368, 2338, 69896, None)
    assert counts(only_row(snap, "File", "nonpaged"))[:4] == (25376177, 25200767, 70145152, 175410)
    assert counts(only_row(snap, "HalD", "nonpaged"))[3:5] == (398, 102995)
    assert counts(only_row(snap, "CM25", "paged")) == (4849, 0, 21708800, 4849, 4476, None)


def _log_run(header: str, rows: list[str], summary: bool = False) -> str:
    # poolmon /n appends: a blank line, [/r summary and a blank line], the header, a blank
    # line, then the rows.
    lines = [""]
    if summary:
        lines += [
            " Memory: 8388608K Avail: 4194304K  PageFlts:  1234   InRam Krnl: 5000K P:90000K",
            " Commit: 9000000K Limit:16000000K Peak:9500000K            Pool N:90000K P:95000K",
            "",
        ]
    return "\n".join([*lines, header, "", *rows]) + "\n"


HEADER_32 = " Tag  Type     Allocs         Frees    Diff   Bytes    Per Alloc"
HEADER_64 = (
    " Tag  Type     Allocs            Frees               Diff            Bytes"
    "                 Per Alloc"
)


def _row32(tag, kind, allocs, frees, nbytes):
    diff = allocs - frees
    return f" {tag} {kind:5} {allocs:9} {frees:9} {diff:9} {nbytes:8} {nbytes // diff:10}"


def _row64(tag, kind, allocs, frees, nbytes, driver=""):
    diff = allocs - frees
    per = nbytes // diff if diff else 0
    return f" {tag} {kind:5}{allocs:18} {frees:18} {diff:16} {nbytes:14} {per:12} {driver}"


def test_appended_log_runs_last_and_all():
    text = (
        _log_run(
            HEADER_32, [_row32("Test", "Paged", 100, 40, 6000), _row32("Io  ", "Nonp", 10, 5, 500)]
        )
        + _log_run(HEADER_32, [_row32("Test", "Paged", 150, 50, 10000)], summary=True)
        + _log_run(
            HEADER_64 + " Mapped_Driver",
            [
                _row64("Test", "Paged", 5_000_000_000, 4_999_999_000, 123456, "[t.sys]"),
                _row64("Dh 1", "Nonp", 7, 7, 0, "Unknown Driver"),
            ],
        )
    )
    runs = parse_poolmon_runs(text)
    assert [len(r.rows) for r in runs] == [2, 1, 2]
    assert all(r.source == "poolmon /n log" for r in runs)
    assert counts(only_row(runs[0], "Io  ", "nonpaged")) == (10, 5, 500, 5, 100, None)
    assert counts(only_row(runs[1], "Test", "paged")) == (150, 50, 10000, 100, 100, None)
    last = parse_poolmon(text)
    assert last.rows == runs[2].rows
    assert counts(only_row(last, "Test", "paged")) == (
        5_000_000_000,
        4_999_999_000,
        123456,
        1000,
        123,
        "[t.sys]",
    )
    assert only_row(last, "Dh 1", "nonpaged").driver_text == "Unknown Driver"
    assert last.counter_bits == 64  # values past 2**32: this source did not truncate them
    assert runs[0].counter_bits == 32


def test_console_totals_lines_are_not_tags():
    text = "\n".join(
        [
            " Tag  Type     Allocs            Frees            Diff   Bytes       Per Alloc",
            "",
            " Test Paged      1473 (   0)      1002 (   0)      471 1972392 (     0)   4187",
            " Irp  Nonp       9000 (  12)      8990 (  12)       10    4000 (     0)    400",
            "",
            " Total Paged     1473 (   0)      1002 (   0)      471 1972392 (     0)   4187",
            " Totals Nonp     9000 (  12)      8990 (  12)       10    4000 (     0)    400",
        ]
    )
    snap = parse_poolmon(text)
    assert [r.tag for r in snap.rows] == ["Test", "Irp "]
    assert snap.warnings == []
    assert snap.source == "poolmon display"


def test_negative_deltas_and_one_tag_in_both_pools():
    text = (
        " Tag  Type     Allocs            Frees            Diff   Bytes       Per Alloc\n\n"
        " Ntfr Nonp        100 (   2)        90 (   3)       10    1600 (  -160)    160\n"
        " Ntfr Paged        50 (   0)        20 (   0)       30    3000 (     0)    100\n"
    )
    snap = parse_poolmon(text)
    assert counts(only_row(snap, "Ntfr", "nonpaged")) == (100, 90, 1600, 10, 160, None)
    assert counts(only_row(snap, "Ntfr", "paged")) == (50, 20, 3000, 30, 100, None)


# --- the issue's pasted table ------------------------------------------------------------------

ISSUE_TABLE = """\
      Tag  Type    Allocs          Frees         Diff   Bytes      Per Alloc


      Test   Paged    1473 (   0)    1002 (   0)    281 1972392

      ipdc  Paged   12485 (  10)    5648 (   4)   4027  40395

      CM28  Paged    6662 (   8)    5571 (   6)   1691  1745

      MmSt  Paged     614 (   0)     441 (   0)    173   83456
"""


def test_issue_table_verbatim():
    assert (DATA / "issue-4-pasted.txt").read_text() == ISSUE_TABLE
    snap = parse_poolmon(ISSUE_TABLE)
    assert [r.tag for r in snap.rows] == ["Test", "ipdc", "CM28", "MmSt"]
    assert all(r.pool == "paged" and r.driver_text is None for r in snap.rows)
    assert [(r.allocs, r.frees, r.bytes) for r in snap.rows] == [
        (1473, 1002, 1972392),
        (12485, 5648, 40395),
        (6662, 5571, 1745),
        (614, 441, 83456),
    ]
    # The pasted Diff column disagrees with Allocs - Frees on three rows (hand-edited).
    assert snap.warnings == [
        (4, "Diff column says 281 but Allocs - Frees is 471; using Allocs - Frees"),
        (6, "Diff column says 4027 but Allocs - Frees is 6837; using Allocs - Frees"),
        (8, "Diff column says 1691 but Allocs - Frees is 1091; using Allocs - Frees"),
    ]
    assert only_row(snap, "MmSt", "paged").diff == 173


def test_issue_table_dedented_and_with_crlf():
    dedented = "\r\n".join(line[6:] for line in ISSUE_TABLE.splitlines())
    snap = parse_poolmon(dedented)
    assert [r.tag for r in snap.rows] == ["Test", "ipdc", "CM28", "MmSt"]
    assert [w[0] for w in snap.warnings] == [4, 6, 8]


# --- damaged lines -----------------------------------------------------------------------------


def test_damaged_lines_are_warnings_with_line_numbers():
    text = "\n".join(
        [
            " Tag  Type     Allocs            Frees            Diff   Bytes       Per Alloc",  # 1
            "",  # 2
            " Good Paged      1473 (   0)      1002 (   0)      471 1972392 (     0)   4187",  # 3
            " Bad1 Paged      14x3 (   0)      1002 (   0)      471 1972392 (     0)   4187",  # 4
            " Bad2 Nonp        100 (   0",  # 5
            "this line is prose that slipped into the table",  # 6
            " Ok2  Nonp        100 (   0)        50 (   0)       50    5000 (     0)    100",  # 7
            " Good Paged         1 (   0)         0 (   0)        1      16 (     0)     16",  # 8
        ]
    )
    snap = parse_poolmon(text)
    assert [r.tag for r in snap.rows] == ["Good", "Ok2 ", "Good"]
    lines = [line for line, _ in snap.warnings]
    assert lines == [4, 5, 6, 8]
    assert "not a pool row" in snap.warnings[0][1] and "Bad1" in snap.warnings[0][1]
    assert "already listed on line 3" in snap.warnings[3][1]


def test_prose_before_a_table_is_ignored_but_broken_rows_are_not():
    text = "C:\\> poolmon /n\nSome words here.\nTest Paged 12 ( oops\n\n" + ISSUE_TABLE
    snap = parse_poolmon(text)
    assert len(snap.rows) == 4
    assert snap.warnings[0][0] == 3  # looks like a row (has a type word) but is not one


def test_poolused_damaged_row():
    text = (
        " Sorting by NonPaged Pool Consumed\n\n"
        "               NonPaged                  Paged\n"
        " Tag     Allocs         Used     Allocs         Used\n\n"
        " Good       10         1600          0            0\tGood things\n"
        " Bad1       10         16x0          0            0\tBroken\n"
    )
    snap = parse_poolused(text)
    assert [r.tag for r in snap.rows] == ["Good"]
    assert snap.warnings == [
        (
            7,
            "not a !poolused row, skipped: 'Bad1       10         16x0"
            "          0            0\\tBroken'",
        )
    ]


# --- !poolused ---------------------------------------------------------------------------------


def test_poolused_two_rows_per_tag_when_both_pools_hold_something():
    snap = load_pool_file(DATA / "poolused-2-nonpaged-amda.txt")
    assert snap.source.startswith("!poolused")
    amda = "UNKNOWN pooltag 'amda', please update pooltag.txt"
    assert used(only_row(snap, "amda", "nonpaged")) == (5768754, 1938325232, 336, amda)
    assert used(only_row(snap, "amda", "paged")) == (32, 9360, 292, amda)
    assert used(only_row(snap, "IoWI", "nonpaged")) == (
        5769999,
        646239888,
        112,
        "Io work items , Binary: nt!io",
    )
    assert rows_of(snap, "IoWI", "paged") == []
    assert used(only_row(snap, "MKCx", "paged"))[:2] == (3, 288)
    assert used(only_row(snap, "DAL2", "paged"))[:2] == (1560, 6288352)
    row = only_row(snap, "HalD", "nonpaged")
    assert row.allocs is None and row.frees is None and row.diff == 118


def test_poolused_cache_messages_trailing_space_tags_and_descriptions():
    snap = load_pool_file(DATA / "poolused-2-nonpaged-cachemsgs.txt")
    assert used(only_row(snap, "Vad ", "nonpaged")) == (
        13703,
        2192480,
        160,
        "Mm virtual address descriptors , Binary: nt!mm",
    )
    assert only_row(snap, "File", "nonpaged").driver_text == "File objects"
    assert only_row(snap, "NtxF", "nonpaged").driver_text == (
        "FCB_NONPAGED                      NtfsFcbNonpagedDataLookasideList , Binary: ntfs.sys"
    )
    assert used(only_row(snap, "EtwB", "paged"))[:2] == (16, 442368)
    assert used(only_row(snap, "ScPC", "nonpaged")) == (9, 1009712, 112190, "reset bus code")
    assert snap.rows[0].tag == "ConT" and snap.rows[-1].tag == "EtwG"


def test_poolused_two_commands_in_one_capture():
    runs = load_pool_runs(DATA / "poolused-2-and-4-truncated.txt")
    first, second = runs
    assert used(only_row(first, "EtwB", "nonpaged"))[:2] == (128, 5041136)
    assert used(only_row(first, "EtwB", "paged"))[:2] == (4, 163840)
    assert first.warnings == [(24, "rows were left out here ('...'): table incomplete")]
    assert used(only_row(second, "CM31", "paged"))[:2] == (19797, 91705344)
    assert rows_of(second, "CM31", "nonpaged") == []
    ntff = "FCB_DATA , Binary: ntfs.sys"
    assert used(only_row(second, "Ntff", "nonpaged")) == (5, 1600, 320, ntff)
    assert used(only_row(second, "Ntff", "paged"))[:2] == (2109, 2598288)
    assert second.warnings == [(40, "rows were left out here ('...'): table incomplete")]
    direct = parse_poolused_runs((DATA / "poolused-2-and-4-truncated.txt").read_text())
    assert direct[1].rows == second.rows and direct[1].source == "!poolused"


def test_poolused_older_format_and_session_flag():
    # The WinDbg documentation's example: shorter header, description glued to the number.
    text = (
        "0: kd> !poolused 8\n"
        "   Sorting by  Tag\n\n"
        "  Pool Used:\n"
        "            NonPaged            Paged\n"
        " Tag    Allocs     Used    Allocs     Used\n"
        " 1394        1      520         0        0UNKNOWN pooltag '1394', please update\n"
        " AGP         1      344         2      384UNKNOWN pooltag 'AGP ', please update\n"
    )
    snap = parse_poolused(text)
    assert snap.scope == "session"
    assert used(only_row(snap, "1394", "nonpaged"))[:2] == (1, 520)
    assert used(only_row(snap, "AGP ", "paged")) == (
        2,
        384,
        192,
        "UNKNOWN pooltag 'AGP ', please update",
    )


# --- detection and the file entry point --------------------------------------------------------


def test_detect_format():
    assert detect_format(ISSUE_TABLE) == "poolmon"
    assert detect_format('{"format": "tagfind-pool-snapshot", "version": 1}') == "snapshot"
    assert detect_format('{"format": "something else"}') is None
    assert detect_format("hello\nworld\n") is None
    assert detect_format("") is None


def test_unrecognised_and_unreadable_files(tmp_path):
    prose = tmp_path / "notes.txt"
    prose.write_text("nothing to see\n")
    with pytest.raises(PoolSourceError, match="not a poolmon display or log") as info:
        load_pool_file(prose)
    assert "\n" not in str(info.value)
    with pytest.raises(PoolSourceError, match="cannot read pool file") as info:
        load_pool_file(tmp_path / "missing.log")
    assert "\n" not in str(info.value)
    with pytest.raises(PoolSourceError):
        parse_pool_text('{"format": "tagfind-pool-snapshot", "version": 99}', "x.json")


def test_utf16_file_from_a_powershell_redirect(tmp_path):
    path = tmp_path / "poolmon.txt"
    path.write_bytes("\ufeff".encode("utf-16-le") + ISSUE_TABLE.encode("utf-16-le"))
    assert [r.tag for r in load_pool_file(path).rows] == ["Test", "ipdc", "CM28", "MmSt"]


# --- robustness --------------------------------------------------------------------------------

_FRAGMENTS = [
    ISSUE_TABLE,
    (DATA / "docs-sorted-by-allocs.txt").read_text(),
    (DATA / "poolused-2-and-4-truncated.txt").read_text(),
    " Tag  Type",
    "Paged",
    "Nonp",
    " ( ",
    ")",
    "\t",
    "\r\n",
    "...",
    "kd> !poolused 8",
    " Sorting by Tag",
    "-----",
    "## Tag Type Allocs Frees",
    "9" * 30,
    "\x00",
    "\u2026",
]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_crashes_the_parsers(text):
    _parse_everything(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=20)), max_size=30))
def test_spliced_real_text_never_crashes_the_parsers(pieces):
    _parse_everything("".join(pieces))


def _parse_everything(text):
    for parse in (parse_poolmon_runs, parse_poolused_runs):
        for run in parse(text):
            for row in run.rows:
                assert len(row.tag) == 4
                assert row.diff >= 0
    detect_format(text)
    try:
        parse_pool_text(text)
    except PoolSourceError as error:
        assert "\n" not in str(error)
