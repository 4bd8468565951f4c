"""Posts a policy's notifications (pool/notices.py says what and whether), one at a
time and in order, off the policy's pass: a slow or failing receiver never holds up
a repair. Each is tried three times; a notification that is not delivered (or not
allowed) is a Warning Event NotificationFailed on the policy, naming the Secret,
never the URL (which holds the chat service's credential)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any

import aiohttp
import kopf

from pitstop import constants, logs
from pitstop.cluster.kube import ApiError, Kube, namespace
from pitstop.models.repairpolicy import Notifications
from pitstop.pool import notices

C = constants
ATTEMPTS = 3
BACKOFF = 1.0
"""Seconds before the second attempt; doubled before the third."""
QUEUE = 256
"""Notifications waiting at most; past it the oldest are dropped (and told)."""


class Notifier:
    def __init__(self, policy: str, body: kopf.Body, kube: Kube):
        self.policy, self.body, self.kube = policy, body, kube
        self.queue: asyncio.Queue[tuple[Notifications, notices.Notice]] = asyncio.Queue(QUEUE)
        self.task: asyncio.Task[None] | None = None

    def send(self, spec: Notifications, notice: notices.Notice) -> None:
        if notice.event not in spec.events:
            return
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=f"notify-{self.policy}")
        if self.queue.full():
            dropped = self.queue.get_nowait()[1]
            self.queue.task_done()
            self._failed(dropped, "too many notifications waiting; this one was dropped")
        self.queue.put_nowait((spec, notice))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                spec, notice = await self.queue.get()
                try:
                    why = await self._post(session, spec, notice)
                except (OSError, TimeoutError) as e:  # the API server, reading the Secret
                    why = f"Secret not read ({type(e).__name__})"
                if why is not None:
                    self._failed(notice, why)
                else:
                    logs.logger.info(
                        f"RepairPolicy {self.policy}: notified {notice.event.value} of"
                        f" {notice.repair.name} (Secret {spec.webhook.secret_ref.name})"
                    )
                self.queue.task_done()  # queue.join() waits for every notice sent

    async def _post(
        self, session: aiohttp.ClientSession, spec: Notifications, notice: notices.Notice
    ) -> str | None:
        """None once delivered; else why not (never with the URL in it)."""
        ref = spec.webhook.secret_ref
        name = f"{namespace()}/{ref.name}"
        try:
            secret = await self._secret(ref.name)
        except ApiError as e:
            return f"Secret {name} not read: {e.status}"
        raw = ((secret or {}).get("data") or {}).get(ref.key)
        try:
            url = base64.b64decode(raw).decode().strip() if raw else None
        except ValueError:
            url = None
        why = notices.refusal(secret, name, url)
        if why is not None or url is None:
            return why
        payload = notices.body(spec.template, notice, self.policy)
        timeout = aiohttp.ClientTimeout(total=spec.webhook.timeout_seconds)
        delay = BACKOFF
        for attempt in range(1, ATTEMPTS + 1):
            try:
                async with session.post(url, json=payload, timeout=timeout) as answer:
                    if answer.status < 300:
                        return None
                    why = f"the receiver answered {answer.status}"
                    if answer.status < 500 and answer.status != 429:
                        return why  # it will not change its mind
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                # The exception's text may name the URL: only its kind is told.
                why = f"not delivered ({type(e).__name__})"
            if attempt < ATTEMPTS:
                await asyncio.sleep(delay)
                delay *= 2
        return f"{why}, after {ATTEMPTS} attempts (URL from Secret {name})"

    async def _secret(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self.kube.request(
                "GET", f"/api/v1/namespaces/{namespace()}/secrets/{name}"
            )
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return found

    def _failed(self, notice: notices.Notice, why: str) -> None:
        message = f"{notice.event.value} of {notice.repair.name}: {why}"
        kopf.event(self.body, type="Warning", reason=C.REASON_NOTIFICATION_FAILED, message=message)
        logs.event("RepairPolicy", self.policy, "Warning", C.REASON_NOTIFICATION_FAILED, message)
