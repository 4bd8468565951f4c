"""Maintenance windows (pool/windows.py): open or closed, when they close and
when the next opens; windows over midnight, daylight saving time, several
windows, unknown zones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from pitstop.models.repairpolicy import MaintenanceWindow
from pitstop.pool import windows


def w(start: str, end: str, days: str = "", tz: str = "UTC") -> MaintenanceWindow:
    spec: dict[str, object] = {"start": start, "end": end, "timeZone": tz}
    if days:
        spec["days"] = days.split(",")
    return MaintenanceWindow.model_validate(spec)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# 2026-01-05 is a Monday.


def test_no_windows_is_always_open() -> None:
    assert windows.state([], utc("2026-01-05T12:00")) == windows.WindowState(open=True)
    assert windows.next_change(windows.state([], utc("2026-01-05T12:00"))) is None


def test_a_window_on_its_days_only() -> None:
    mon = [w("09:00", "17:00", "Mon")]
    assert windows.state(mon, utc("2026-01-05T08:59")) == windows.WindowState(
        open=False, next_open=utc("2026-01-05T09:00")
    )
    inside = windows.state(mon, utc("2026-01-05T09:00"))  # start is inside
    assert inside == windows.WindowState(open=True, closes_at=utc("2026-01-05T17:00"))
    assert windows.next_change(inside) == utc("2026-01-05T17:00")
    after = windows.state(mon, utc("2026-01-05T17:00"))  # end is outside
    assert after == windows.WindowState(open=False, next_open=utc("2026-01-12T09:00"))
    assert not windows.state(mon, utc("2026-01-06T12:00")).open  # Tuesday


def test_a_window_over_midnight_belongs_to_the_day_it_opens() -> None:
    fri = [w("22:00", "04:00", "Fri")]
    # Friday 2026-01-09 22:00 to Saturday 04:00.
    assert windows.state(fri, utc("2026-01-09T23:30")).closes_at == utc("2026-01-10T04:00")
    assert windows.state(fri, utc("2026-01-10T03:59")).open  # Saturday, still Friday's window
    assert not windows.state(fri, utc("2026-01-10T04:00")).open
    # Saturday 22:00 opens nothing: the window opens on Fridays.
    sat = windows.state(fri, utc("2026-01-10T22:30"))
    assert sat == windows.WindowState(open=False, next_open=utc("2026-01-16T22:00"))
    # Friday early morning: Thursday opened nothing.
    assert not windows.state(fri, utc("2026-01-09T01:00")).open


def test_an_end_equal_to_start_is_refused() -> None:
    with pytest.raises(ValidationError):
        w("02:00", "02:00")
    with pytest.raises(ValidationError):
        w("24:00", "02:00")
    with pytest.raises(ValidationError):
        MaintenanceWindow.model_validate({"start": "01:00", "end": "02:00", "days": []})


def test_local_time_in_the_windows_zone() -> None:
    berlin = [w("02:00", "04:00", "Mon", "Europe/Berlin")]  # CET, UTC+1 in January
    assert windows.state(berlin, utc("2026-01-05T01:00")).closes_at == utc("2026-01-05T03:00")
    assert not windows.state(berlin, utc("2026-01-05T03:00")).open
    # Late Sunday in UTC is already Monday in New Zealand (UTC+13 in January).
    nz = [w("08:00", "09:00", "Mon", "Pacific/Auckland")]
    assert windows.state(nz, utc("2026-01-04T19:30")).open


def test_spring_forward_a_skipped_start_opens_as_long_after_midnight() -> None:
    """Berlin, Sunday 2026-03-29: 02:00 CET jumps to 03:00 CEST. A 02:30 start does
    not exist; read with the offset before the change it is 01:30 UTC, 03:30 CEST."""
    sun = [w("02:30", "05:00", "Sun", "Europe/Berlin")]
    before = windows.state(sun, utc("2026-03-29T01:00"))
    assert before == windows.WindowState(open=False, next_open=utc("2026-03-29T01:30"))
    assert windows.state(sun, utc("2026-03-29T02:59")).closes_at == utc("2026-03-29T03:00")
    # The window is an hour shorter that night (05:00 CEST is 03:00 UTC).
    assert not windows.state(sun, utc("2026-03-29T03:00")).open
    # A window inside the skipped hour opens an hour later (03:10-03:20 CEST).
    gap = [w("02:10", "02:20", "Sun", "Europe/Berlin")]
    assert windows.state(gap, utc("2026-03-29T00:00")).next_open == utc("2026-03-29T01:10")
    # One from a skipped time to just after the jump is empty that night: the next
    # opening is a week later (02:30 CEST, 00:30 UTC).
    empty = [w("02:30", "03:10", "Sun", "Europe/Berlin")]
    assert windows.state(empty, utc("2026-03-29T00:00")).next_open == utc("2026-04-05T00:30")


def test_fall_back_a_repeated_hour_counts_from_its_first_occurrence() -> None:
    """Berlin, Sunday 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:00-03:00 is
    lived twice. A 02:30-03:30 window opens at the first 02:30 (00:30 UTC) and
    closes at 03:30 CET (02:30 UTC): two hours long that night."""
    sun = [w("02:30", "03:30", "Sun", "Europe/Berlin")]
    assert windows.state(sun, utc("2026-10-25T00:00")).next_open == utc("2026-10-25T00:30")
    during = windows.state(sun, utc("2026-10-25T01:45"))  # the second 02:45
    assert during == windows.WindowState(open=True, closes_at=utc("2026-10-25T02:30"))
    # The week after, in CET: 02:30 is 01:30 UTC.
    assert windows.state(sun, utc("2026-10-25T03:00")).next_open == utc("2026-11-01T01:30")


def test_a_window_over_midnight_across_a_dst_change() -> None:
    """Saturday 22:00 to Sunday 04:00 in Berlin over the spring change: opens 21:00
    UTC, closes 02:00 UTC (five hours)."""
    sat = [w("22:00", "04:00", "Sat", "Europe/Berlin")]
    assert windows.state(sat, utc("2026-03-28T21:00")).closes_at == utc("2026-03-29T02:00")
    assert not windows.state(sat, utc("2026-03-29T02:00")).open


def test_overlapping_windows_join_and_the_earliest_next_opening_wins() -> None:
    both = [w("01:00", "03:00", "Mon"), w("02:00", "05:00", "Mon"), w("05:00", "06:00", "Mon")]
    assert windows.state(both, utc("2026-01-05T01:30")).closes_at == utc("2026-01-05T06:00")
    other = [w("09:00", "10:00", "Wed"), w("20:00", "21:00", "Tue")]
    assert windows.state(other, utc("2026-01-05T12:00")).next_open == utc("2026-01-06T20:00")


def test_every_day_by_default_and_unknown_zones_never_open() -> None:
    daily = [w("03:00", "04:00")]
    assert [d.value for d in daily[0].days] == ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    for day in range(7):
        now = utc("2026-01-05T03:30") + timedelta(days=day)
        assert windows.state(daily, now).open
    mars = [w("00:00", "23:59", tz="Mars/Olympus_Mons")]
    assert windows.invalid_zones(mars) == ["Mars/Olympus_Mons"]
    assert windows.state(mars, utc("2026-01-05T12:00")) == windows.WindowState(open=False)
    assert windows.invalid_zones(daily) == []
