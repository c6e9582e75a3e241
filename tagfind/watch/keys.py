"""Single keys from the terminal, with a timeout, as names the watch model understands
("a", "B", " ", "up", "pgdn", "enter", "esc", "backspace").

POSIX terminals: cbreak mode (no echo, no line buffering; Ctrl-C still raises
KeyboardInterrupt), restored on exit whatever happens; arrows and page keys arrive as escape
sequences. Windows consoles (conhost and Windows Terminal alike): msvcrt.getwch(), which
gives a prefix character ("\\x00" or "\\xe0") followed by a scan code for arrows and page
keys. Both decoders are plain functions over what the OS hands over, so they are tested on any
OS.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

# Escape sequences xterm-compatible terminals (and tmux) send, longest first where one is a
# prefix of another.
ESCAPES: dict[str, str] = {
    "\x1b[A": "up", "\x1bOA": "up", "\x1b[B": "down", "\x1bOB": "down",
    "\x1b[C": "right", "\x1bOC": "right", "\x1b[D": "left", "\x1bOD": "left",
    "\x1b[5~": "pgup", "\x1b[6~": "pgdn",
    "\x1b[H": "home", "\x1bOH": "home", "\x1b[1~": "home", "\x1b[7~": "home",
    "\x1b[F": "end", "\x1bOF": "end", "\x1b[4~": "end", "\x1b[8~": "end",
}
# Scan codes after msvcrt.getwch()'s "\x00"/"\xe0" prefix.
WINDOWS_SCAN_CODES: dict[str, str] = {
    "H": "up", "P": "down", "K": "left", "M": "right",
    "I": "pgup", "Q": "pgdn", "G": "home", "O": "end",
}
_PLAIN: dict[str, str] = {"\r": "enter", "\n": "enter", "\x1b": "esc", "\x7f": "backspace",
                          "\x08": "backspace", "\t": "tab"}


class KeyReader(Protocol):
    def read(self, timeout: float) -> str | None: ...


def decode_posix(data: str) -> list[str]:
    """Key names in `data`, the characters one read from a POSIX terminal returned."""
    keys: list[str] = []
    index = 0
    while index < len(data):
        if data[index] == "\x1b":
            match = next((s for s in ESCAPES if data.startswith(s, index)), None)
            if match is not None:
                keys.append(ESCAPES[match])
                index += len(match)
                continue
            if data.startswith("\x1b[", index):  # an unknown CSI sequence: skip it whole
                end = index + 2
                while end < len(data) and not ("@" <= data[end] <= "~"):
                    end += 1
                index = end + 1
                continue
        char = data[index]
        keys.append(_PLAIN.get(char, char))
        index += 1
    return keys


def decode_windows(chars: Iterator[str]) -> list[str]:
    """Key names from the characters msvcrt.getwch() returned, in order."""
    keys: list[str] = []
    for char in chars:
        if char in ("\x00", "\xe0"):
            code = next(chars, "")
            keys.append(WINDOWS_SCAN_CODES.get(code, f"scan-{ord(code) if code else 0}"))
        elif char == "\x03":
            raise KeyboardInterrupt
        else:
            keys.append(_PLAIN.get(char, char))
    return keys


class PosixKeys:
    """Keys from a POSIX terminal in cbreak mode (use `posix_keys()` to get one)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending: list[str] = []

    def read(self, timeout: float) -> str | None:
        import select

        if not self.pending:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
            if ready:
                data = os.read(self.fd, 256).decode("utf-8", "replace")
                self.pending = decode_posix(data)
        return self.pending.pop(0) if self.pending else None


@contextmanager
def posix_keys(fd: int | None = None) -> Iterator[PosixKeys]:
    import termios
    import tty

    fd = sys.stdin.fileno() if fd is None else fd
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield PosixKeys(fd)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class WindowsKeys:
    """Keys from a Windows console through msvcrt (or stand-ins with the same behaviour)."""

    def __init__(self, kbhit: Callable[[], bool], getwch: Callable[[], str],
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.kbhit, self.getwch, self.sleep = kbhit, getwch, sleep
        self.pending: list[str] = []

    def read(self, timeout: float) -> str | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self.pending:
            if self.kbhit():
                self.pending = decode_windows(self._available())
                break
            if time.monotonic() >= deadline:
                return None
            self.sleep(0.02)
        return self.pending.pop(0) if self.pending else None

    def _available(self) -> Iterator[str]:
        yield self.getwch()
        while self.kbhit():
            yield self.getwch()


@contextmanager
def terminal_keys() -> Iterator[KeyReader]:
    """The key reader for this OS's terminal, its mode restored when the block ends."""
    if sys.platform == "win32":
        import msvcrt

        yield WindowsKeys(msvcrt.kbhit, msvcrt.getwch)  # type: ignore[attr-defined]
        return
    with posix_keys() as keys:
        yield keys
