"""What a policy's notifications say and whether they may be sent. Pure: the
policy daemon (pool/daemon.py) finds the transitions, pool/notifier.py reads the
Secret and posts.

Trust (docs/security.md): the URL is a Secret's value, and chat webhooks carry
their credential in it, so it is handled like a repair webhook's token: only a
Secret the platform admin labelled pitstop.dev/notification-secret=true is read,
its URL must start with one of the prefixes of its annotation
pitstop.dev/notification-url-prefixes when set, plain http:// only where a prefix
says so, and the URL never appears in status, Events or logs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pitstop import constants
from pitstop.models import ACTIVE_PHASES, Phase
from pitstop.models.repairpolicy import TEMPLATE_FIELDS, NotificationEvent

C = constants

_PLACEHOLDER = re.compile(r"\{(" + "|".join(TEMPLATE_FIELDS) + r")\}")


@dataclass(frozen=True)
class Seen:
    """A repair of the pool as the policy last saw it."""

    name: str
    node: str
    phase: str | None
    reason: str | None = None
    """spec.reason"""
    message: str | None = None
    """status.message"""
    policy: str | None = None
    """The policy that made it (label pitstop.dev/policy); None for a manual repair."""


@dataclass(frozen=True)
class Notice:
    event: NotificationEvent
    repair: Seen


def transitions(before: Mapping[str, str | None], now: Iterable[Seen]) -> list[Notice]:
    """What to tell about the repairs `now` shows, given the phases seen `before`
    (a repair not in `before` is new: its phase before was none). A repair that went
    from Pending to Succeeded between two looks is told Succeeded only; one that
    failed before it started (refused while Pending) is told Failed only."""
    notices = []
    for seen in now:
        old = before.get(seen.name)
        if seen.phase == old:
            continue
        if seen.phase in ACTIVE_PHASES and old in (None, Phase.PENDING):
            notices.append(Notice(NotificationEvent.STARTED, seen))
        elif seen.phase == Phase.SUCCEEDED:
            notices.append(Notice(NotificationEvent.SUCCEEDED, seen))
        elif seen.phase == Phase.FAILED:
            notices.append(Notice(NotificationEvent.FAILED, seen))
    return notices


def fields(notice: Notice, policy: str) -> dict[str, str]:
    """The template's placeholders for `notice` (each a string; none is ever None)."""
    r = notice.repair
    return {
        "event": notice.event.value.lower(),
        "repair": r.name,
        "node": r.node,
        "policy": policy,
        "reason": r.reason or "",
        "phase": r.phase or "",
        "message": r.message or "",
    }


def render(template: str, values: Mapping[str, str]) -> str:
    """`template` with each {field} of TEMPLATE_FIELDS replaced; nothing else is
    interpreted (no format specs, no attribute access)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), template)


def body(template: str, notice: Notice, policy: str) -> dict[str, Any]:
    """The JSON posted: Slack-compatible `text`, and the fields for other receivers."""
    values = fields(notice, policy)
    return {"text": render(template, values), "pitstop": values}


def _marked(secret: Mapping[str, Any]) -> bool:
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(C.LABEL_NOTIFICATION_SECRET) == "true")


def prefixes(secret: Mapping[str, Any]) -> list[str]:
    raw = ((secret.get("metadata") or {}).get("annotations") or {}).get(
        C.ANNOTATION_NOTIFICATION_URLS
    ) or ""
    return [p.strip() for p in raw.split(",") if p.strip()]


def refusal(secret: Mapping[str, Any] | None, name: str, url: str | None) -> str | None:
    """Why the URL held by `secret` (named `name`, namespace/name) may not be posted
    to, or None. The message never contains the URL."""
    if secret is None:
        return f"Secret {name} not found"
    if not _marked(secret):
        return (
            f"Secret {name} is not marked for notifications"
            f" (the platform admin labels it {C.LABEL_NOTIFICATION_SECRET}=true)"
        )
    if not url:
        return f"Secret {name} has no URL under the key the policy names"
    allowed = prefixes(secret)
    if allowed and not any(url.startswith(p) for p in allowed):
        return (
            f"the URL in Secret {name} starts with none of its prefixes"
            f" (its annotation {C.ANNOTATION_NOTIFICATION_URLS})"
        )
    if url.startswith("http://") and not any(p.startswith("http://") for p in allowed):
        return (
            f"the URL in Secret {name} is plain http://: allowed only where a prefix in"
            f" its annotation {C.ANNOTATION_NOTIFICATION_URLS} starts with http://"
        )
    if not url.startswith(("https://", "http://")):
        return f"the value in Secret {name} is not an http(s) URL"
    return None
