"""tasks/run/deadline.py: parsing --deadline and the finish estimate after a calibration batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tasks.errors import InputError
from tasks.run.deadline import estimate, parse_deadline

NOW = datetime(2026, 11, 22, 20, 0, tzinfo=UTC)


def test_parse_deadline_needs_a_zone_and_the_future():
    moment = parse_deadline("2026-11-23T09:00+01:00", NOW)
    assert moment == datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    with pytest.raises(InputError, match="give the time zone"):
        parse_deadline("2026-11-23T09:00", NOW)
    with pytest.raises(InputError, match="already passed"):
        parse_deadline("2026-11-22T19:00Z", NOW)
    with pytest.raises(InputError, match="not an ISO 8601 time"):
        parse_deadline("tomorrow 9am", NOW)


def test_an_estimate_that_meets_the_deadline():
    deadline = NOW + timedelta(hours=1)
    guess = estimate(total=10_000, done=500, elapsed_s=50.0, workers=2, num_samples=5000, now=NOW,
                     deadline=deadline, margin_s=10)
    assert guess.rate == 10.0 and guess.needed_s == 950.0 and guess.available_s == 3590.0
    assert guess.meets and guess.finish == NOW + timedelta(seconds=960)
    assert guess.describe().endswith("meets the deadline")


def test_an_estimate_that_misses_says_what_would_meet_it():
    deadline = (NOW + timedelta(seconds=310)).astimezone(timezone(timedelta(hours=1)))
    guess = estimate(total=10_000, done=400, elapsed_s=40.0, workers=2, num_samples=5000, now=NOW,
                     deadline=deadline, margin_s=10)
    # 9,600 left at 10/s: 960 s needed, 300 s available
    assert not guess.meets
    assert guess.workers_needed == 7  # ceil(2 * 960 / 300)
    assert guess.samples_that_fit == 1562  # floor(5000 * 300 / 960)
    assert guess.decisions_that_fit == 3400  # 400 done + 10/s * 300 s
    line = guess.describe()
    assert "misses it" in line and "7 workers" in line and "num_samples <= 1562" in line and "3400 decisions" in line
    assert "+01:00" in line and "\n" not in line


def test_no_time_left_at_all():
    guess = estimate(total=100, done=10, elapsed_s=10.0, workers=1, num_samples=500, now=NOW,
                     deadline=NOW + timedelta(seconds=5), margin_s=10)
    assert not guess.meets and guess.workers_needed is None and guess.samples_that_fit == 0
    assert guess.decisions_that_fit == 10
    with pytest.raises(ValueError):
        estimate(total=100, done=0, elapsed_s=1.0, workers=1, num_samples=500, now=NOW, deadline=NOW)
