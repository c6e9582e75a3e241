"""From call events to sites, the same for every architecture: direct calls to pool APIs,
then driver-local wrappers (functions that forward one of their own arguments as the tag),
resolved through chains by asking the backend for the callers of each new wrapper.

An analysis observes a direct call only when its target can give a site (DirectCalls); a
function that passed over a call to a target found to be a wrapper later is analysed again.

A backend (one per instruction set) finds candidate functions cheaply and analyses one
function into CallEvents; this module never decodes an instruction itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ..apis import POOL_APIS, WDF_APIS_BY_INDEX, PoolApi, api_for_call
from ..tags import NONE_TAG, strip_protected
from .dataflow import INDIRECT, Value, members
from .model import Site, evidence_for

MAX_WRAPPER_DEPTH = 8
MAX_FUNCTIONS = 20000  # analysis budget per file; past it the scan is reported partial
MAX_CALLBACKS = 32  # structure-field wrappers whose address users are looked up per file


class CallEvent(NamedTuple):
    """A call or tail jump observed during analysis, with the argument values it passes. (A
    tuple: cheaper to make than a frozen dataclass, and made for every observed call.)"""

    rva: int
    function: int
    target: Value | None  # ("imp", name) | ("wdf", slot) | int (local RVA) | INDIRECT
    args: tuple[Value | None, ...]
    # Stack structures the call's arguments point at: (argument, byte offset, ULONG there),
    # for calls of local functions and through pointers (a callee may take its tag from such
    # a field).
    fields: tuple[tuple[int, int, Value], ...] = ()


@dataclass(frozen=True)
class Wrapper:
    """A local function that passes its own argument `tag_arg` on as the tag of `api`.
    pool/size are constants or ("arg", i) references to the wrapper's own arguments."""

    api: str
    tag_arg: int
    via: tuple[int, ...]
    pool: Value | None
    size: Value | None
    # Run-time values that may replace the forwarded tag inside the wrapper (or the wrappers
    # it calls): `if (g_RandomTag) Tag = g_RandomTag;` compiled to a cmov.
    runtime: tuple[str, ...] = ()
    # Set when the tag is the ULONG at this offset of the structure argument `tag_arg` points
    # at (`ExFreePoolWithTag(p, obj->Tag)`), not the argument itself.
    tag_offset: int | None = None
    # A link of the chain is an indirect call matched by its shape (see _callback_of): the
    # sites it gives have the weaker evidence "callback".
    callback: bool = False


class DirectCalls:
    """Which direct calls and jumps out of a function (`bl target`, `call target`, a tail
    `b`/`jmp`) an analysis observes: those to `wanted`, the local targets whose calls can
    give a site (pool-API thunks and exports, the wrappers known so far, and the candidate
    functions, which may become wrappers). The targets of the others are collected in
    `passed_over`: when one of them turns out to be a wrapper, the function is analysed
    again.

    Calls through pointers are observed whatever their target (on x64/x86, except through
    the IAT slot of an import no site comes from: intel.observed_insns). Not observing a call
    changes no value anywhere: the analysis only leaves out the blocks from which no
    observed instruction can be reached."""

    __slots__ = ("wanted", "passed_over")

    def __init__(self, wanted: set[int] | frozenset[int]) -> None:
        self.wanted = wanted  # read, never changed, during one analysis
        self.passed_over: set[int] = set()

    def observes(self, target: int) -> bool:
        if target in self.wanted:
            return True
        self.passed_over.add(target)
        return False


class Backend(Protocol):
    def local_apis(self) -> dict[int, str]: ...
    def candidate_functions(self) -> Iterable[int]: ...
    def callers_of(self, target: int) -> Iterable[int]: ...
    def analyse(self, function: int, calls: DirectCalls | None = None) -> list[CallEvent]:
        """The calls of one function; with `calls`, the direct calls it observes (all when
        None)."""
        ...
    def function_of(self, rva: int) -> int | None: ...
    def constant_field(self, pointer: int, offset: int) -> Value | None: ...
    def address_users(self, functions: set[int]) -> Iterable[int]: ...


class SiteFinder:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.local_apis = backend.local_apis()  # local RVA (thunk, own export) -> API
        self.events: dict[int, list[CallEvent]] = {}
        self.wrappers: dict[int, Wrapper] = {}
        # Local targets whose direct calls are observed (DirectCalls; run adds the candidate
        # functions), and for every other target the analysed functions that call it
        # directly without observing the call.
        self.wanted: set[int] = set(self.local_apis)
        self.passed_over: dict[int, set[int]] = {}
        # Structure-field wrapper -> the functions that use its address (callback candidates).
        self.callback_users: dict[int, set[int]] = {}
        self.truncated = False

    def run(self) -> list[Site]:
        pending = list(dict.fromkeys(self.backend.candidate_functions()))
        # A candidate (it references a pool API) is the likeliest wrapper: calls to it are
        # observed from the start, which spares analysing their callers again (250 times on
        # the ARM64 corpus, for the same transfers).
        self.wanted.update(pending)
        looked_up: set[int] = set()
        for _depth in range(MAX_WRAPPER_DEPTH + 1):
            new_wrappers = self._analyse_all(pending)
            if not new_wrappers:
                # Functions that take a tag from a structure argument may be callbacks: the
                # code that uses their address may call them through a pointer.
                pending = self._callback_users(looked_up)
                if not pending:
                    break
                continue
            pending = []
            for wrapper in new_wrappers:
                for caller in self.backend.callers_of(wrapper):
                    function = self.backend.function_of(caller)
                    if function is not None:
                        pending.append(function)
            pending = list(dict.fromkeys(pending))
        return self._sites()

    def _callback_users(self, looked_up: set[int]) -> list[int]:
        """Not yet analysed functions that use a structure-field wrapper's address (take it,
        or load it from a global that holds it): where it may be called through a pointer."""
        fresh = [rva for rva, w in self.wrappers.items()
                 if w.tag_offset is not None and rva not in looked_up]
        pending: list[int] = []
        for rva in fresh[:max(0, MAX_CALLBACKS - len(looked_up))]:
            looked_up.add(rva)
            users = {self.backend.function_of(r) for r in self.backend.address_users({rva})}
            users.discard(None)
            self.callback_users[rva] = users
            pending += [f for f in users if f not in self.events]
        return list(dict.fromkeys(pending))

    # --- analysis ---------------------------------------------------------------------------
    def _analyse_all(self, functions: list[int]) -> list[int]:
        """Analyse functions not seen yet; return functions newly found to be wrappers
        (including ones found among already-analysed functions that call a new wrapper)."""
        for function in functions:
            if function in self.events:
                continue
            if len(self.events) >= MAX_FUNCTIONS:
                self.truncated = True
                break
            self._analyse(function)
        found = []
        changed = True
        while changed:  # a function may become a wrapper only once its callee is known as one
            changed = False
            by_function = self._events_by_function()
            for function in list(by_function):
                if function in self.wrappers:
                    continue
                wrapper = self._as_wrapper(function, by_function.get(function, []))
                if wrapper is not None:
                    self.wrappers[function] = wrapper
                    found.append(function)
                    changed = True
                    if self._want(function):
                        # The functions analysed again are judged by their new events, in
                        # this pass already: as if their calls had been observed from the
                        # start (which of a function's calls makes it a wrapper depends on
                        # the wrappers known when it is judged).
                        by_function = self._events_by_function()
        return found

    def _analyse(self, function: int) -> None:
        calls = DirectCalls(self.wanted)
        self.events[function] = self.backend.analyse(function, calls)
        for target in calls.passed_over:
            self.passed_over.setdefault(target, set()).add(function)

    def _want(self, wrapper: int) -> bool:
        """Observe the direct calls of a new wrapper from now on, and analyse again the
        functions that passed over theirs. Returns whether there were any."""
        self.wanted.add(wrapper)
        again = sorted(self.passed_over.pop(wrapper, ()))
        for function in again:
            self._analyse(function)
        return bool(again)

    def _events_by_function(self) -> dict[int, list[CallEvent]]:
        by_function: dict[int, list[CallEvent]] = {}
        for events in self.events.values():
            for event in events:
                by_function.setdefault(event.function, []).append(event)
        return by_function

    def _resolve(self, event: CallEvent) -> tuple[PoolApi, Wrapper | None, int] | None:
        """(api, wrapper or None, wrapper RVA) for a call that reaches a pool API."""
        target = event.target
        if isinstance(target, tuple) and target[0] == "imp":
            api = api_for_call(target[1], event.args)
            return (api, None, 0) if api else None
        if isinstance(target, tuple) and target[0] == "wdf":  # a KMDF function-table slot
            api = WDF_APIS_BY_INDEX.get(target[1])
            return (api, None, 0) if api else None
        if isinstance(target, int):
            name = self.local_apis.get(target)
            if name is not None:
                api = api_for_call(name, event.args)
                return (api, None, 0) if api else None
            wrapper = self.wrappers.get(target)
            if wrapper is not None:
                return POOL_APIS[wrapper.api], wrapper, target
        if target == INDIRECT:
            callee = self._callback_of(event)
            if callee is not None:
                return POOL_APIS[self.wrappers[callee].api], self.wrappers[callee], callee
        return None

    def _callback_of(self, event: CallEvent) -> int | None:
        """The function an indirect call reaches, matched by shape: the call hands a stack
        structure holding a value at (argument k, offset o), and exactly one function of the
        driver takes its tag from field o of its argument k and has its address used by the
        calling function (a generic object-creation routine calling an initialise callback
        through a pointer). None when no function or several fit: the match is evidence only
        where it is unique."""
        present = {(arg, offset) for arg, offset, _value in event.fields}
        fits = [rva for rva, w in self.wrappers.items()
                if w.tag_offset is not None and (w.tag_arg, w.tag_offset) in present
                and event.function in self.callback_users.get(rva, ())]
        return fits[0] if len(fits) == 1 else None

    def _as_wrapper(self, function: int, events: list[CallEvent]) -> Wrapper | None:
        for event in events:
            resolved = self._resolve(event)
            if resolved is None:
                continue
            api, wrapper, wrapper_rva = resolved
            if api.tag_arg is None or wrapper_rva == function:
                continue
            alternatives = members(self._tag_value(event, api, wrapper))
            forwarded = sorted(v[1] for v in alternatives if _is_arg(v))
            fields = sorted(v[1:] for v in alternatives if _is_field(v))
            if not forwarded and not fields:
                continue
            via = (wrapper_rva, *wrapper.via) if wrapper else ()
            pool, size = self._pool_and_size(api, wrapper, event.args)
            inner = wrapper.runtime if wrapper else ()
            others = [v for v in alternatives if not _is_field(v)]
            runtime = _merge(inner, _runtime(others))
            callback = event.target == INDIRECT or (wrapper is not None and wrapper.callback)
            if forwarded:
                return Wrapper(api.name, forwarded[0], via, pool, size, runtime,
                               callback=callback)
            return Wrapper(api.name, fields[0][0], via, pool, size, runtime, fields[0][1],
                           callback)
        return None

    def _tag_value(self, event: CallEvent, api: PoolApi, wrapper: Wrapper | None) -> Value | None:
        """The tag a call passes, as the calling function sees it: an argument of a direct
        call, the value a wrapper forwards, or the structure field a wrapper reads."""
        if wrapper is None:
            return _arg(event.args, api.tag_arg)
        value = _arg(event.args, wrapper.tag_arg)
        if wrapper.tag_offset is None:
            return value
        if _is_arg(value):
            return ("field", value[1], wrapper.tag_offset)  # our caller's structure
        for arg, offset, field in event.fields:
            if arg == wrapper.tag_arg and offset == wrapper.tag_offset:
                return field
        if isinstance(value, int):
            return self.backend.constant_field(value, wrapper.tag_offset)
        return None

    @staticmethod
    def _pool_and_size(
        api: PoolApi, wrapper: Wrapper | None, args: tuple[Value | None, ...]
    ) -> tuple[Value | None, Value | None]:
        if wrapper is None:
            return _arg(args, api.pool_arg), _arg(args, api.size_arg)
        return _through(wrapper.pool, args), _through(wrapper.size, args)

    # --- sites ------------------------------------------------------------------------------
    def _sites(self) -> list[Site]:
        sites: list[Site] = []
        for events in self.events.values():
            for event in events:
                sites.extend(self._sites_of(event.function, event))
        sites.sort(key=lambda s: (s.rva, s.api, -1 if s.tag is None else s.tag))
        return sites

    def _sites_of(self, function: int, event: CallEvent) -> list[Site]:
        """The sites of one call: one per constant tag that reaches the API there (each on
        some path), or one unproven site when none does."""
        if event.rva in self.local_apis:
            return []  # an import thunk's own jump stands for the API; it is not a use
        resolved = self._resolve(event)
        if resolved is None:
            return []
        api, wrapper, wrapper_rva = resolved
        via = (wrapper_rva, *wrapper.via) if wrapper else ()
        pool, size = self._pool_and_size(api, wrapper, event.args)
        pool = pool if isinstance(pool, int) else None
        size = size if isinstance(size, int) else None
        callback = event.target == INDIRECT or (wrapper is not None and wrapper.callback)
        evidence = evidence_for(api.name, via, callback)
        if api.tag_arg is None:
            return [Site(event.rva, api.name, NONE_TAG, evidence, False, pool, size, via,
                         function)]
        alternatives = members(self._tag_value(event, api, wrapper))
        runtime = _merge(wrapper.runtime if wrapper else (), _runtime(alternatives))
        sites = []
        for raw in alternatives:
            if not isinstance(raw, int):
                continue
            tag, protected = strip_protected(raw & 0xFFFFFFFF)
            if tag == 0:
                continue  # tag 0 means "no tag" (ExFreePoolWithTag(p, 0))
            sites.append(Site(event.rva, api.name, tag, evidence, protected, pool, size, via,
                              function, runtime))
        if sites or any(isinstance(raw, int) for raw in alternatives):
            return sites
        if wrapper is not None or api.tag_in_structure:
            # A call between wrappers is not a pool call of its own; an unread structure
            # field says nothing about the driver's tags.
            return []
        # A direct pool call whose tag is not a constant here (a wrapper's own call
        # included: its callers' sites carry the values).
        return [Site(event.rva, api.name, None, evidence, False, pool, size, via, function,
                     runtime)]


def _arg(args: tuple[Value | None, ...], index: int | None) -> Value | None:
    if index is None or index >= len(args):
        return None
    return args[index]


def _is_arg(value: Value) -> bool:
    return isinstance(value, tuple) and value[0] == "arg"


def _is_field(value: Value) -> bool:
    return isinstance(value, tuple) and value[0] == "field"


def _runtime(alternatives: Iterable[Value]) -> tuple[str, ...]:
    """The run-time sources among a tag's alternatives (constants and forwarded arguments
    are not: they are the tags themselves, or their callers')."""
    out = []
    for value in alternatives:
        if isinstance(value, int) or _is_arg(value):
            continue
        if isinstance(value, tuple) and value[0] == "glob":
            out.append(f"global:0x{value[1]:x}")
        elif isinstance(value, tuple) and value[0] == "field":
            out.append(f"field:{value[1]}:0x{value[2]:x}")
        else:
            out.append("unknown")
    return tuple(sorted(set(out)))


def _merge(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted(set(a) | set(b))) if b else a


def _through(value: Value | None, args: tuple[Value | None, ...]) -> Value | None:
    """A wrapper's pool/size description evaluated at one of its call sites."""
    if isinstance(value, tuple) and value[0] == "arg":
        return _arg(args, value[1])
    return value
