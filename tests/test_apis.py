"""The API table's pool-type decoding: base types with modifier bits (wdm.h values)."""

from __future__ import annotations

import pytest

from tagfind.apis import pool_name, pool_paging


@pytest.mark.parametrize(("value", "name", "paging"), [
    (0x0, "NonPagedPool", "nonpaged"),
    (0x1, "PagedPool", "paged"),
    (0x200, "NonPagedPoolNx", "nonpaged"),
    (0x401, "PagedPool|POOL_ZERO_ALLOCATION", "paged"),  # PagedPool | POOL_ZERO_ALLOCATION
    (0x600, "NonPagedPoolNx|POOL_ZERO_ALLOCATION", "nonpaged"),
    (0x9, "PagedPool|POOL_QUOTA_FAIL_INSTEAD_OF_RAISE", "paged"),
    (0x11, "PagedPool|POOL_RAISE_IF_ALLOCATION_FAILURE", "paged"),
    (0x101, "PagedPool|POOL_COLD_ALLOCATION", "paged"),
    (0x21, "PagedPoolSession", "paged"),
    (0x1234, "0x1234", None),  # no POOL_TYPE: shown as the number, paging unknown
])
def test_pool_types_with_modifiers(value, name, paging):
    assert pool_name(value, False) == name
    assert pool_paging(value, False) == paging


def test_pool_flags_are_not_pool_types():
    assert pool_name(0x100, True) == "POOL_FLAG_PAGED"
    assert pool_paging(0x40, True) == "nonpaged"
