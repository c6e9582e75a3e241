"""PEImage.section_at finds the section that holds an RVA by bisection when the sections'
spans in memory are disjoint, as the loader requires, and looks at each in table order
otherwise (a damaged table): on real files and on a real driver whose sections are made to
overlap, both give what the rule says (the first section whose bytes hold the RVA, else
the first whose zero-filled tail does)."""

from __future__ import annotations

import random

import hostile_pe

from tagfind.pe import PEImage


def by_the_rule(image: PEImage, rva: int):
    for section in image.sections:
        if section.contains(rva):
            return section
    for section in image.sections:
        if section.rva <= rva < section.rva + section.vsize:
            return section
    return None


def probes(image: PEImage, count: int = 200) -> list[int]:
    rng = random.Random(0)
    edges = [-1, 0, image.size_of_image - 1, image.size_of_image, 1 << 40]
    for s in image.sections:
        edges += [s.rva - 1, s.rva, s.rva + s.size - 1, s.rva + s.size, s.rva + s.vsize - 1,
                  s.rva + s.vsize]
    return edges + [rng.randrange(0, image.size_of_image + 0x1000) for _ in range(count)]


def test_bisection_on_real_files(wine, fixture_driver):
    paths = sorted(wine.iterdir())[::10] + [fixture_driver("main"), fixture_driver("kmdf")]
    bisected = 0
    for path in paths:
        data = path.read_bytes()
        if data[:2] != b"MZ":
            continue
        image = PEImage(str(path), data)
        bisected += image._section_starts is not None
        for rva in probes(image):
            assert image.section_at(rva) is by_the_rule(image, rva), (path.name, hex(rva))
    assert bisected > 50


def test_overlapping_sections_are_looked_at_in_table_order(fixture_driver):
    data = hostile_pe.overlapping_sections(fixture_driver("main").read_bytes())
    image = PEImage("overlapping.sys", data)
    assert image._section_starts is None
    for rva in probes(image):
        assert image.section_at(rva) is by_the_rule(image, rva), hex(rva)
