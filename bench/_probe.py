"""Where a backend's analysis of one function spends its time: decoding or the rest.

The bench process wraps, by monkeypatching, each backend's `analyse` method (one call analyses
one function) and the module-level decode function it calls, then scans real files with the
ordinary scan_file. Per analysed function it records the time of analyse, the time spent
inside decode (the first decode entered; nested calls are part of it) and the hook's own
bookkeeping (subtracted), all as this thread's CPU time; and the bytes each decode covered, so
that capstone alone can decode the same bytes afterwards (disasm_lite with skipdata: no Python
object per instruction).

The hook points are a table (HOOKS). When the scanner's internals move (a name is gone, a
signature no longer has `code` and `address`, analyse no longer decodes through it), install
or check raises HookError naming what is missing: update the table, never guess.
"""

from __future__ import annotations

import importlib
import inspect
import time
from dataclasses import dataclass, field

from _sweep import MODES, count_instructions, decoder


class HookError(Exception):
    """The scanner's hook points are not where HOOKS says; the message names the one."""


@dataclass(frozen=True)
class Hook:
    module: str  # the backend's module
    backend: str  # the class whose `analyse(function)` analyses one function
    decode: str  # the module-level name analyse decodes through: decode(md, code, address, ...)
    machine: int  # IMAGE_FILE_MACHINE_*, for capstone's mode
    arch: str


HOOKS = (
    Hook("tagfind.scan.x64", "X64Backend", "decode", 0x8664, "x64"),
    Hook("tagfind.scan.x86", "X86Backend", "decode", 0x014C, "x86"),
    Hook("tagfind.scan.arm64", "Arm64Backend", "decode", 0xAA64, "arm64"),
)
ANALYSE = "analyse"
DECODE_PARAMS = ("code", "address")  # decode's parameters that say which bytes it decoded
# CPU time of this thread, not wall time: on a shared machine a function preempted half-way
# would otherwise charge another job's time to whichever part it was in.
_clock = time.thread_time


@dataclass
class FunctionRecord:
    arch: str
    seconds: float = 0.0  # analyse, wall
    decode_seconds: float = 0.0  # inside the backend's decode
    overhead: float = 0.0  # the hook's bookkeeping inside analyse
    spans: list[tuple[bytes, int]] = field(default_factory=list)  # (bytes decoded, address)

    @property
    def rest(self) -> float:
        return max(0.0, self.seconds - self.decode_seconds - self.overhead)


def _span(result: object) -> tuple[int, int]:
    """(bytes covered, first address) of decode's result, which must not be empty."""
    if not isinstance(result, (list, tuple)):
        raise HookError(f"decode returned {type(result).__name__}, not a list of instructions")
    first, last = result[0], result[-1]
    if hasattr(last, "address") and hasattr(last, "size"):
        return last.address + last.size - first.address, first.address
    if isinstance(last, tuple) and len(last) >= 2:
        return last[0] + last[1] - first[0], first[0]
    raise HookError("decode's instructions carry neither .address/.size nor (address, size, ...)")


class Probe:
    """`with Probe() as probe:` scans inside are measured into probe.records."""

    def __init__(self) -> None:
        self.records: list[FunctionRecord] = []
        self._current: FunctionRecord | None = None
        self._decoding = False
        self.error: HookError | None = None  # raised inside a scan, kept for check()
        self._undo: list[tuple[object, str, object, bool]] = []

    # --- installing ---------------------------------------------------------------------------
    def __enter__(self) -> Probe:
        try:
            for hook in HOOKS:
                self._install(hook)
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for owner, name, original, own in reversed(self._undo):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._undo.clear()

    def _install(self, hook: Hook) -> None:
        try:
            module = importlib.import_module(hook.module)
        except ImportError as exc:
            raise HookError(f"{hook.module} cannot be imported ({exc})") from None
        cls = getattr(module, hook.backend, None)
        if cls is None or not callable(getattr(cls, ANALYSE, None)):
            raise HookError(f"{hook.module}.{hook.backend}.{ANALYSE} is gone")
        decode = getattr(module, hook.decode, None)
        if not callable(decode):
            raise HookError(f"{hook.module}.{hook.decode} is gone (analyse decodes elsewhere)")
        params = list(inspect.signature(decode).parameters)
        missing = [p for p in DECODE_PARAMS if p not in params]
        if missing:
            raise HookError(f"{hook.module}.{hook.decode}{inspect.signature(decode)} has no "
                            f"parameter {', '.join(missing)}")
        positions = [params.index(p) for p in DECODE_PARAMS]
        analyse = getattr(cls, ANALYSE)
        self._patch(cls, ANALYSE, self._timed_analyse(analyse, hook.arch))
        self._patch(module, hook.decode, self._timed_decode(decode, positions))

    def _patch(self, owner: object, name: str, value: object) -> None:
        own = name in vars(owner)
        self._undo.append((owner, name, vars(owner).get(name), own))
        setattr(owner, name, value)

    # --- the wrappers -------------------------------------------------------------------------
    def _timed_analyse(self, analyse, arch: str):
        probe = self

        def timed(backend, *args, **kwargs):
            if probe._current is not None:  # analyse inside analyse: part of the outer one
                return analyse(backend, *args, **kwargs)
            record = probe._current = FunctionRecord(arch)
            start = _clock()
            try:
                return analyse(backend, *args, **kwargs)
            finally:
                record.seconds = _clock() - start
                probe._current = None
                probe.records.append(record)

        return timed

    def _timed_decode(self, decode, positions: list[int]):
        probe = self
        names = DECODE_PARAMS

        def timed(*args, **kwargs):
            record = probe._current
            if record is None or probe._decoding:
                return decode(*args, **kwargs)
            probe._decoding = True
            start = _clock()
            try:
                result = decode(*args, **kwargs)
            finally:
                done = _clock()
                probe._decoding = False
            record.decode_seconds += done - start
            code, address = (args[i] if i < len(args) else kwargs[n]
                             for i, n in zip(positions, names, strict=True))
            try:
                span, first = _span(result) if result else (0, address)
            except HookError as exc:  # scan_file turns exceptions into a file's error
                probe.error = probe.error or exc
                raise
            if span:
                offset = first - address
                record.spans.append((bytes(code[offset:offset + span]), first))
            record.overhead += _clock() - done
            return result

        return timed

    # --- after the scans ----------------------------------------------------------------------
    def check(self, functions_reported: int | None) -> None:
        """Raise HookError when the hooks saw no analysis the scanner did."""
        if self.error is not None:
            raise self.error
        # Backends also analyse a few functions of their own accord (run-time routine lookups),
        # so the hooks may see more analyses than the scanner reports, never fewer.
        if functions_reported is not None and functions_reported > len(self.records):
            raise HookError(f"the scanner reports {functions_reported} analysed functions, the "
                            f"hooks on {ANALYSE} saw {len(self.records)}: a backend analyses "
                            "through another method")
        for hook in HOOKS:
            ran = [r for r in self.records if r.arch == hook.arch]
            if ran and not any(r.spans for r in ran):
                raise HookError(f"{hook.backend}.{ANALYSE} ran {len(ran)} times and never "
                                f"called {hook.module}.{hook.decode}: decoding moved")


def capstone_seconds(records: list[FunctionRecord]) -> dict[int, float]:
    """Per record (by position), the time capstone alone takes to decode the same bytes."""
    decoders = {hook.arch: decoder(*MODES[hook.machine]) for hook in HOOKS}
    out: dict[int, float] = {}
    for i, record in enumerate(records):
        md = decoders[record.arch]
        start = _clock()
        for code, address in record.spans:
            count_instructions(md, code, address)
        out[i] = _clock() - start
    return out


@dataclass
class Measured:
    """One batch of files scanned under the probe: per analysed function (arch, analysis
    without decoding, backend decoding, capstone alone on the same bytes), in seconds."""

    functions: list[tuple[str, float, float, float]]
    scan_seconds: float  # the whole of scan_file for the batch
    analyse_seconds: float  # the part inside analyse


def measure_files(paths: list[str]) -> Measured:
    """Scan paths with scan_file under the probe (run in a worker process: the hooks live in
    that process only). Raises HookError when the hooks do not see the scanner's analyses."""
    from tagfind.scan import scan_file

    reported: int | None = 0
    start = _clock()
    with Probe() as probe:
        for path in paths:
            count = getattr(scan_file(path), "functions_analysed", None)
            reported = None if count is None or reported is None else reported + count
    scan_seconds = _clock() - start
    probe.check(reported)
    records = [r for r in probe.records if r.spans]
    alone = capstone_seconds(records)
    return Measured([(r.arch, r.rest, r.decode_seconds, alone[i]) for i, r in enumerate(records)],
                    scan_seconds, sum(r.seconds for r in records))
