"""The byte filter never hides a file that holds a tag's bytes, and rarely names one that
does not: checked against a direct search of real PE files from the libwine tree."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagfind import bytefilter
from tagfind.tags import str_to_tag, tag_bytes


@pytest.fixture(scope="module")
def libwine_files(wine):
    return sorted(p for p in wine.iterdir() if p.is_file())


@given(st.binary(min_size=0, max_size=4096), st.data())
@settings(max_examples=200, deadline=None)
def test_no_false_negatives(data, draw):
    log2, blob = bytefilter.build(data)
    windows = {data[i : i + 4] for i in range(len(data) - 3)}
    for window in list(windows)[:50]:
        value = int.from_bytes(window, "little")
        if bytefilter.covers(value):
            assert bytefilter.may_contain(log2, blob, value)
    absent = draw.draw(st.binary(min_size=4, max_size=4))
    value = int.from_bytes(absent, "little")
    if absent in data and bytefilter.covers(value):
        assert bytefilter.may_contain(log2, blob, value)


def test_false_positive_rate_on_real_files(libwine_files):
    rng = random.Random(7)
    files = rng.sample(libwine_files, min(40, len(libwine_files)))
    contents = [p.read_bytes() for p in files]
    filters = [bytefilter.build(c) for c in contents]
    probes = [str_to_tag("".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
                                 for _ in range(4))) for _ in range(200)]
    positives = false = 0
    for value in probes:
        needle = tag_bytes(value)
        for content, (log2, blob) in zip(contents, filters, strict=True):
            present = needle in content
            says = bytefilter.may_contain(log2, blob, value)
            assert says or not present  # never a false negative
            if says and not present:
                false += 1
            positives += says
    assert false / (len(probes) * len(files)) < 0.03


def test_non_printable_tags_are_not_covered():
    assert not bytefilter.covers(0x7F1B0A41)
    assert bytefilter.covers(str_to_tag("Irp "))


def test_damaged_filter_never_hides():
    assert bytefilter.may_contain(20, b"\x00" * 10, str_to_tag("Test"))


def test_index_candidates_cover_every_file_with_the_bytes(libwine_files, tmp_path):
    """Through the index: every file that holds a tag's bytes is a candidate, for tags that
    occur (from real strings) and tags that do not; non-printable tags list every file."""
    from tagfind.index import Index

    files = [str(p) for p in libwine_files[:60]]
    contents = {path: open(path, "rb").read() for path in files}
    with Index(tmp_path / "index.sqlite3") as idx:
        idx.refresh(files, jobs=1)
        for text in ("None", "File", "Irp ", "Qq9Z", "ntos"):
            value = str_to_tag(text)
            holders = {p for p, data in contents.items() if tag_bytes(value) in data}
            candidates = set(idx.byte_candidates(value))
            assert holders <= candidates
            assert len(candidates - holders) <= max(2, len(files) // 20)
        assert set(idx.byte_candidates(0x7F1B0A41)) == set(files)
