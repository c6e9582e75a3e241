"""The finder observes a direct call only when its target can give a site (finder.DirectCalls):
pool-API thunks and exports, and the wrappers known so far. Leaving the others out changes no
value at the calls that are observed, on every architecture: an analysis that passes over
direct calls gives the same events as one that observes every call, less the events of the
direct calls it passed over, and it names their targets."""

from __future__ import annotations

import pytest
from conftest import skip_or_fail
from fixtures import build as fixture_build

from tagfind.pe import PEImage
from tagfind.scan import _backend_for
from tagfind.scan.dataflow import Observed
from tagfind.scan.finder import DirectCalls, SiteFinder
from tagfind.scan.intel import decode, observed_insns

CASES = [(arch, name, variant) for arch in ("x64", "x86", "arm64")
         for name in ("main", "modern") for variant in ("O0", "O2")
         if variant in fixture_build.ARCHES[arch].variants]


@pytest.fixture
def backend_of(test_cache):
    def get(arch: str, name: str, variant: str):
        if not fixture_build.zig_available():
            skip_or_fail("the ziglang package is not installed (pip install ziglang==0.17.1)")
        path = fixture_build.build_driver(name, variant, test_cache, arch=arch)
        return _backend_for(PEImage(str(path)))

    return get


@pytest.mark.parametrize(("arch", "name", "variant"), CASES,
                         ids=[f"{a}-{n}-{v}" for a, n, v in CASES])
def test_passing_over_direct_calls_changes_no_observed_value(backend_of, arch, name, variant):
    backend = backend_of(arch, name, variant)
    finder = SiteFinder(backend)
    finder.run()
    functions = sorted(finder.events)
    assert finder.wrappers, "the fixture has wrappers: their callers are analysed again"
    passed_over_any = False
    for function in functions:
        every = backend.analyse(function)
        calls = DirectCalls(set())
        some = backend.analyse(function, calls)
        assert set(some) <= set(every)
        left_out = set(every) - set(some)
        # Only events of direct calls to local code are left out, and their targets are named.
        assert all(isinstance(e.target, int) for e in left_out)
        assert {e.target for e in left_out} <= calls.passed_over
        passed_over_any |= bool(left_out)
        wanted = DirectCalls({e.target for e in every if isinstance(e.target, int)})
        assert backend.analyse(function, wanted) == every
    assert passed_over_any


@pytest.mark.parametrize(("arch", "name", "variant"), CASES,
                         ids=[f"{a}-{n}-{v}" for a, n, v in CASES])
def test_the_finder_observes_the_calls_of_every_wrapper(backend_of, arch, name, variant):
    """After the run, each analysed function's events are those of an analysis that observes
    the direct calls to every wrapper and local pool API found (and the candidates): a
    function was analysed again when a target it had passed over became a wrapper."""
    backend = backend_of(arch, name, variant)
    finder = CountingFinder(backend)
    finder.run()
    wanted = finder.wanted
    assert wanted >= set(finder.wrappers) | set(finder.local_apis)
    for function, events in finder.events.items():
        calls = DirectCalls(wanted)
        assert events == backend.analyse(function, calls), hex(function)
        assert not calls.passed_over & wanted
    # Each of these fixtures has a wrapper that references no pool API itself (it calls
    # another wrapper), with a caller analysed before it is known as one.
    assert max(finder.analyses.values()) > 1


class CountingFinder(SiteFinder):
    """A SiteFinder that counts the analyses of each function."""

    def __init__(self, backend) -> None:
        super().__init__(backend)
        self.analyses: dict[int, int] = {}

    def _analyse(self, function: int) -> None:
        self.analyses[function] = self.analyses.get(function, 0) + 1
        super()._analyse(function)


@pytest.mark.parametrize("arch", ["x64", "x86"])
def test_calls_through_the_iat_slot_of_an_ignored_import_are_not_observed(backend_of, arch):
    """main.c calls DbgPrint (an import no site comes from) through its IAT slot: the
    semantics know it from the operand alone, and the filtered analysis leaves it out; a call
    through a pool API's slot stays observed."""
    backend = backend_of(arch, "main", "O2")
    sem = backend.semantics
    image = backend.image
    slot_of = {name: slot for slot, name in image.imports.items()}
    assert slot_of["DbgPrint"] in sem.quiet_slots
    assert slot_of["ExAllocatePoolWithTag"] not in sem.quiet_slots
    finder = SiteFinder(backend)
    finder.run()
    quiet = pool = 0
    for function in finder.events:
        end = backend.regions[function][0]
        insns = backend_decode(backend, function, end)
        observed = observed_insns(sem, DirectCalls(set()), [(function, end)])
        assert isinstance(observed, Observed)
        for insn in insns:
            if insn.mnemonic != "call" or "ptr" not in insn.op_str:
                continue
            if sem.calls_quiet_import(insn):
                quiet += 1
                assert not observed.insn(insn)
            elif sem.call_target(sem.unknown_state(), insn) == ("imp", "ExAllocatePoolWithTag"):
                pool += 1
                assert observed.insn(insn)
    assert quiet and pool


def backend_decode(backend, function: int, end: int):
    return decode(backend.md, backend.image.read(function, end - function), function)
