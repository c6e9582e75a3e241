"""What `tagfind watch` shows, without drawing it: the current frame against the previous one
(changes per row and which cells changed), poolmon's sort keys and views, include/exclude
patterns, totals, scrolling, and the key handling that changes them.

Keys follow poolmon's documented ones: P cycles paged/nonpaged/both; B bytes, T tag, M bytes
per allocation, A allocs, F frees, S and D allocs minus frees (pressing the same key again
reverses the order); ( and ) sort by the change since the last refresh instead of the value;
E toggles the totals, L the highlighting; I and X ask for include/exclude patterns (poolmon's
/i and /x: * and ?, case-sensitive); Space pauses; Q or Esc quits; H or ? shows help. Arrows,
PgUp/PgDn, Home/End scroll; Enter shows the selected tag's driver evidence. N (tagfind's own)
steps one frame, for replay while paused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from ..pool.model import PoolRow, PoolSnapshot, counter_delta
from ..top import DriverCandidate, rank_drivers

# key -> (column, label, ascending by default)
SORT_KEYS: dict[str, tuple[str, str, bool]] = {
    "b": ("bytes", "Bytes", False),
    "t": ("tag", "Tag", True),
    "m": ("per_alloc", "Per Alloc", False),
    "a": ("allocs", "Allocs", False),
    "f": ("frees", "Frees", False),
    "s": ("diff", "Diff", False),
    "d": ("diff", "Diff", False),
}
POOL_VIEWS = ("both", "paged", "nonpaged")
COLUMNS = ("allocs", "frees", "diff", "bytes")
TABLE, PROMPT, DETAIL, HELP = "table", "prompt", "detail", "help"

Resolver = Callable[[set[str]], dict[str, list[Any]]]
OwnerText = Callable[[str], str | None]


@dataclass
class WatchRow:
    """One (tag, pool) of the current frame with its change since the previous frame.
    `changes` is None for a row the previous frame did not have (new); `changed` names the
    columns whose value moved."""

    tag: str
    pool: str
    allocs: int | None
    frees: int | None
    diff: int
    bytes: int
    per_alloc: int | None
    changes: dict[str, int | None] | None
    changed: frozenset[str]
    drivers: list[DriverCandidate] = field(default_factory=list)
    pooltag_owner: str | None = None
    big_count: int | None = None  # big allocations now, when the frame carries the big pool
    big_bytes: int | None = None

    def value(self, column: str) -> Any:
        return getattr(self, column)

    def change(self, column: str) -> int | None:
        return None if self.changes is None else self.changes.get(column)


@dataclass
class Totals:
    allocs: int = 0
    frees: int = 0
    diff: int = 0
    bytes: int = 0
    delta_bytes: int = 0


@dataclass
class WatchModel:
    """State of the watch screen. Push frames with `push`, feed keys with `handle_key`, read
    what to draw from `rows`, `visible_rows`, `totals` and the fields."""

    resolver: Resolver | None = None
    owner_text: OwnerText | None = None
    top: int | None = None
    sort_column: str = "bytes"
    sort_label: str = "Bytes"
    ascending: bool = False
    by_change: bool = False
    pool_view: str = "both"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    show_totals: bool = False
    highlight: bool = True
    paused: bool = False
    mode: str = TABLE
    prompt_kind: str = ""
    prompt_text: str = ""
    selected: int = 0
    offset: int = 0
    page_size: int = 20
    step_requested: bool = False
    current: PoolSnapshot | None = None
    previous: PoolSnapshot | None = None
    frames_seen: int = 0
    _sites: dict[str, list[Any]] = field(default_factory=dict)
    _big: dict[tuple[str, str], Any] | None = None  # the current frame's big pool per key

    # --- frames ------------------------------------------------------------------------------
    def push(self, snapshot: PoolSnapshot) -> None:
        """A new reading: the current one becomes the previous one."""
        self.previous, self.current = self.current, snapshot
        self.frames_seen += 1
        usage = snapshot.big_pool
        self._big = None if usage is None else {(u.tag, u.pool): u for u in usage}
        new_tags = {row.tag for row in snapshot.rows} - set(self._sites)
        if new_tags:
            found = self.resolver(new_tags) if self.resolver else {}
            for tag in new_tags:
                self._sites[tag] = list(found.get(tag, ()))

    def rows(self) -> list[WatchRow]:
        """Current rows after the pool view and patterns, sorted, cut to --top."""
        if self.current is None:
            return []
        before = self.previous.by_key() if self.previous else None
        bits = min(self.current.counter_bits,
                   self.previous.counter_bits if self.previous else 64)
        out = [self._row(row, before, bits) for row in self.current.by_key().values()
               if self._wanted(row)]
        out.sort(key=lambda r: (r.tag, r.pool))  # ties keep tag order
        out.sort(key=self._sort_key, reverse=not self.ascending)
        return out[: self.top] if self.top else out

    @property
    def has_big_pool(self) -> bool:
        """Whether the current frame carries the big pool table (live, or a snapshot that
        recorded it): the screen then shows the Big columns."""
        return self._big is not None

    def visible_rows(self) -> list[WatchRow]:
        rows = self.rows()
        self._clamp(len(rows))
        return rows[self.offset : self.offset + self.page_size]

    def selected_row(self) -> WatchRow | None:
        rows = self.rows()
        self._clamp(len(rows))
        return rows[self.selected] if rows else None

    def totals(self) -> dict[str, Totals]:
        """Per pool type over every current row (patterns do not apply: poolmon's /e totals
        are the pool's)."""
        sums = {pool: Totals() for pool in ("paged", "nonpaged")}
        if self.current is None:
            return sums
        before = self.previous.by_key() if self.previous else {}
        for row in self.current.by_key().values():
            total = sums[row.pool]
            total.allocs += row.allocs or 0
            total.frees += row.frees or 0
            total.diff += row.diff
            total.bytes += row.bytes
            old = before.get(row.key)
            total.delta_bytes += row.bytes - (old.bytes if old else 0) if self.previous else 0
        if self.previous:
            for key, old in before.items():
                if key not in self.current.by_key():
                    sums[old.pool].delta_bytes -= old.bytes
        return sums

    # --- keys -------------------------------------------------------------------------------
    def handle_key(self, key: str) -> bool:
        """Apply one key ("a", "B", "up", "pgdn", "enter", "esc"...). False means quit."""
        if self.mode == PROMPT:
            self._prompt_key(key)
            return True
        if self.mode in (DETAIL, HELP):
            if key in ("esc", "enter", "q", "Q", "h", "?"):
                self.mode = TABLE
            return True
        lower = key.lower() if len(key) == 1 else key
        if lower in ("q", "esc"):
            return False
        action = _ACTIONS.get(lower)
        if action is not None:
            action(self)
        elif lower in SORT_KEYS:
            self._sort(lower)
        return True

    def sort_by(self, key: str) -> None:
        """Sort by poolmon's key letter `key`, in that column's usual order."""
        self.sort_column, self.sort_label, self.ascending = SORT_KEYS[key]
        self.selected = self.offset = 0

    def _sort(self, key: str) -> None:
        column, _label, _ascending = SORT_KEYS[key]
        if column == self.sort_column:
            self.ascending = not self.ascending
            self.selected = self.offset = 0
        else:
            self.sort_by(key)

    def _prompt_key(self, key: str) -> None:
        if key == "esc":
            self.mode = TABLE
        elif key == "enter":
            patterns = [p for p in self.prompt_text.replace(",", " ").split(" ") if p]
            setattr(self, self.prompt_kind, patterns)
            self.mode, self.selected, self.offset = TABLE, 0, 0
        elif key == "backspace":
            self.prompt_text = self.prompt_text[:-1]
        elif len(key) == 1 and key.isprintable():
            self.prompt_text += key

    def _ask(self, kind: str) -> None:
        self.mode, self.prompt_kind = PROMPT, kind
        self.prompt_text = " ".join(getattr(self, kind))

    def _move(self, by: int) -> None:
        self.selected += by
        self._clamp(len(self.rows()))

    def _clamp(self, count: int) -> None:
        self.selected = max(0, min(self.selected, count - 1))
        if self.selected < self.offset:
            self.offset = self.selected
        elif self.selected >= self.offset + self.page_size:
            self.offset = self.selected - self.page_size + 1
        self.offset = max(0, min(self.offset, max(0, count - self.page_size)))

    # --- rows -------------------------------------------------------------------------------
    def _wanted(self, row: PoolRow) -> bool:
        if self.pool_view != "both" and row.pool != self.pool_view:
            return False
        if self.include and not any(fnmatchcase(row.tag, p) for p in self.include):
            return False
        return not any(fnmatchcase(row.tag, p) for p in self.exclude)

    def _row(self, row: PoolRow, before: dict[tuple[str, str], PoolRow] | None,
             bits: int) -> WatchRow:
        changes: dict[str, int | None] | None = None
        changed: frozenset[str] = frozenset(COLUMNS) if before is not None else frozenset()
        old = before.get(row.key) if before is not None else None
        if old is not None:
            changes = {
                "allocs": _cumulative(old.allocs, row.allocs, bits),
                "frees": _cumulative(old.frees, row.frees, bits),
                "diff": row.diff - old.diff,
                "bytes": row.bytes - old.bytes,
            }
            changed = frozenset(c for c, v in changes.items() if v)
        owner = self.owner_text(row.tag) if self.owner_text else None
        big_count = big_bytes = None
        if self._big is not None:
            usage = self._big.get(row.key)
            big_count, big_bytes = (usage.count, usage.bytes) if usage else (0, 0)
        return WatchRow(row.tag, row.pool, row.allocs, row.frees, row.diff, row.bytes,
                        row.per_alloc, changes, changed,
                        rank_drivers(row.pool, row.per_alloc, self._sites.get(row.tag, ())),
                        owner, big_count, big_bytes)

    def _sort_key(self, row: WatchRow) -> Any:
        if self.sort_column == "tag":
            return row.tag
        if self.by_change:
            value = row.change(self.sort_column) if self.sort_column in COLUMNS else None
            if value is None and row.changes is None and self.sort_column in COLUMNS:
                value = row.value(self.sort_column) or 0  # new row: all of it is change
            return value or 0
        return row.value(self.sort_column) or 0


def _cumulative(old: int | None, new: int | None, bits: int) -> int | None:
    if old is None or new is None:
        return None
    return counter_delta(old, new, bits)


def _cycle_pool(model: WatchModel) -> None:
    model.pool_view = POOL_VIEWS[(POOL_VIEWS.index(model.pool_view) + 1) % len(POOL_VIEWS)]
    model.selected = model.offset = 0


def _toggle(name: str) -> Callable[[WatchModel], None]:
    def flip(model: WatchModel) -> None:
        setattr(model, name, not getattr(model, name))

    return flip


def _enter(model: WatchModel) -> None:
    if model.selected_row() is not None:
        model.mode = DETAIL


def _set(name: str, value: Any) -> Callable[[WatchModel], None]:
    return lambda model: setattr(model, name, value)


_ACTIONS: dict[str, Callable[[WatchModel], None]] = {
    "p": _cycle_pool,
    "(": _toggle("by_change"),
    ")": _toggle("by_change"),
    "e": _toggle("show_totals"),
    "l": _toggle("highlight"),
    " ": _toggle("paused"),
    "i": lambda m: m._ask("include"),
    "x": lambda m: m._ask("exclude"),
    "n": _set("step_requested", True),
    "h": _set("mode", HELP),
    "?": _set("mode", HELP),
    "enter": _enter,
    "up": lambda m: m._move(-1),
    "down": lambda m: m._move(1),
    "pgup": lambda m: m._move(-m.page_size),
    "pgdn": lambda m: m._move(m.page_size),
    "home": lambda m: m._move(-(10**9)),
    "end": lambda m: m._move(10**9),
}


def frames_from(snapshots: Iterable[PoolSnapshot]) -> Callable[[], PoolSnapshot | None]:
    """A frame source over saved snapshots: the next one each call, None when played out."""
    iterator = iter(list(snapshots))
    return lambda: next(iterator, None)


def detail_lines(row: WatchRow) -> Sequence[str]:
    """The Enter view of a row: every candidate driver with its score and reasons."""
    lines = [f"{row.tag!r} {row.pool}: Diff {row.diff}, Bytes {row.bytes}, Per Alloc "
             f"{row.per_alloc if row.per_alloc is not None else '-'}",
             f"pooltag.txt: {row.pooltag_owner or '-'}", ""]
    if row.big_count is not None:
        lines.insert(1, f"big pool: {row.big_count} block(s) of a page or more, "
                        f"{row.big_bytes} bytes")
    if not row.drivers:
        lines.append("no indexed driver uses this tag in its code")
    for cand in row.drivers:
        lines.append(f"{cand.driver}  ({cand.path})  score {cand.score}, {cand.sites} site(s)")
        lines.extend(f"    {reason}" for reason in cand.reasons)
    return lines
