"""dataflow.run on a toy instruction set: observations carry the fixpoint's states, taken in
one pass (no replay), and blocks that lead to no observed instruction are never run."""

from __future__ import annotations

from tagfind.scan.dataflow import FALL_THROUGH, Flow, Insn, State, run


def _program(lines: list[str]) -> list[Insn]:
    out = []
    for i, line in enumerate(lines):
        mnem, _, ops = line.partition(" ")
        out.append(Insn(0x100 + 4 * i, 4, mnem, ops))
    return out


def _flow(insn: Insn) -> Flow:
    if insn.mnemonic == "jmp":
        return Flow((int(insn.op_str, 0),), False)
    if insn.mnemonic == "jcc":
        return Flow((int(insn.op_str, 0),), True)
    if insn.mnemonic == "ret":
        return Flow((), False)
    return FALL_THROUGH


class _Toy:
    def __init__(self) -> None:
        self.transferred: list[int] = []

    def transfer(self, state: State, insn: Insn) -> None:
        self.transferred.append(insn.address)
        if insn.mnemonic == "set":
            reg, value = insn.op_str.split(",")
            state.regs[reg] = int(value, 0)
        elif insn.mnemonic == "inc":
            value = state.regs.get(insn.op_str)
            if isinstance(value, int):
                state.regs[insn.op_str] = value + 1
            else:
                state.regs.pop(insn.op_str, None)


def _observe(state: State, insn: Insn):
    return insn.address, state.regs.get("r0")


def _is_call(insn: Insn) -> bool:
    return insn.mnemonic == "call"


def test_either_branch_value_reaches_the_call():
    insns = _program([
        "set r0,1",     # 0x100
        "jcc 0x10c",    # 0x104
        "set r0,2",     # 0x108
        "call",         # 0x10c
        "ret",          # 0x110
    ])
    toy = _Toy()
    converged, seen = run(insns, State(), toy.transfer, _flow, lambda _a: State(), _observe,
                          _is_call)
    assert converged
    assert seen == [(0x10C, frozenset({1, 2}))]


def test_a_loop_is_observed_with_its_fixpoint_state_once():
    insns = _program([
        "set r0,1",     # 0x100
        "call",         # 0x104  loop head: r0 is 1, then 2, then widened
        "inc r0",       # 0x108
        "jcc 0x104",    # 0x10c
        "ret",          # 0x110
    ])
    toy = _Toy()
    converged, seen = run(insns, State(), toy.transfer, _flow, lambda _a: State(), _observe,
                          _is_call)
    assert converged
    # One observation per observed instruction, with the state of the fixpoint: the loop
    # changes r0 every round, so it is unknown there (widened), never just its first value.
    assert seen == [(0x104, None)]


def test_blocks_after_the_last_call_are_not_run():
    insns = _program([
        "set r0,7",     # 0x100
        "call",         # 0x104
        "set r1,1",     # 0x108  after the last observed instruction: nothing to observe
        "jcc 0x114",    # 0x10c
        "set r1,2",     # 0x110
        "ret",          # 0x114
    ])
    toy = _Toy()
    converged, seen = run(insns, State(), toy.transfer, _flow, lambda _a: State(), _observe,
                          _is_call)
    assert converged and seen == [(0x104, 7)]
    assert max(toy.transferred) <= 0x104


def test_out_of_budget_is_reported():
    insns = _program([
        "set r0,1",     # 0x100
        "call",         # 0x104
        "inc r0",       # 0x108
        "jcc 0x104",    # 0x10c
        "ret",          # 0x110
    ])
    toy = _Toy()
    converged, seen = run(insns, State(), toy.transfer, _flow, lambda _a: State(), _observe,
                          _is_call, max_rounds=1)
    assert not converged
    assert [address for address, _ in seen] == [0x104]


def test_meet_at_a_fixpoint_is_the_state_itself_unless_freshness_changes() -> None:
    # run() skips a successor whose meet returns its own state: that must mean nothing changed,
    # the `fresh` flag included (a path from a non-fresh state ends "untouched slots are the
    # caller's arguments").
    regs, stack = {"rsp": ("sp", -8)}, {-8: (8, 5)}
    fresh = State(dict(regs), dict(stack), fresh=True)
    assert fresh.meet(State(dict(regs), dict(stack), fresh=True)) is fresh
    joined = fresh.meet(State(dict(regs), dict(stack), fresh=False))
    assert joined is not fresh and not joined.fresh and fresh.fresh
    assert joined.regs == regs and joined.stack == stack
    stale = State(dict(regs), dict(stack), fresh=False)
    assert stale.meet(State(dict(regs), dict(stack), fresh=True)) is stale
