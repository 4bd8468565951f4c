"""A policy's notifications (pool/notices.py): which transitions are told, the
template (nothing but its placeholders is interpreted), the Slack-compatible body,
and the trust rules for the Secret holding the URL (never named in a message)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pitstop.models.repairpolicy import NotificationEvent, Notifications
from pitstop.pool import notices

S, F, ST = NotificationEvent.SUCCEEDED, NotificationEvent.FAILED, NotificationEvent.STARTED
URL = "https://hooks.example.com/services/T000/B000/XXXXSECRET"


def seen(name: str, phase: str | None, **kw: Any) -> notices.Seen:
    return notices.Seen(name=name, node=f"node-{name}", phase=phase, **kw)


def told(before: dict[str, str | None], now: list[notices.Seen]) -> list[tuple[str, str]]:
    return [(n.repair.name, n.event.value) for n in notices.transitions(before, now)]


def test_start_success_and_failure_are_told_once() -> None:
    assert told({"a": "Pending"}, [seen("a", "Cordoning")]) == [("a", "Started")]
    assert told({"a": "Cordoning"}, [seen("a", "Evicting")]) == []
    assert told({"a": "Uncordoning"}, [seen("a", "Succeeded")]) == [("a", "Succeeded")]
    assert told({"a": "Succeeded"}, [seen("a", "Succeeded")]) == []
    assert told({"a": "Verifying"}, [seen("a", "Failed")]) == [("a", "Failed")]
    # New since the last look: its phase before was none.
    assert told({}, [seen("b", None), seen("c", "Pending"), seen("d", "Cordoning")]) == [
        ("d", "Started")
    ]


def test_skipped_steps_and_aborts() -> None:
    # Started and finished between two looks: the outcome only.
    assert told({"a": "Pending"}, [seen("a", "Succeeded")]) == [("a", "Succeeded")]
    # Refused while Pending (RepairJobNotAllowed): it never started.
    assert told({"a": None}, [seen("a", "Failed")]) == [("a", "Failed")]
    # A deletion (Aborted) is neither success nor failure.
    assert told({"a": "Evicting"}, [seen("a", "Aborted")]) == []


def test_the_template_replaces_its_placeholders_and_nothing_else() -> None:
    values = {"repair": "r1", "node": "n1", "message": "Succeeded"}
    assert notices.render("{repair} on {node}: {message}", values) == "r1 on n1: Succeeded"
    # No format specs, no attribute access, no other names: left as written.
    text = "{repair.__class__} {node!r} {secret} {0} {{node}}"
    assert notices.render(text, values) == "{repair.__class__} {node!r} {secret} {0} {n1}"


def test_the_body_is_slack_compatible_and_never_says_none() -> None:
    notice = notices.Notice(F, seen("r1", "Failed", reason=None, message=None))
    body = notices.body("{repair} {event} ({reason}) {message}", notice, "pool-a")
    assert body["text"] == "r1 failed () "
    assert body["pitstop"] == {
        "event": "failed",
        "repair": "r1",
        "node": "node-r1",
        "policy": "pool-a",
        "reason": "",
        "phase": "Failed",
        "message": "",
    }
    assert "None" not in str(body)


def test_the_default_template_and_its_admission_rule() -> None:
    spec = Notifications.model_validate({"webhook": {"secretRef": {"name": "s", "key": "url"}}})
    assert spec.events == [ST, S, F]
    notice = notices.Notice(S, seen("r1", "Succeeded", message="Succeeded: n1 is back"))
    assert notices.body(spec.template, notice, "p")["text"] == (
        "pitstop: repair r1 of node-r1 succeeded: Succeeded: n1 is back"
    )
    with pytest.raises(ValidationError):
        Notifications.model_validate(
            {"webhook": {"secretRef": {"name": "s", "key": "url"}}, "events": []}
        )


def secret(labelled: bool = True, prefixes: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "chat"}
    if labelled:
        meta["labels"] = {"pitstop.dev/notification-secret": "true"}
    if prefixes is not None:
        meta["annotations"] = {"pitstop.dev/notification-url-prefixes": prefixes}
    return {"metadata": meta}


@pytest.mark.parametrize(
    ("obj", "url", "refused"),
    [
        (None, URL, "not found"),
        (secret(labelled=False), URL, "not marked for notifications"),
        (secret(), None, "has no URL"),
        (secret(), URL, None),
        (secret(prefixes="https://hooks.example.com/"), URL, None),
        (secret(prefixes="https://other.example/, https://x/"), URL, "none of its prefixes"),
        (secret(), "http://hooks.example.com/x", "plain http://"),
        (secret(prefixes="https://hooks.example.com/"), "http://hooks.example.com/x", "none of"),
        (secret(prefixes="http://127.0.0.1:8080/"), "http://127.0.0.1:8080/hook", None),
        (secret(), "ftp://files/SECRET", "not an http(s) URL"),
    ],
)
def test_the_secret_must_be_marked_and_its_url_allowed(
    obj: dict[str, Any] | None, url: str | None, refused: str | None
) -> None:
    why = notices.refusal(obj, "pitstop-system/chat", url)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why
        assert "SECRET" not in why and (url is None or url not in why)
