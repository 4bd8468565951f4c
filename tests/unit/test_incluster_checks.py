"""What the in-cluster tier counts as a permission error in an operator's log: a
refusal or a crash, not a time whose milliseconds read 403 (that failed a run)."""

from __future__ import annotations

import pytest

from tests.incluster.checks import permission_errors

CLEAN = (
    "[2026-12-07 00:42:23,403] pitstop [INFO    ] NodeRepair x: RepairSucceeded: done\n"
    '[2026-12-07 00:42:25,131] aiohttp.access [INFO    ] 10.90.4.1 "GET /metrics HTTP/1.1"'
    " 200 14033\n"
)


def test_a_clean_log_has_none() -> None:
    assert permission_errors(CLEAN) == []


@pytest.mark.parametrize(
    "line",
    [
        "kubernetes.client.exceptions.ApiException: (403)",
        "Reason: Forbidden",
        'HTTP response body: {... "code":403}',
        "Traceback (most recent call last):",
        "kopf: Not enough permissions to watch for resources",
    ],
)
def test_a_refusal_or_crash_is_found(line: str) -> None:
    assert permission_errors(CLEAN + line + "\n") == [line]
