"""Tags a pool API finds in a structure it is handed, as the x64 and x86 backends read them at
the call: a ULONG field of a parameter structure (on the caller's stack, or in read-only data),
or the entries of a registration table in read-only data. The layouts are data in apis.py
(PoolApi.tag_field, PoolApi.tag_table); this module only walks them.
"""

from __future__ import annotations

from collections.abc import Callable

from ..apis import PoolApi
from .dataflow import MAX_VALUES, Value, one_of

# (state, pointer value, byte offset) -> the ULONG there, or None: the backend's own reader.
FieldReader = Callable[[object, Value | None, int], Value | None]


def structure_tag(api: PoolApi, state: object, pointer: Value | None, bits: int,
                  read_field: FieldReader, image, to_rva: Callable[[int], int]) -> Value | None:
    """The tag value(s) the API takes from the structure at pointer: one value, a set of
    alternatives (a table), or None when unknown."""
    layout = 0 if bits == 64 else 1
    if api.tag_field is not None:
        return read_field(state, pointer, api.tag_field[layout])
    table = api.tag_table
    if table is None or not isinstance(pointer, int):
        return None
    at = to_rva(pointer) + table.pointer_offset[layout]
    if not image.is_readonly_data(at):
        return None  # a registration the driver may still change is no proof
    raw = image.read(at, bits // 8)
    if len(raw) != bits // 8:
        return None
    entries = to_rva(int.from_bytes(raw, "little"))
    tags: list[Value | None] = []
    for k in range(table.max_entries):
        entry = entries + k * table.entry_size[layout]
        if not image.is_readonly_data(entry):
            return None
        head = image.read(entry, 2)
        if len(head) != 2:
            return None
        if int.from_bytes(head, "little") == table.end_type:
            break
        tag = image.read(entry + table.tag_offset[layout], 4)
        if len(tag) != 4:
            return None
        value = int.from_bytes(tag, "little")
        if value:
            tags.append(value)
    else:
        return None  # no end marker where one must be: not a table we understand
    tags = list(dict.fromkeys(tags))
    if not tags or len(tags) > MAX_VALUES:
        return None
    return one_of(tags)
