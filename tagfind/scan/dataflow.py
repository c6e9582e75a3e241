"""Forward constant propagation over one function's control-flow graph, independent of the
instruction set: an architecture supplies decoded instructions, a transfer function and the
successors of each instruction; this module builds basic blocks and iterates to a fixpoint.

Values are small sets: a register or stack slot holds one value, a frozenset of up to
MAX_VALUES alternatives (a conditional move, or paths that disagree), or is unknown (absent
from the state). Where paths meet, the alternatives are united; a value unknown on any path is
unknown after the merge, and a set that grows past MAX_VALUES becomes unknown. So every member
of a set at a call is carried there by some path, and nothing that no path carries is in it.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Callable, Hashable, Sequence
from itertools import compress
from operator import itemgetter
from typing import Any, NamedTuple

Value = Hashable  # int constants, ("arg", i), ("sp", off), ("imp", name), ("glob", rva), ...

# Symbolic values every backend makes:
GLOBAL = "glob"  # ("glob", rva): the value of writable image memory at rva, read at run time
FIELD = "field"  # ("field", k, offset): the ULONG at offset in the structure argument k points at
INDIRECT = ("indirect",)  # the target of a call through a pointer nothing resolved

MAX_VALUES = 8  # alternatives one register or slot may hold before it counts as unknown
# Back edges into one block (a loop) after which growing values become unknown: alternatives
# come from the first rounds, and the fixpoint takes a few rounds instead of one per member.
# Forward merges (if/else chains, switch joins) never widen.
WIDEN_AFTER = 2


def members(value: Value | None) -> tuple[Value, ...]:
    """The alternatives of a value: itself, or the members of its set (none when unknown)."""
    if value is None:
        return ()
    if isinstance(value, frozenset):
        return tuple(value)
    return (value,)


def join(a: Value | None, b: Value | None) -> Value | None:
    """Either a or b: the union of their alternatives, None (unknown) when either is unknown
    or the union has more than MAX_VALUES members."""
    if a == b:
        return a
    if a is None or b is None:
        return None
    union = (a if isinstance(a, frozenset) else frozenset((a,))) | (
        b if isinstance(b, frozenset) else frozenset((b,)))
    if len(union) > MAX_VALUES:
        return None
    return union if len(union) > 1 else next(iter(union))


def one_of(values: Sequence[Value | None]) -> Value | None:
    """A value that is any of values (None when one is unknown or there are too many)."""
    if not values:
        return None
    out = values[0]
    for value in values[1:]:
        out = join(out, value)
        if out is None:
            return None
    return out


class State:
    """Registers and stack slots known at one point. Missing means unknown.

    `fresh` marks a function entry: untouched stack slots above the return address are the
    caller's arguments. (A slotted class: states are copied at every block of every function.)"""

    __slots__ = ("regs", "stack", "fresh")

    def __init__(self, regs: dict[str, Value] | None = None,
                 stack: dict[int, tuple[int, Value]] | None = None, fresh: bool = False) -> None:
        self.regs = {} if regs is None else regs
        self.stack = {} if stack is None else stack  # offset -> (width, value)
        self.fresh = fresh

    def __eq__(self, other: object) -> bool:
        return isinstance(other, State) and self.same_as(other)

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"State(regs={self.regs!r}, stack={self.stack!r}, fresh={self.fresh!r})"

    def copy(self) -> State:
        return State(self.regs.copy(), self.stack.copy(), self.fresh)

    def meet(self, other: State, widen: bool = False) -> State:
        """The state where paths from self and other join: each value is what either path
        carries. widen (a loop that keeps changing the state): a value that would grow is
        unknown instead, so the iteration ends quickly. The result may be self, or share its
        dicts with self: run() never changes a state it keeps."""
        fresh = self.fresh and other.fresh
        same_regs = self.regs == other.regs
        same_stack = self.stack == other.stack
        if same_regs and same_stack:
            # The common case, a fixpoint.
            return self if fresh == self.fresh else State(self.regs, self.stack, fresh)
        if same_regs:
            regs = self.regs
        else:
            oregs = other.regs
            regs = {}
            for k, v in self.regs.items():
                o = oregs.get(k, _MISSING)
                if o == v:
                    regs[k] = v
                elif o is not _MISSING and not widen:
                    joined = join(v, o)
                    if joined is not None:
                        regs[k] = joined
        if same_stack:
            return State(regs, self.stack, fresh)
        ostack = other.stack
        stack = {}
        for k, entry in self.stack.items():
            o = ostack.get(k)
            if o == entry:
                stack[k] = entry
                continue
            joined = None
            if o is not None and o[0] == entry[0] and not widen:
                joined = join(entry[1], o[1])
            if joined is not None:
                stack[k] = (entry[0], joined)
            elif fresh:
                # In a fresh frame a missing slot above the return address reads as the
                # caller's argument: keep it as known-unknown instead.
                stack[k] = (entry[0], None)
        if fresh:
            for k, (w, _v) in ostack.items():
                if k not in self.stack:
                    stack[k] = (w, None)
        return State(regs, stack, fresh)

    def same_as(self, other: State) -> bool:
        return ((self.regs is other.regs or self.regs == other.regs)
                and (self.stack is other.stack or self.stack == other.stack)
                and self.fresh == other.fresh)


_MISSING = object()
_ADDRESS, _MNEMONIC = itemgetter(0), itemgetter(2)  # of an Insn


class Insn(NamedTuple):
    """One decoded instruction (a tuple: made a hundred thousand times per large driver, and
    a frozen dataclass costs three times as much to create)."""

    address: int
    size: int
    mnemonic: str
    op_str: str

    @property
    def next(self) -> int:
        return self.address + self.size


class Flow(NamedTuple):
    """How control leaves an instruction: `targets` are branch targets inside the function,
    `falls_through` whether the next instruction follows. (A tuple: one is made for every
    branch of every analysed function, at a third of a frozen dataclass's cost.)"""

    targets: tuple[int, ...] = ()
    falls_through: bool = True
    indirect: bool = False  # a jump through a register inside the function (a jump table)


class Observed(NamedTuple):
    """Which instructions run() hands to the observer: those whose mnemonic `mnemonics`
    accepts (asked once per mnemonic), and of them those `insn` accepts (all when None)."""

    mnemonics: Callable[[str], bool]
    insn: Callable[[Insn], bool] | None = None


Transfer = Callable[[State, Insn], None]
# How control leaves an instruction. FALL_THROUGH (this one object) must depend on the
# mnemonic alone: run() asks once per mnemonic that gets it.
FlowOf = Callable[[Insn], Flow]
Observe = Callable[[State, Insn], Any]
FALL_THROUGH = Flow()  # most instructions: flow_of returns this one object for them
DISPATCH = Flow((), False, indirect=True)


def jump_table_flow(insns: Sequence[Insn], flow_of: FlowOf,
                    is_table_jump: Callable[[Insn, Insn], bool], jump: str) -> FlowOf:
    """flow_of, with the jumps (instructions with mnemonic `jump`) that is_table_jump(previous,
    jump) calls a switch dispatch marked indirect: run() then enters the function's otherwise
    unreached blocks (the switch's cases) from them. Only for functions without an exception
    handler, whose handler blocks are unreached too but entered from the unwinder."""
    dispatches = {insns[i].address for i in range(1, len(insns))
                  if insns[i].mnemonic == jump and is_table_jump(insns[i - 1], insns[i])}
    if not dispatches:
        return flow_of
    return lambda insn: DISPATCH if insn.address in dispatches else flow_of(insn)


def run(
    insns: Sequence[Insn],
    entry: State,
    transfer: Transfer,
    flow_of: FlowOf,
    orphan_state: Callable[[int], State],
    observe: Observe,
    observed: Observed | Callable[[Insn], bool] | frozenset[str],
    max_rounds: int = 40,
) -> tuple[bool, list[Any]]:
    """Iterate states to a fixpoint over the function's blocks and return what observe(state,
    insn) says (when not None) at each instruction that `observed` selects (an Observed; a
    set of mnemonics; or a predicate asked of every instruction), with the states of the
    fixpoint, in address order. Blocks no edge reaches start from
    orphan_state(address of the block).

    Each block's observations are taken while it runs, and kept from its last run: at the
    fixpoint that run had the block's final entry state (a change requeues the block), so no
    second pass is needed. Blocks from which no observed instruction can be reached are not
    run at all, and a block whose successors all are such stops after its last observed
    instruction: their states flow to nothing that is observed.
    Returns (False, ...) when the iteration budget ran out before a fixpoint: the observed
    values may then be wrong and must not be trusted."""
    if not insns:
        return True, []
    n = len(insns)
    mnemonics = list(map(_MNEMONIC, insns))
    index_of = dict(zip(map(_ADDRESS, insns), range(n), strict=True))
    # Whether an instruction just falls through depends on its mnemonic alone (no backend's
    # flow_of returns FALL_THROUGH for a branch), so flow_of is asked once per mnemonic (of
    # one instruction that has it), then for each instruction of the other mnemonics.
    one_of_each = dict(zip(mnemonics, insns, strict=True))
    branching = {m for m, insn in one_of_each.items() if flow_of(insn) is not FALL_THROUGH}
    flows = {i: flow_of(insns[i])
             for i in compress(range(n), map(branching.__contains__, mnemonics))}
    leaders = {0}
    for i, flow in flows.items():
        for target in flow.targets:
            j = index_of.get(target)
            if j is not None:
                leaders.add(j)
        if flow.targets or not flow.falls_through:
            leaders.add(i + 1)
    starts = sorted(j for j in leaders if j < n)
    blocks = [(s, e) for s, e in zip(starts, [*starts[1:], n], strict=True)]
    block_at = {s: b for b, (s, _) in enumerate(blocks)}
    succs: list[list[int]] = []
    preds_count = [0] * len(blocks)
    dispatchers: list[int] = []
    for _start, e in blocks:
        last = e - 1
        flow = flows.get(last, FALL_THROUGH)
        out = [block_at[index_of[t]] for t in flow.targets if t in index_of]
        if flow.falls_through and e < n and insns[e].address == insns[last].next:
            out.append(block_at[e])
        succs.append(out)
        if flow.indirect:
            dispatchers.append(len(succs) - 1)
        for b in out:
            preds_count[b] += 1
    if dispatchers:
        # Blocks no edge reaches in a function with jump tables are their cases: reached from
        # the dispatching blocks, with their states.
        for b in range(1, len(blocks)):
            if preds_count[b] == 0:
                for d in dispatchers:
                    succs[d].append(b)
                    preds_count[b] += 1

    # The observed instructions, by index; then where each block's run may stop: after its
    # last observed instruction when none of its successors leads to one, at its end when
    # one does, and nowhere (not run) when neither.
    if isinstance(observed, Observed):
        maybe = {m for m in one_of_each if observed.mnemonics(m)}
        observed_at = list(compress(range(n), map(maybe.__contains__, mnemonics)))
        if observed.insn is not None:
            check = observed.insn
            observed_at = [i for i in observed_at if check(insns[i])]
    elif isinstance(observed, frozenset):
        observed_at = list(compress(range(n), map(observed.__contains__, mnemonics)))
    else:
        observed_at = [i for i, insn in enumerate(insns) if observed(insn)]
    first_observed = []  # per block: the position in observed_at of its first observed one
    last_observed = []
    for s, e in blocks:
        k = bisect_left(observed_at, s)
        first_observed.append(k)
        last = bisect_left(observed_at, e, k) - 1
        last_observed.append(observed_at[last] + 1 if last >= k else s)
    live = [last_observed[b] > blocks[b][0] for b in range(len(blocks))]
    preds: list[list[int]] = [[] for _ in blocks]
    for b, out in enumerate(succs):
        for nb in out:
            preds[nb].append(b)
    reach = [b for b in range(len(blocks)) if live[b]]  # backwards from the observed
    while reach:
        for pb in preds[reach.pop()]:
            if not live[pb]:
                live[pb] = True
                reach.append(pb)
    stop = []
    for b, (_s, e) in enumerate(blocks):
        for nb in succs[b]:
            if live[nb]:
                stop.append(e)
                break
        else:
            stop.append(last_observed[b])

    states: list[State | None] = [None] * len(blocks)
    states[0] = entry
    for b in range(1, len(blocks)):
        if preds_count[b] == 0:
            states[b] = orphan_state(insns[blocks[b][0]].address)
    seen: list[list[Any]] = [[] for _ in blocks]

    n_observed = len(observed_at)

    def run_block(b: int, state: State) -> None:
        notes = seen[b] = []
        i, end = blocks[b][0], stop[b]
        k = first_observed[b]
        while k < n_observed and observed_at[k] < end:
            at = observed_at[k]
            for insn in insns[i:at]:
                transfer(state, insn)
            insn = insns[at]
            note = observe(state, insn)
            if note is not None:
                notes.append(note)
            transfer(state, insn)
            i, k = at + 1, k + 1
        for insn in insns[i:end]:
            transfer(state, insn)

    # Blocks in address order approximate reverse postorder for compiled code: taking the
    # lowest pending block first lets each block see its predecessors' states before it runs,
    # so most blocks run once and loops a few times.
    work = [b for b in range(len(blocks)) if states[b] is not None and live[b]]
    queued = [False] * len(blocks)
    for b in work:
        queued[b] = True
    visits = [0] * len(blocks)
    rounds = 0
    budget = max_rounds * len(blocks)
    while work and rounds < budget:
        rounds += 1
        b = heapq.heappop(work)
        queued[b] = False
        state = states[b].copy()
        run_block(b, state)
        kept = False  # whether a successor keeps `state` itself (no state is changed once kept)
        for nb in succs[b]:
            if not live[nb]:
                continue
            old = states[nb]
            back = nb <= b  # blocks are in address order: an edge backwards closes a loop
            if back:
                visits[nb] += 1
            if old is None:
                new = state.copy() if kept else state
                kept = True
            else:
                new = old.meet(state, back and visits[nb] > WIDEN_AFTER)
                if new is old:
                    continue
            if old is None or not new.same_as(old):
                states[nb] = new
                if not queued[nb]:
                    queued[nb] = True
                    heapq.heappush(work, nb)
    converged = not work
    # Out of budget: blocks still pending observe their latest states; blocks reached only
    # from blocks the budget never got to start from the orphan state.
    for b in work:
        run_block(b, states[b].copy())
    for b in range(len(blocks)):
        if states[b] is None and last_observed[b] > blocks[b][0]:
            run_block(b, orphan_state(insns[blocks[b][0]].address))
    return converged, [note for notes in seen for note in notes]
