"""One watch helper for e2e tests that must see every state an object passes
through (a poll would miss the short ones): a background thread that streams a
LIST function's watch from a resourceVersion, re-opening the stream after each
server timeout, and hands every event to a callback until the block ends."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kubernetes import watch

OnEvent = Callable[[str, Any], bool | None]
"""Called with (event type, object); returning True ends the watch."""


def resource_version(obj: Any) -> str:
    """Of a typed client object or of a custom object's dict."""
    if isinstance(obj, dict):
        return str(obj["metadata"]["resourceVersion"])
    return str(obj.metadata.resource_version)


@contextmanager
def watching(
    list_call: Callable[..., Any],
    *args: Any,
    since: str,
    on_event: OnEvent,
    stream_seconds: int = 5,
    **kwargs: Any,
) -> Iterator[None]:
    """Streams `list_call(*args, **kwargs)`'s watch from resourceVersion `since`
    while the block runs; the thread is joined (bounded) when it ends."""
    stop = threading.Event()
    rv = since

    def run() -> None:
        nonlocal rv
        while not stop.is_set():
            w = watch.Watch()
            for event in w.stream(
                list_call, *args, resource_version=rv, timeout_seconds=stream_seconds, **kwargs
            ):
                rv = resource_version(event["object"])
                if on_event(event["type"], event["object"]) or stop.is_set():
                    stop.set()
                    w.stop()
                    break

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=stream_seconds * 2)
