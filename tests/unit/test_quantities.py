"""Durations and int-or-percent values (no cluster)."""

from __future__ import annotations

import pytest

from pitstop.quantities import check_int_or_percent, parse_duration, parse_int_or_percent


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("1h1m1s1ms", 3661.001),
        ("90m", 5400.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "-1s", "1.5h", "5M", "1d", "m", "5m "])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "total", "round_up", "expected"),
    [
        ("40%", 10, False, 4),
        ("40%", 4, False, 1),  # 1.6 rounds down
        ("80%", 3, True, 3),  # 2.4 rounds up
        ("80%", 10, True, 8),
        ("10%", 30, True, 3),  # exact: no float rounding up to 4
        ("10%", 30, False, 3),
        ("0%", 7, True, 0),
        ("100%", 7, False, 7),
        ("50%", 0, True, 0),
        (3, 10, False, 3),
        ("3", 10, True, 3),
        (0, 5, True, 0),
        (12, 5, True, 12),  # counts are not capped at the pool size
    ],
)
def test_parse_int_or_percent(value: int | str, total: int, round_up: bool, expected: int) -> None:
    assert parse_int_or_percent(value, total, round_up) == expected


@pytest.mark.parametrize("value", ["140%", "abc", "-1", -1, "4.5%", "", "%", " 40%", True])
def test_int_or_percent_rejects(value: int | str) -> None:
    with pytest.raises(ValueError, match="invalid int-or-percent"):
        check_int_or_percent(value)
    with pytest.raises(ValueError, match="invalid int-or-percent"):
        parse_int_or_percent(value, 10, round_up=True)


def test_parse_int_or_percent_rejects_negative_total() -> None:
    with pytest.raises(ValueError, match="total"):
        parse_int_or_percent("50%", -1, round_up=False)
