"""Business-hours arithmetic for SLA deadlines (pure, no I/O).

SLA norms in the agency catalog are in *business hours*: Monday to Friday, 09:00-17:00
Europe/Amsterdam, excluding Dutch public holidays (``holidays.country_holidays("NL")``).
Working windows are built in local time and converted with :mod:`zoneinfo`, so DST
changes (which happen at night) never shift a window: 09:00 stays 09:00 local.

For demos, :class:`ScaledCalendar` compresses SLA time: with a time scale of 3600 one
business hour passes in one wall-clock second, nights and weekends included, so a demo
shows warnings and breaches within minutes (``LOKET_HANDOFF_TIME_SCALE``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo

import holidays

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
DAY_START = time(9, 0)
DAY_END = time(17, 0)
SECONDS_PER_DAY = 8 * 3600
#: Upper bound on days scanned, so a bad input cannot loop forever (~40 years).
MAX_DAYS = 15_000


class SlaCalendar(Protocol):
    """Computes SLA deadlines; the business calendar or a compressed demo calendar."""

    def add_hours(self, start: datetime, hours: float) -> datetime:
        """The moment ``hours`` SLA hours after ``start``."""
        ...

    def seconds_between(self, start: datetime, end: datetime) -> float:
        """SLA seconds elapsed from ``start`` to ``end`` (0 when end <= start)."""
        ...

    def point_at(self, start: datetime, end: datetime, fraction: float) -> datetime:
        """The moment ``fraction`` of the SLA time between ``start`` and ``end`` has passed."""
        ...


@lru_cache(maxsize=64)
def _holidays_for(year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays("NL", years=year).keys())


def is_holiday(day: date) -> bool:
    """True on a Dutch public holiday."""
    return day in _holidays_for(day.year)


@lru_cache(maxsize=4096)
def is_business_day(day: date) -> bool:
    """Monday to Friday and not a Dutch public holiday."""
    return day.weekday() < 5 and not is_holiday(day)


@lru_cache(maxsize=4096)
def _window(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, DAY_START, tzinfo=AMSTERDAM)
    end = datetime.combine(day, DAY_END, tzinfo=AMSTERDAM)
    return start, end


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("business-hours arithmetic needs timezone-aware datetimes")
    return moment


class BusinessCalendar:
    """Mon-Fri 09:00-17:00 Europe/Amsterdam without Dutch public holidays."""

    def add_hours(self, start: datetime, hours: float) -> datetime:
        """``start`` plus ``hours`` business hours (returned in UTC).

        Starting outside business hours, the clock starts at the next opening. A deadline
        that falls exactly on closing time stays there (it does not roll to the next day).
        """
        if hours < 0:
            raise ValueError("hours must not be negative")
        remaining = hours * 3600.0
        local = _aware(start).astimezone(AMSTERDAM)
        day = local.date()
        for _ in range(MAX_DAYS):
            if is_business_day(day):
                open_at, close_at = _window(day)
                begin = max(local, open_at)
                if begin < close_at:
                    available = (close_at - begin).total_seconds()
                    if remaining <= available:
                        return (begin + timedelta(seconds=remaining)).astimezone(UTC)
                    remaining -= available
            day += timedelta(days=1)
            local = datetime.combine(day, time(0, 0), tzinfo=AMSTERDAM)
        raise ValueError("SLA deadline out of range")

    def seconds_between(self, start: datetime, end: datetime) -> float:
        """Business seconds in ``[start, end)``."""
        a = _aware(start).astimezone(AMSTERDAM)
        b = _aware(end).astimezone(AMSTERDAM)
        if b <= a:
            return 0.0
        total = 0.0
        day = a.date()
        last = b.date()
        if (last - day).days > MAX_DAYS:
            raise ValueError("range too long")
        while day <= last:
            if is_business_day(day):
                open_at, close_at = _window(day)
                lo = max(a, open_at)
                hi = min(b, close_at)
                if hi > lo:
                    total += (hi - lo).total_seconds()
            day += timedelta(days=1)
        return total

    def point_at(self, start: datetime, end: datetime, fraction: float) -> datetime:
        seconds = self.seconds_between(start, end) * fraction
        return self.add_hours(start, seconds / 3600.0)


class ScaledCalendar:
    """Demo calendar: SLA hours run ``scale`` times faster, on the wall clock (no nights)."""

    def __init__(self, scale: float) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self.scale = scale

    def add_hours(self, start: datetime, hours: float) -> datetime:
        if hours < 0:
            raise ValueError("hours must not be negative")
        return _aware(start).astimezone(UTC) + timedelta(seconds=hours * 3600.0 / self.scale)

    def seconds_between(self, start: datetime, end: datetime) -> float:
        return max(0.0, (_aware(end) - _aware(start)).total_seconds() * self.scale)

    def point_at(self, start: datetime, end: datetime, fraction: float) -> datetime:
        return _aware(start).astimezone(UTC) + (_aware(end) - _aware(start)) * fraction


def calendar_for(time_scale: float) -> SlaCalendar:
    """The business calendar at scale 1, else a compressed demo calendar."""
    return BusinessCalendar() if time_scale == 1 else ScaledCalendar(time_scale)
