"""Scanning files for the index, each within a time limit: in worker processes (`_Pool`, one
file at a time per process, a process past its deadline killed and replaced), or in this
process (`_InProcess`, SIGALRM). Both yield one `_Outcome` per (path, sha256) task: the scan
result reduced to plain data, which is all the refresh stores. Knows nothing of the database.

A worker is `python -c "from tagfind.index.workers import worker_main; worker_main()"`,
speaking length-prefixed pickles over its stdin and stdout (see worker_main).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

WORKER_START_TIMEOUT = 120.0  # a worker process must import the scanner within this
WORKER_START_FAILURES = 2  # after this many workers die at start, scan in this process


@dataclass
class _Outcome:
    """A scan result reduced to what the index stores (plain data: it crosses processes)."""

    sha256: str
    size: int | None
    arch: str | None
    error: str | None
    sites: list[dict] = field(default_factory=list)
    timed_out: bool = False
    unreadable: bool = False  # nothing was scanned: not stored, tried again next time
    filter_log2: int | None = None  # bytefilter of the content (None: search it directly)
    filter: bytes | None = None


def scan_for_index(path: str, expected_sha256: str) -> _Outcome:
    """Read `path` once, hash what was read and scan those same bytes."""
    from ..limits import MAX_FILE_SIZE
    from ..scan import scan_file

    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_SIZE:  # hash as the parent did, let the scanner refuse it
            return _outcome(expected_sha256, size, scan_file(path))
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        error = f"cannot read: {_strerror(exc)}"
        return _Outcome(expected_sha256, None, None, error, unreadable=True)
    from ..bytefilter import build

    sha = hashlib.sha256(data).hexdigest()
    outcome = _outcome(sha, len(data), scan_file(path, data))
    outcome.filter_log2, outcome.filter = build(data)
    return outcome


def _outcome(sha: str, size: int | None, result) -> _Outcome:
    sites = [
        {
            "rva": s.rva,
            "api": s.api,
            "tag": s.tag,
            "evidence": s.evidence,
            "protected": s.protected,
            "pool": s.pool,
            "size": s.size,
            "via": tuple(s.via),
            "function": s.function,
            "runtime": tuple(s.runtime),
        }
        for s in result.sites
    ]
    return _Outcome(sha, size, result.arch, result.error, sites)


def _timed_out(sha: str, seconds: float) -> _Outcome:
    return _Outcome(sha, None, None, f"timed out after {seconds:g} s", timed_out=True)


class _ScanTimeout(BaseException):
    """Raised by SIGALRM in an in-process scan; a BaseException so that scan_file's own
    `except Exception` does not swallow it."""


def import_scanner() -> None:
    """Import everything a scan may import (the scanner, every architecture's backend, numpy,
    capstone, pefile), so that no import runs under a time limit: an import cut short by the
    alarm leaves a half-initialised module behind (numpy without `nonzero`) for the rest of
    the process."""
    import importlib

    _one_blas_thread()
    for name in _SCANNER_MODULES:
        importlib.import_module(name, __package__)


def import_scanner_in_background() -> None:
    """Start importing the scanner in a thread, for a query that will scan in this process
    soon (a cold query's first candidates): the import runs while this thread waits on the
    file system (discovery, hashing), which releases the lock the import needs. An import
    that fails there fails again, reported, where the scan imports it."""

    def run() -> None:
        try:
            import_scanner()
        except BaseException:  # noqa: BLE001 (see the docstring)
            pass

    _one_blas_thread()  # here: os.environ is not to be changed while another thread reads it
    threading.Thread(target=run, name="tagfind-import-scanner", daemon=True).start()


# The scanner never multiplies matrices, but numpy's OpenBLAS starts a thread per core when
# it loads, and they spin for a while: about 50 ms of CPU in each worker, taken from the
# others (on 2 cores, a cold build of the x64/x86 half: 1.01-1.07 -> 0.97-1.01 s, user CPU
# 1.66-1.78 -> 1.59-1.68 s). Workers always get one; this process, unless the user set it.
_ONE_BLAS_THREAD = ("OPENBLAS_NUM_THREADS", "1")


def _one_blas_thread() -> None:
    """Ask for one OpenBLAS thread in this process, before numpy loads, unless the user set
    a number."""
    if "numpy" not in sys.modules:
        os.environ.setdefault(*_ONE_BLAS_THREAD)


_SCANNER_MODULES = ("..scan", "..scan.x64", "..scan.x86", "..scan.arm64", "..bytefilter",
                    "..limits", "numpy", "capstone", "pefile")


class _InProcess:
    """Scans one file after another in this process. The time limit holds only where SIGALRM
    exists and this is the main thread; elsewhere it is not enforced. The scanner is imported
    before the first alarm is armed, and an alarm that still lands inside an import is put
    off until the import is done (_raise_timeout)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def run(self, tasks: list[tuple[str, str]]) -> Iterator[tuple[tuple[str, str], _Outcome]]:
        if tasks:
            import_scanner()
        for path, sha in tasks:
            yield (path, sha), self._one(path, sha)

    def _one(self, path: str, sha: str) -> _Outcome:
        if not _can_alarm():
            return scan_for_index(path, sha)
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        try:
            signal.setitimer(signal.ITIMER_REAL, max(self.timeout, 1e-6))
            try:
                return scan_for_index(path, sha)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _ScanTimeout:  # (also when it fires just as the scan ends)
            return _timed_out(sha, self.timeout)
        finally:
            signal.signal(signal.SIGALRM, previous)


def _can_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _raise_timeout(signum, frame) -> None:
    if _in_import(frame):  # never cut an import short: try again a little later
        signal.setitimer(signal.ITIMER_REAL, IMPORT_RETRY_SECONDS)
        return
    raise _ScanTimeout()


IMPORT_RETRY_SECONDS = 0.01


def _in_import(frame) -> bool:
    """Whether the interrupted code runs inside the import system (a module being executed
    on import has importlib's frames below it)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def worker_main() -> None:
    """A scanning process (started by _Worker, see the module docstring): import the scanner,
    say ready, then scan one (path, sha256) task per frame on stdin and answer each with one
    frame on stdout, until stdin closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    inbox = sys.stdin.buffer
    outbox = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not break frames
    import_scanner()  # the slow imports, before any clock starts
    _serve(inbox, outbox)


def _serve(inbox, outbox) -> None:
    _send_frame(outbox, "ready")
    while (task := _read_frame(inbox)) is not None:
        _send_frame(outbox, scan_for_index(*task))


def _send_frame(stream, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<I", len(data)) + data)
    stream.flush()


def _read_frame(stream) -> object | None:
    """The next message, or None at end of stream."""
    head = stream.read(4)
    if len(head) < 4:
        return None
    (size,) = struct.unpack("<I", head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # only ever from our own worker or parent process


_EOF = object()


class _Worker:
    """One scanning process and the thread that reads its answers into the pool's queue.
    A plain subprocess rather than multiprocessing: spawn would re-run the user's __main__,
    and a process of our own can be killed without disturbing the others. Where it is safe
    (`fork`: _can_fork said so), the process is a fork of this one instead (_ForkedProcess):
    it starts with the scanner already imported, in about a millisecond rather than a third
    of a second.
    start() starts the reader thread: after every fork that wants this process alone."""

    def __init__(self, answers: queue.Queue, others: list[_Worker], fork: bool) -> None:
        if fork:
            self.process: subprocess.Popen | _ForkedProcess = _ForkedProcess(
                [fd for w in others for fd in w.pipe_fds()])
        else:
            self.process = subprocess.Popen(
                [sys.executable, "-c",
                 "from tagfind.index.workers import worker_main; worker_main()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_worker_env(),
            )
        self.started = time.monotonic()
        self.ready = False
        self.task: tuple[str, str] | None = None
        self.deadline = 0.0
        self.answers = answers
        self.reader: threading.Thread | None = None

    def start(self) -> None:
        self.reader = threading.Thread(target=self._read, args=(self.answers,), daemon=True)
        self.reader.start()

    def pipe_fds(self) -> list[int]:
        return [s.fileno() for s in (self.process.stdin, self.process.stdout) if not s.closed]

    def _read(self, answers: queue.Queue) -> None:
        try:
            while (message := _read_frame(self.process.stdout)) is not None:
                answers.put((self, message))
        except (OSError, ValueError, pickle.UnpicklingError, EOFError):
            pass
        answers.put((self, _EOF))

    def send(self, task: tuple[str, str]) -> None:
        self.task = task
        _send_frame(self.process.stdin, task)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _may_fork(wait: bool = True) -> bool:
    """The part of _can_fork known before the scanner is imported. wait: give a Python
    thread that has just ended a moment to leave the kernel's list."""
    if sys.platform != "linux":
        return False
    # A Python thread that has just ended (the hashing pool's) may be counted by the kernel
    # for a moment longer: wait for it briefly, never for a thread that still runs. A native
    # thread that lasts (OpenBLAS's, with OPENBLAS_NUM_THREADS > 1) looks the same from here,
    # so the pool waits once per run, not once per worker it starts.
    for attempt in range(50 if wait else 1):
        if attempt:
            time.sleep(0.001)
        try:
            if len(os.listdir("/proc/self/task")) == 1:
                return True
        except OSError:
            return False
        if threading.active_count() > 1:
            return False
    return False


def _can_fork(wait: bool = True) -> bool:
    """Whether a worker may be a fork of this process: on Linux, with the scanner imported
    (so the fork needs no import) and this process down to one OS thread (a fork copies only
    the calling thread: a lock another thread held would stay locked in the child forever).
    Never on macOS, whose system libraries do not survive a fork without exec, nor on Windows,
    which has no fork."""
    return all(name in sys.modules for name in _FORK_NEEDS) and _may_fork(wait)


_FORK_NEEDS = ("tagfind.scan.x64", "tagfind.scan.x86", "tagfind.scan.arm64", "capstone",
               "pefile", "numpy")


class _ForkedProcess:
    """A fork of this process serving scans over two pipes (as worker_main does over its
    stdin and stdout), with the part of Popen's interface _Worker uses. `close_fds` are other
    workers' pipe ends, closed in the child so that each worker's stdin has one writer."""

    def __init__(self, close_fds: list[int]) -> None:
        task_read, task_write = os.pipe()
        answer_read, answer_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                for fd in (task_write, answer_read, *close_fds):
                    os.close(fd)
                os.dup2(2, 1)  # stray prints must not reach the parent's stdout
                _serve(os.fdopen(task_read, "rb"), os.fdopen(answer_write, "wb"))
            except BaseException:  # noqa: BLE001 (the parent sees the end of the stream)
                code = 1
            finally:
                os._exit(code)  # no atexit, no finalizers: they belong to the parent
        os.close(task_read)
        os.close(answer_write)
        self.pid = pid
        self.stdin = os.fdopen(task_write, "wb")
        self.stdout = os.fdopen(answer_read, "rb")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _worker_env() -> dict[str, str]:
    """The environment for a worker: ours, with one OpenBLAS thread (_ONE_BLAS_THREAD), plus
    this tagfind's directory on PYTHONPATH when it is not on the default path (a source
    checkout run in place). Never site-packages: PYTHONPATH goes before the standard library
    and could shadow it."""
    env = dict(os.environ)
    env[_ONE_BLAS_THREAD[0]] = _ONE_BLAS_THREAD[1]  # (a worker only scans)
    here = str(Path(__file__).resolve().parents[2])
    on_path = {os.path.normcase(os.path.abspath(p)) for p in sys.path if p}
    if os.path.normcase(here) not in on_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    return env


class _Pool:
    """Worker processes, each scanning one file at a time. A worker past its deadline is
    killed and replaced (the file is recorded as timed out); a worker that dies takes only its
    own file down with it. If workers cannot start at all, the rest is scanned in-process."""

    def __init__(self, jobs: int, timeout: float) -> None:
        self.jobs = jobs
        self.timeout = timeout
        self.workers: list[_Worker] = []
        self.answers: queue.Queue = queue.Queue()
        self.start_failures = 0
        self.may_fork = False  # run()'s one waiting look; each new worker looks again, briefly

    def run(self, tasks: list[tuple[str, str]]) -> Iterator[tuple[tuple[str, str], _Outcome]]:
        todo = list(reversed(tasks))  # pop() from the end keeps the given order
        self.may_fork = _may_fork()
        if self.may_fork:
            try:
                import_scanner()  # once here, instead of once in each worker process
            except Exception:  # noqa: BLE001 (not imported: workers are new interpreters,
                pass  # which fail to start as before and leave the scan to this process)
        try:
            while todo or self._busy():
                if self.start_failures >= WORKER_START_FAILURES:
                    yield from _InProcess(self.timeout).run(list(reversed(todo)))
                    todo = []
                    continue
                self._staff(min(self.jobs, len(todo) + self._busy()))
                self._assign(todo)
                yield from self._collect()
        finally:
            for worker in self.workers:
                worker.kill()
            self.workers = []

    def _busy(self) -> int:
        return sum(1 for w in self.workers if w.task)

    def _staff(self, wanted: int) -> None:
        new: list[_Worker] = []
        while len(self.workers) < wanted:
            try:
                worker = _Worker(self.answers, self.workers,
                                 self.may_fork and _can_fork(wait=False))
            except OSError:
                self.start_failures = WORKER_START_FAILURES
                break
            self.workers.append(worker)
            new.append(worker)
        for worker in new:  # after the forks: a reader thread would stop the next fork
            worker.start()

    def _assign(self, todo: list[tuple[str, str]]) -> None:
        for worker in self.workers:
            if worker.ready and worker.task is None and todo:
                task = todo.pop()
                try:
                    worker.send(task)
                except OSError:  # it died while idle: its reader reports that
                    todo.append(task)
                    worker.task = None
                    continue
                worker.deadline = time.monotonic() + self.timeout

    def _collect(self) -> Iterator[tuple[tuple[str, str], _Outcome]]:
        try:
            worker, message = self.answers.get(timeout=self._wait_time())
        except queue.Empty:
            pass
        else:
            if worker in self.workers:  # else: a worker we already retired
                yield from self._receive(worker, message)
        yield from self._expire()

    def _receive(self, worker: _Worker, message: object):
        if message is _EOF:
            task, code = worker.task, worker.process.poll()
            self._replace(worker)
            if task is None:
                self.start_failures += 0 if worker.ready else 1
                return
            yield task, _Outcome(task[1], None, None, f"scanner process died (exit code {code})")
        elif message == "ready":
            worker.ready = True
        elif worker.task is not None:
            task, worker.task = worker.task, None
            yield task, message

    def _expire(self) -> Iterator[tuple[tuple[str, str], _Outcome]]:
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.task and now > worker.deadline:
                task = worker.task
                self._replace(worker)
                yield task, _timed_out(task[1], self.timeout)
            elif not worker.ready and now - worker.started > WORKER_START_TIMEOUT:
                self._replace(worker)
                self.start_failures += 1

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.workers.remove(worker)

    def _wait_time(self) -> float:
        deadlines = [w.deadline for w in self.workers if w.task]
        if not deadlines:
            return 1.0
        return max(0.0, min(deadlines) - time.monotonic()) + 0.01


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)
