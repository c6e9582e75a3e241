"""A series of pool snapshots over time, from many files: the input of `trend` and `watch
--replay`.

Owns the order (by time when every snapshot has one, otherwise the order the files and their
appended runs were given in) and the check that a series does not cross a reboot or mix
machines: counters restart at boot, so mixing boots would show a "leak" or a "drop" that is
not there. A change is detected from the machine name, boot time or OS build a snapshot
carries; sources without them (poolmon text) cannot be checked, and the series says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from .files import load_pool_runs
from .model import PoolSnapshot, PoolSourceError

# Boot time as Windows reports it moves a little when the clock is set (BootTimeBias), so two
# readings of one boot may differ by seconds; two boots are minutes apart at the very least.
BOOT_TOLERANCE = timedelta(minutes=2)

BOOTS_ERROR, BOOTS_LAST = "error", "last"


class SeriesError(PoolSourceError):
    """The snapshots do not form one series (one machine, one boot). One line for the user."""


@dataclass(frozen=True)
class SeriesPoint:
    """One snapshot of a series and where it came from: `label` is the file name, with `#N`
    (1-based) for the N-th run of a file that holds several."""

    label: str
    snapshot: PoolSnapshot


@dataclass
class PoolSeries:
    """Snapshots in the order they were taken. `timed` is True when every one has a time (and
    `hours` then gives each one's offset from the first); otherwise positions stand in for time.
    `warnings` are one-line notes for the user (order kept as given, boots unchecked...)."""

    points: list[SeriesPoint]
    timed: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def snapshots(self) -> list[PoolSnapshot]:
        return [point.snapshot for point in self.points]

    def hours(self) -> list[float]:
        """Each point's offset from the first in hours, or its index when the series is not
        timed."""
        if not self.timed:
            return [float(i) for i in range(len(self.points))]
        start = _when(self.points[0].snapshot)
        return [(_when(p.snapshot) - start).total_seconds() / 3600.0 for p in self.points]


def load_series(paths: Sequence[str | Path], boots: str = BOOTS_ERROR) -> PoolSeries:
    """Every snapshot in `paths` (snapshots, poolmon displays and /n logs, !poolused text),
    ordered and checked by `build_series`."""
    points = []
    for path in paths:
        runs = load_pool_runs(path)
        for number, run in enumerate(runs, 1):
            label = str(path) if len(runs) == 1 else f"{path}#{number}"
            points.append(SeriesPoint(label, run))
    return build_series(points, boots)


def build_series(points: Iterable[SeriesPoint], boots: str = BOOTS_ERROR) -> PoolSeries:
    """Order `points` by time (stable, so equal times keep the given order) when all have one,
    and check they come from one machine and one boot. With `boots="last"` a series crossing
    boots keeps the points of the newest boot instead of failing."""
    points = list(points)
    if not points:
        raise SeriesError("no pool snapshots given")
    warnings: list[str] = []
    timed = all(p.snapshot.taken_at is not None for p in points) and _comparable(points)
    if timed:
        points.sort(key=lambda p: _when(p.snapshot))
    elif any(p.snapshot.taken_at is not None for p in points):
        untimed = sum(p.snapshot.taken_at is None for p in points)
        warnings.append(f"{untimed} of {len(points)} snapshots carry no time (or times that "
                        "cannot be compared): kept in the order given, growth is per snapshot")
    segments = split_boots(points)
    if len(segments) > 1:
        if boots != BOOTS_LAST:
            first, second = segments[0][-1], segments[1][0]
            raise SeriesError(
                f"{second.label} is from {describe_boot(second.snapshot)}, {first.label} from "
                f"{describe_boot(first.snapshot)}: counters restart at boot; give one boot's "
                "snapshots, or --last-boot to keep the newest boot only"
            )
        dropped = sum(len(s) for s in segments[:-1])
        warnings.append(f"kept the newest boot's {len(segments[-1])} snapshots, dropped "
                        f"{dropped} from {len(segments) - 1} earlier boot(s)")
        points = segments[-1]
    if len(points) > 1 and not any(_identity_known(p.snapshot) for p in points):
        warnings.append("these sources name no machine or boot: a reboot between them cannot "
                        "be detected")
    return PoolSeries(points, timed, warnings)


def split_boots(points: Sequence[SeriesPoint]) -> list[list[SeriesPoint]]:
    """`points` cut where the machine, OS build or boot time changes. A point that does not say
    (None) belongs to the segment it is in."""
    segments: list[list[SeriesPoint]] = []
    current: list[SeriesPoint] = []
    identity: dict[str, object] = {}
    for point in points:
        if current and _differs(identity, point.snapshot):
            segments.append(current)
            current, identity = [], {}
        current.append(point)
        _learn(identity, point.snapshot)
    if current:
        segments.append(current)
    return segments


def describe_boot(snapshot: PoolSnapshot) -> str:
    parts = [snapshot.machine or "an unnamed machine"]
    if snapshot.boot_time is not None:
        parts.append(f"booted {snapshot.boot_time.isoformat(timespec='seconds')}")
    if snapshot.os_build:
        parts.append(f"build {snapshot.os_build}")
    return " ".join(parts)


def _learn(identity: dict[str, object], snap: PoolSnapshot) -> None:
    for key, value in (("machine", _machine(snap)), ("os_build", snap.os_build),
                       ("boot_time", snap.boot_time)):
        if value is not None:
            identity.setdefault(key, value)


def _differs(identity: dict[str, object], snap: PoolSnapshot) -> bool:
    machine, build = identity.get("machine"), identity.get("os_build")
    if machine is not None and _machine(snap) is not None and machine != _machine(snap):
        return True
    if build is not None and snap.os_build is not None and build != snap.os_build:
        return True
    boot = identity.get("boot_time")
    if isinstance(boot, datetime) and snap.boot_time is not None:
        if (boot.tzinfo is None) != (snap.boot_time.tzinfo is None):
            return False  # cannot compare; do not invent a reboot
        return abs(snap.boot_time - boot) > BOOT_TOLERANCE
    return False


def _machine(snap: PoolSnapshot) -> str | None:
    return snap.machine.upper() if snap.machine else None  # NetBIOS names are case-blind


def _identity_known(snap: PoolSnapshot) -> bool:
    return snap.machine is not None or snap.boot_time is not None


def _comparable(points: Sequence[SeriesPoint]) -> bool:
    aware = {p.snapshot.taken_at.tzinfo is not None for p in points if p.snapshot.taken_at}
    return len(aware) <= 1


def _when(snap: PoolSnapshot) -> datetime:
    assert snap.taken_at is not None
    return snap.taken_at
