"""Maintenance windows: whether automatic repairs may start now, when the window
closes, and when the next one opens. Pure.

A window opens on each of its days at `start` and closes at `end` the same day,
or the next day when `end` is at or before `start` (22:00-04:00). Wall-clock
times are read in the window's IANA zone with the offset in force before a
change: a `start` the clock skips when daylight saving time begins (02:30 in
Europe/Berlin on the last Sunday of March) falls one hour later (03:30 CEST), as
much time after midnight as asked; a time the clock repeats when it ends is its
first occurrence. Instants are compared in UTC."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pitstop.models.repairpolicy import MaintenanceWindow

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LOOKBACK = 2
"""Days before today whose windows may still be open (one over midnight)."""
_LOOKAHEAD = 8
"""Days after today searched for the next opening (a window opens at least weekly)."""


@dataclass(frozen=True)
class WindowState:
    open: bool
    closes_at: datetime | None = None
    """While open: the end of the open stretch (overlapping windows joined)."""
    next_open: datetime | None = None
    """While closed: the next opening."""


def zone(name: str) -> ZoneInfo | None:
    """The IANA zone of that name, or None where the zone database has none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def invalid_zones(windows: Sequence[MaintenanceWindow]) -> list[str]:
    """The time zones of `windows` the zone database does not know."""
    return sorted({w.time_zone for w in windows if zone(w.time_zone) is None})


def _clock(hhmm: str) -> tuple[int, int]:
    hours, minutes = hhmm.split(":")
    return int(hours), int(minutes)


def _instant(day: date, hhmm: str, tz: ZoneInfo) -> datetime:
    hour, minute = _clock(hhmm)
    # fold=0: a skipped time takes the offset before the change, a repeated time
    # its first occurrence.
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=tz).astimezone(UTC)


def intervals(window: MaintenanceWindow, now: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The (open, close) instants, in UTC, of `window` from two days before `now`'s
    local date to eight days after it, in order."""
    tz = zone(window.time_zone)
    if tz is None:
        return
    today = now.astimezone(tz).date()
    days = {d.value for d in window.days}
    overnight = _clock(window.end) <= _clock(window.start)
    for offset in range(-_LOOKBACK, _LOOKAHEAD + 1):
        day = today + timedelta(days=offset)
        if _WEEKDAYS[day.weekday()] not in days:
            continue
        opens = _instant(day, window.start, tz)
        closes = _instant(day + timedelta(days=1) if overnight else day, window.end, tz)
        if closes > opens:  # 02:30-03:10 on the spring night is empty (01:30-01:10 UTC)
            yield opens, closes


def state(windows: Sequence[MaintenanceWindow], now: datetime) -> WindowState:
    """Where `now` stands against `windows` (none: always open). Windows whose zone
    is unknown never open (the policy reports them)."""
    if not windows:
        return WindowState(open=True)
    spans = sorted(s for w in windows for s in intervals(w, now))
    current = [s for s in spans if s[0] <= now < s[1]]
    if current:
        closes = max(c for _, c in current)
        for opens, end in spans:  # join windows that overlap or touch the open one
            if opens <= closes < end:
                closes = end
        return WindowState(open=True, closes_at=closes)
    upcoming = [o for o, _ in spans if o > now]
    return WindowState(open=False, next_open=min(upcoming) if upcoming else None)


def next_change(window_state: WindowState) -> datetime | None:
    """When the answer of `state` changes next (the policy wakes then)."""
    return window_state.closes_at if window_state.open else window_state.next_open
