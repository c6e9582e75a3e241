"""Which machine and which boot live counters belong to: boot time from
NtQuerySystemInformation(SystemTimeOfDayInformation), OS build from the running Windows.

Layout (SYSTEM_TIMEOFDAY_INFORMATION, the same on x86, x64 and ARM64: LARGE_INTEGERs first):
BootTime at +0 and CurrentTime at +8, both LARGE_INTEGER in 100 ns units since 1601-01-01
UTC, then TimeZoneBias at +0x10 and the time zone id at +0x18 (as in phnt's ntexapi.h and
cosmopolitan's libc/nt/struct/systemtimeofdayinformation.h). Only the first 16 bytes are read.

The query function is the one live.py takes (ntdll's signature), so this is tested on any OS
with buffers laid out as Windows fills them.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from .live import NtStatusError, QueryFunction, ntdll_query, query_system_information
from .model import PoolSnapshot, PoolSourceError

SYSTEM_TIMEOFDAY_INFORMATION = 3
_FILETIME_EPOCH = datetime(1601, 1, 1, tzinfo=timezone.utc)


def filetime_to_datetime(value: int) -> datetime:
    """A Windows time (100 ns units since 1601-01-01 UTC) as an aware UTC datetime."""
    return _FILETIME_EPOCH + timedelta(microseconds=value // 10)


def parse_timeofday(buffer: bytes) -> tuple[datetime, datetime]:
    """(boot time, current time) from a SYSTEM_TIMEOFDAY_INFORMATION buffer."""
    if len(buffer) < 16:
        raise PoolSourceError(f"time-of-day buffer of {len(buffer)} bytes is too short")
    boot, current = struct.unpack_from("<qq", buffer, 0)
    if boot <= 0 or current < boot:
        raise PoolSourceError("time-of-day buffer holds no plausible boot time")
    return filetime_to_datetime(boot), filetime_to_datetime(current)


def read_boot_time(query: QueryFunction | None = None) -> datetime | None:
    """When this Windows booted, or None when it will not say (the caller goes on without)."""
    try:
        buffer = query_system_information(SYSTEM_TIMEOFDAY_INFORMATION, query or ntdll_query(),
                                          initial_size=48)
        return parse_timeofday(buffer)[0]
    except (NtStatusError, PoolSourceError):
        return None


def windows_build(version: Callable[[], object] | None = None) -> str | None:
    """"major.minor.build" of the running Windows (sys.getwindowsversion), None elsewhere."""
    getter = version or getattr(sys, "getwindowsversion", None)
    if getter is None:
        return None
    info = getter()
    return f"{info.major}.{info.minor}.{info.build}"  # type: ignore[attr-defined]


def with_identity(snapshot: PoolSnapshot, query: QueryFunction | None = None,
                  version: Callable[[], object] | None = None) -> PoolSnapshot:
    """`snapshot` with the boot time and OS build of the machine it was just read on."""
    return replace(snapshot, boot_time=read_boot_time(query), os_build=windows_build(version))
