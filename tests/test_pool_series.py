"""Series of snapshots (order, one machine and boot), machine identity from buffers laid out
as Windows fills them, periodic capture on a fake clock, typeperf CSV, and the snapshot fields
that carry boot time and OS build."""

from __future__ import annotations

import ctypes
import struct
from datetime import datetime, timedelta, timezone

import pytest
from poolgen import BOOT, POOLMON, START, generated_series, typeperf_csv, write_series

from tagfind.pool import PoolSourceError, load_snapshot, save_snapshot
from tagfind.pool.capture import capture_every, parse_duration, snapshot_file_name
from tagfind.pool.live import STATUS_INVALID_INFO_CLASS, STATUS_SUCCESS
from tagfind.pool.machine import (
    SYSTEM_TIMEOFDAY_INFORMATION,
    filetime_to_datetime,
    parse_timeofday,
    read_boot_time,
    windows_build,
    with_identity,
)
from tagfind.pool.perfmon import parse_typeperf
from tagfind.pool.series import SeriesError, SeriesPoint, build_series, load_series

HOUR = timedelta(hours=1)


def _filetime(when: datetime) -> int:
    return int((when - datetime(1601, 1, 1, tzinfo=timezone.utc)).total_seconds()) * 10**7


def pack_timeofday(boot: datetime, now: datetime) -> bytes:
    """SYSTEM_TIMEOFDAY_INFORMATION, 48 bytes: BootTime +0, CurrentTime +8 (LARGE_INTEGER,
    100 ns since 1601 UTC), TimeZoneBias +0x10, TimeZoneId +0x18, reserved, BootTimeBias
    +0x20, SleepTimeBias +0x28."""
    buf = bytearray(48)
    struct.pack_into("<q", buf, 0x00, _filetime(boot))
    struct.pack_into("<q", buf, 0x08, _filetime(now))
    struct.pack_into("<q", buf, 0x10, -60 * 60 * 10**7)
    struct.pack_into("<I", buf, 0x18, 1)
    return bytes(buf)


def standin(buffers: dict[int, bytes]):
    """NtQuerySystemInformation as ctypes calls it: copies the class's bytes into the buffer
    and sets the return length; unknown classes get STATUS_INVALID_INFO_CLASS."""
    def query(info_class, buffer, length, returned):
        data = buffers.get(info_class)
        if data is None:
            return STATUS_INVALID_INFO_CLASS
        ctypes.memmove(buffer, data, len(data))
        ctypes.cast(returned, ctypes.POINTER(ctypes.c_uint32)).contents.value = len(data)
        return STATUS_SUCCESS
    return query


def test_boot_time_from_timeofday_buffer():
    buffer = pack_timeofday(BOOT, START)
    assert parse_timeofday(buffer) == (BOOT, START)
    assert read_boot_time(standin({SYSTEM_TIMEOFDAY_INFORMATION: buffer})) == BOOT
    assert filetime_to_datetime(0) == datetime(1601, 1, 1, tzinfo=timezone.utc)


def test_boot_time_unavailable_is_none_not_an_error():
    assert read_boot_time(standin({})) is None
    with pytest.raises(PoolSourceError):
        parse_timeofday(b"\0" * 8)
    with pytest.raises(PoolSourceError):
        parse_timeofday(pack_timeofday(START, BOOT))  # "now" before boot


def test_windows_build_and_identity():
    class Version:
        major, minor, build = 10, 0, 26100

    assert windows_build(lambda: Version()) == "10.0.26100"
    snap = generated_series("docs-sorted-by-allocs.txt", 1, HOUR, {})[0]
    stamped = with_identity(snap, standin({3: pack_timeofday(BOOT, START)}), lambda: Version())
    assert (stamped.boot_time, stamped.os_build) == (BOOT, "10.0.26100")


def test_snapshot_keeps_boot_time_and_build(tmp_path):
    snap = generated_series("docs-sorted-by-allocs.txt", 1, HOUR, {})[0]
    save_snapshot(snap, tmp_path / "s.json")
    back = load_snapshot(tmp_path / "s.json")
    assert (back.boot_time, back.os_build, back.machine) == (BOOT, "10.0.22631", "LEAKY1")


def test_series_sorted_by_time_whatever_the_order_given(tmp_path):
    paths = write_series(tmp_path, generated_series("docs-sorted-by-allocs.txt", 4, HOUR, {}))
    series = load_series(list(reversed(paths)))
    assert series.timed
    assert [p.label for p in series.points] == [str(p) for p in paths]
    assert series.hours() == [0.0, 1.0, 2.0, 3.0]


def test_untimed_files_keep_the_order_given():
    files = [POOLMON / "docs-leak-drsd-after.txt", POOLMON / "docs-leak-drsd-before.txt"]
    series = load_series(files)
    assert not series.timed and series.hours() == [0.0, 1.0]
    assert [p.label for p in series.points] == [str(f) for f in files]
    assert any("cannot be detected" in w for w in series.warnings)


def test_appended_log_runs_are_points_in_file_order(tmp_path):
    text = (POOLMON / "docs-leak-drsd-before.txt").read_text()
    log = tmp_path / "poolsnap.log"
    log.write_text(text + "\n" + (POOLMON / "docs-leak-drsd-after.txt").read_text())
    series = load_series([log])
    assert [p.label for p in series.points] == [f"{log}#1", f"{log}#2"]


def test_mixed_timed_and_untimed_keeps_given_order_and_says_so(tmp_path):
    timed = write_series(tmp_path, generated_series("docs-sorted-by-allocs.txt", 1, HOUR, {}))
    series = load_series([POOLMON / "docs-sorted-by-allocs.txt", *timed])
    assert not series.timed
    assert any("carry no time" in w for w in series.warnings)


def test_two_boots_are_not_mixed_silently(tmp_path):
    first = generated_series("docs-sorted-by-allocs.txt", 2, HOUR, {})
    later = generated_series("docs-sorted-by-allocs.txt", 2, HOUR, {},
                             boot=BOOT + timedelta(hours=5))
    later = [s.__class__(**{**s.__dict__, "taken_at": s.taken_at + 6 * HOUR}) for s in later]
    points = [SeriesPoint(f"s{i}", s) for i, s in enumerate(first + later)]
    with pytest.raises(SeriesError, match="counters restart at boot.*--last-boot"):
        build_series(points)
    kept = build_series(points, boots="last")
    assert [p.label for p in kept.points] == ["s2", "s3"]
    assert any("dropped 2" in w for w in kept.warnings)


def test_other_machine_or_build_splits_too():
    snaps = generated_series("docs-sorted-by-allocs.txt", 2, HOUR, {})
    other = generated_series("docs-sorted-by-allocs.txt", 1, HOUR, {}, machine="OTHER")[0]
    other.taken_at = START + 3 * HOUR
    with pytest.raises(SeriesError, match="OTHER"):
        build_series([SeriesPoint(str(i), s) for i, s in enumerate([*snaps, other])])
    same_boot_jitter = generated_series("docs-sorted-by-allocs.txt", 1, HOUR, {},
                                        machine="leaky1", boot=BOOT + timedelta(seconds=3))[0]
    same_boot_jitter.taken_at = START + 5 * HOUR
    assert len(build_series([SeriesPoint(str(i), s)
                             for i, s in enumerate([*snaps, same_boot_jitter])]).points) == 3


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("30m", 1800),
                                           ("2h", 7200), ("1h30m", 5400), ("0.5h", 1800)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "30x", "0", "-5m"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_capture_every_keeps_the_schedule(tmp_path):
    """A fake clock: each read takes 7 s, the schedule is still 0, 60, 120 s."""
    snaps = iter(generated_series("docs-sorted-by-allocs.txt", 3, timedelta(minutes=1), {}))
    now = [0.0]
    slept: list[float] = []

    def read():
        now[0] += 7
        return next(snaps)

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    files = capture_every(read, tmp_path / "out", 60, 3, sleep=sleep, clock=lambda: now[0])
    assert slept == [53.0, 53.0]
    assert [f.name for f in files] == ["pool-20250301T080000Z.json", "pool-20250301T080100Z.json",
                                       "pool-20250301T080200Z.json"]
    series = load_series(files)
    assert series.timed and series.hours() == [0, 1 / 60, 2 / 60]


def test_capture_never_overwrites(tmp_path):
    snap = generated_series("docs-sorted-by-allocs.txt", 1, HOUR, {})[0]
    files = capture_every(lambda: snap, tmp_path, 0.001, 3, sleep=lambda s: None)
    assert [f.name for f in files] == ["pool-20250301T080000Z.json", "pool-20250301T080000Z-2.json",
                                       "pool-20250301T080000Z-3.json"]
    assert snapshot_file_name(snap.__class__(), 7) == "pool-0007.json"


def test_typeperf_csv():
    times = [START + i * timedelta(minutes=30) for i in range(3)]
    text = typeperf_csv([(times[0], 100_000_000, 50_000_000), (times[1], None, 50_100_000),
                         (times[2], 100_400_000, 50_200_000)])
    log = parse_typeperf(text)
    assert log.machine == "LEAKY1"
    assert [s.taken_at for s in log.samples] == times  # the bias makes them UTC again
    assert [s.paged for s in log.samples] == [100_000_000, None, 100_400_000]
    assert [s.nonpaged for s in log.samples] == [50_000_000, 50_100_000, 50_200_000]


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("a,b\n1,2\n", "not typeperf"),
    ('"(PDH-CSV 4.0) (UTC)(0)","\\\\H\\Processor(_Total)\\% Processor Time"\n', "no \\\\Memory"),
    ('"(PDH-CSV 4.0) (UTC)(0)","\\\\H\\Memory\\Pool Paged Bytes"\n"yesterday","1"\n',
     "not a typeperf time"),
])
def test_typeperf_bad_input_one_line(text, message):
    with pytest.raises(PoolSourceError, match=message) as info:
        parse_typeperf(text, "x.csv")
    assert "\n" not in str(info.value)
