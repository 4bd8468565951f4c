"""The Alertmanager receiver's bearer token and rate limit, over HTTP on loopback
(no cluster): a token file rotated as the kubelet rotates a mounted Secret is
honoured at the next request, without a restart; a client past its rate gets 429
with Retry-After; the token buckets themselves, on a clock of the test's own.

Found in review (issue 19): the token was cached for 30 s from the API, and
nothing limited how often one client could call."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pitstop.cli import main as cli
from pitstop.cluster.indexes import Waiters
from pitstop.pool import alerts, daemon

PAYLOAD = json.dumps({"version": "4", "alerts": []}).encode()


def mount(directory: Path, token: str, generation: int) -> None:
    """Writes `token` as the kubelet writes a Secret volume: the key is a symlink
    into ..data, itself a symlink swapped atomically to a new timestamped dir."""
    data = directory / f"..2026_01_01_00_00_0{generation}"
    data.mkdir()
    (data / "token").write_text(token + "\n")
    link = directory / "..data_tmp"
    link.symlink_to(data.name)
    os.replace(link, directory / "..data")
    if not (directory / "token").is_symlink():
        (directory / "token").symlink_to("..data/token")


Call = Callable[[str | None], Awaitable[tuple[int, dict[str, str], Any]]]


def serving(receiver: alerts.Receiver, test: Callable[[Call], Awaitable[None]]) -> None:
    async def main() -> None:
        runner = web.AppRunner(alerts.app_of(receiver))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:

                async def call(token: str | None) -> tuple[int, dict[str, str], Any]:
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    url = f"http://127.0.0.1:{port}/alerts"
                    async with session.post(url, data=PAYLOAD, headers=headers) as r:
                        return r.status, dict(r.headers), await r.json()

                await test(call)
        finally:
            await runner.cleanup()

    asyncio.run(main())


def inbox() -> daemon.AlertInbox:
    """A run's inbox of its own (empty alerts here: nothing lands in it)."""
    return daemon.AlertInbox(Waiters())


def test_a_rotated_token_file_is_honoured_at_once(tmp_path: Path) -> None:
    mounted = tmp_path / "pitstop-alerts"
    mounted.mkdir()
    receiver = alerts.Receiver(None, inbox(), "unused", "unused", str(mounted / "token"))  # type: ignore[arg-type]

    async def test(call: Call) -> None:
        # Not mounted yet (an optional Secret volume before the Secret exists).
        assert (await call("first"))[0] == 401
        mount(mounted, "first", 1)
        assert (await call("first"))[0] == 200
        assert (await call("second"))[0] == 401
        mount(mounted, "second", 2)  # rotated: the old token is refused at once
        status, _, body = await call("first")
        assert status == 401 and "token" in body["error"]
        assert (await call("second"))[0] == 200
        (mounted / "..data").unlink()  # Secret gone: every request refused
        assert (await call("second"))[0] == 401

    serving(receiver, test)


def test_a_client_past_its_rate_gets_429_with_retry_after(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    receiver = alerts.Receiver(None, inbox(), "", "", str(tmp_path / "token"), rate=0.25, burst=3)  # type: ignore[arg-type]

    async def test(call: Call) -> None:
        # Refused requests count too: the limit comes before the token check.
        assert [(await call(t))[0] for t in ("t", "wrong", "t")] == [200, 401, 200]
        status, headers, body = await call("t")
        assert status == 429, (status, body)
        assert headers["Retry-After"] == "4"  # a token every 4 s
        assert "too many requests" in body["error"]

    serving(receiver, test)


def test_buckets_refill_at_their_rate_per_client() -> None:
    buckets = alerts.Buckets(rate=2.0, burst=3)
    assert [buckets.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", 100.0) == pytest.approx(0.5)
    assert buckets.take("b", 100.0) == 0.0  # each client has its own
    assert buckets.take("a", 100.25) == pytest.approx(0.25)
    assert buckets.take("a", 100.5) == 0.0
    assert buckets.take("a", 100.5) == pytest.approx(0.5)
    assert [buckets.take("a", 200.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # full again, not more
    assert buckets.take("a", 200.0) > 0


def test_buckets_forget_quiet_clients() -> None:
    buckets = alerts.Buckets(rate=1.0, burst=2, max_clients=10)
    for i in range(10):
        buckets.take(f"10.0.0.{i}", 0.0)
    assert len(buckets) == 10
    buckets.take("10.0.1.1", 0.5)  # the others are not full yet: kept
    assert len(buckets) == 11
    buckets.take("10.0.1.2", 10.0)  # now they are, and are forgotten
    assert len(buckets) <= 2


def test_rate_flags() -> None:
    args = cli.build_parser().parse_args(["run"])
    assert (args.alerts_rate, args.alerts_burst, args.alerts_token_file) == (20.0, 200, None)
    args = cli.build_parser().parse_args(
        ["run", "--alerts-rate", "0", "--alerts-burst", "5", "--alerts-token-file", "/t"]
    )
    assert (args.alerts_rate, args.alerts_burst, args.alerts_token_file) == (0.0, 5, "/t")


@pytest.mark.parametrize(("flag", "value"), [("--alerts-rate", "-1"), ("--alerts-burst", "0")])
def test_bad_rate_flags_are_usage_errors(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", flag, value]) == cli.EXIT_USAGE
    assert flag in capsys.readouterr().err
