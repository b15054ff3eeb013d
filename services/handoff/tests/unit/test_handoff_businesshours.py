"""Business-hours arithmetic: weekends, evenings, holidays, DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loket_handoff.businesshours import (
    AMSTERDAM,
    BusinessCalendar,
    ScaledCalendar,
    calendar_for,
    is_business_day,
)

CAL = BusinessCalendar()


def ams(*args: int) -> datetime:
    return datetime(*args, tzinfo=AMSTERDAM)  # type: ignore[misc]


def test_within_one_day() -> None:
    assert CAL.add_hours(ams(2025, 3, 4, 10, 0), 4) == ams(2025, 3, 4, 14, 0)


def test_deadline_on_closing_time_stays_on_that_day() -> None:
    assert CAL.add_hours(ams(2025, 3, 4, 9, 0), 8) == ams(2025, 3, 4, 17, 0)


def test_evening_start_begins_next_morning() -> None:
    assert CAL.add_hours(ams(2025, 3, 4, 20, 30), 2) == ams(2025, 3, 5, 11, 0)


def test_early_morning_start_begins_at_nine() -> None:
    assert CAL.add_hours(ams(2025, 3, 4, 6, 0), 1) == ams(2025, 3, 4, 10, 0)


def test_spills_over_evening() -> None:
    assert CAL.add_hours(ams(2025, 3, 4, 15, 0), 4) == ams(2025, 3, 5, 11, 0)


def test_friday_afternoon_to_monday() -> None:
    # Friday 2025-03-07 16:00 + 3h -> 1h Friday, 2h Monday 2025-03-10
    assert CAL.add_hours(ams(2025, 3, 7, 16, 0), 3) == ams(2025, 3, 10, 11, 0)


def test_weekend_start() -> None:
    assert CAL.add_hours(ams(2025, 3, 8, 12, 0), 16) == ams(2025, 3, 11, 17, 0)


def test_holidays_are_skipped() -> None:
    # Thu 2025-12-24 16:00 + 2h: 1h on the 24th; 25th/26th Christmas; weekend; Mon 29th 10:00
    assert CAL.add_hours(ams(2025, 12, 24, 16, 0), 2) == ams(2025, 12, 29, 10, 0)
    assert not is_business_day(ams(2025, 4, 26, 12).date())  # King's Day (Saturday anyway)
    assert not is_business_day(ams(2026, 4, 27, 12).date())  # King's Day 2026 (Monday)
    assert not is_business_day(ams(2025, 5, 29, 12).date())  # Ascension Day
    # Easter Monday 2025-04-21: Thu 17th 16:00 + 3h -> Good Friday 18th is a holiday too
    assert CAL.add_hours(ams(2025, 4, 17, 16, 0), 3) == ams(2025, 4, 22, 11, 0)


def test_dst_spring_forward() -> None:
    # DST starts Sunday 2025-03-30: Friday 28th 16:00 +2h -> Monday 31st 10:00 local (CEST)
    due = CAL.add_hours(ams(2025, 3, 28, 16, 0), 2)
    assert due == ams(2025, 3, 31, 10, 0)
    assert due.astimezone(UTC) == datetime(2025, 3, 31, 8, 0, tzinfo=UTC)


def test_dst_fall_back() -> None:
    # DST ends Sunday 2025-10-26: Friday 24th 16:00 +2h -> Monday 27th 10:00 local (CET)
    due = CAL.add_hours(ams(2025, 10, 24, 16, 0), 2)
    assert due.astimezone(UTC) == datetime(2025, 10, 27, 9, 0, tzinfo=UTC)


def test_seconds_between_matches_add_hours() -> None:
    start = ams(2025, 12, 23, 13, 17)
    for hours in (0.5, 3, 8, 16, 40, 80):
        end = CAL.add_hours(start, hours)
        assert CAL.seconds_between(start, end) == pytest.approx(hours * 3600)


def test_seconds_between_empty_and_night() -> None:
    assert CAL.seconds_between(ams(2025, 3, 4, 12), ams(2025, 3, 4, 11)) == 0
    assert CAL.seconds_between(ams(2025, 3, 4, 18), ams(2025, 3, 5, 8)) == 0


def test_point_at_75_percent() -> None:
    start = ams(2025, 3, 7, 13, 0)  # Friday
    due = CAL.add_hours(start, 16)  # Tuesday 13:00
    assert due == ams(2025, 3, 11, 13, 0)
    assert CAL.point_at(start, due, 0.75) == ams(2025, 3, 10, 17, 0)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        CAL.add_hours(datetime(2025, 3, 4, 10), 1)


def test_scaled_calendar_runs_on_the_wall_clock() -> None:
    cal = calendar_for(3600)
    assert isinstance(cal, ScaledCalendar)
    start = datetime(2025, 3, 8, 23, 0, tzinfo=UTC)  # Saturday night: no business hours
    assert cal.add_hours(start, 16) == start + timedelta(seconds=16)
    assert cal.point_at(start, start + timedelta(seconds=16), 0.75) == start + timedelta(seconds=12)
    assert isinstance(calendar_for(1), BusinessCalendar)
