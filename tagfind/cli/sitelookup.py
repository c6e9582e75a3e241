"""The index's sites for pool tags as the counters spell them, grouped by tag: the Driver
column of `watch` and `trend` comes from here, from the same index as a query."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ..tags import tag_to_str
from ..top import tag_value
from .options import OpenIndex


def sites_by_tag(opened: OpenIndex, tags: Iterable[str]) -> dict[str, list[Any]]:
    """{tag: sites} for the tags (as poolmon shows them) the index has code evidence for."""
    values = sorted({v for tag in tags if (v := tag_value(tag)) is not None})
    grouped: dict[str, list[Any]] = defaultdict(list)
    if values and opened.index is not None:  # None: no drivers here (saved files only)
        for site in opened.index.sites(tags=values, files=opened.files):
            if site.tag is not None:
                grouped[tag_to_str(site.tag)].append(site)
    return dict(grouped)
