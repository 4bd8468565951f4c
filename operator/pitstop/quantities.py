"""Pure parsers for the quantities in pitstop specs: Go-style durations ("5m",
"1h30m", "0s") and Kubernetes int-or-percent values (3, "3", "40%").

The regular expressions here are also the CRD schema patterns, so the API server
and the operator accept exactly the same strings."""

import re
from typing import Final

DURATION_PATTERN: Final = r"^([0-9]+(ms|s|m|h))+$"
"""A subset of Go's time.ParseDuration: integer amounts of ms, s, m and h, in any order."""

INT_OR_PERCENT_PATTERN: Final = r"^([0-9]+|(100|[1-9]?[0-9])%)$"
"""The string form of an int-or-percent: a non-negative count ("3") or "0%".."100%"."""

_DURATION_PART: Final = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Seconds in a duration such as "5m", "1h30m", "250ms" or "0s".

    Raises ValueError for anything DURATION_PATTERN rejects ("5 minutes", "", "-1s")."""
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"invalid duration {value!r}: expected e.g. 30s, 5m, 1h30m")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))


def check_int_or_percent(value: int | str) -> int | str:
    """`value` if it is a valid int-or-percent, else ValueError. Booleans are rejected."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"invalid int-or-percent {value!r}: expected e.g. 3 or 40%")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid int-or-percent {value!r}: must not be negative")
        return value
    if not re.fullmatch(INT_OR_PERCENT_PATTERN, value):
        raise ValueError(f"invalid int-or-percent {value!r}: expected e.g. 3 or 40% (0%..100%)")
    return value


def parse_int_or_percent(value: int | str, total: int, round_up: bool) -> int:
    """Resolve an int-or-percent against `total`: a count is returned as is, a percentage
    is that share of `total`, rounded up (`minAvailable`) or down (`maxUnhealthy`).

    >>> parse_int_or_percent("40%", 10, round_up=False), parse_int_or_percent("80%", 3, True)
    (4, 3)
    """
    check_int_or_percent(value)
    if total < 0:
        raise ValueError(f"total must not be negative, got {total}")
    if isinstance(value, int):
        return value
    if not value.endswith("%"):
        return int(value)
    # Integer arithmetic: no float rounding surprises ("10%" of 30 is exactly 3).
    numerator = int(value[:-1]) * total
    return -(-numerator // 100) if round_up else numerator // 100


__all__ = [
    "DURATION_PATTERN",
    "INT_OR_PERCENT_PATTERN",
    "check_int_or_percent",
    "parse_duration",
    "parse_int_or_percent",
]
