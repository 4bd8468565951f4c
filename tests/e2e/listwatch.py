"""A watch that survives API server and etcd restarts, and says when it was blind.

LIST, then WATCH from the list's resourceVersion (with bookmarks), re-opening the
stream from the last resourceVersion after each normal end. When the stream cannot
be resumed (410 Gone from a fresh API server's watch cache, connection refused while
it restarts), it LISTs again and diffs against what it knew: every object that changed
meanwhile is reported with `resynced=True`, its last state before the gap still in
hand, so a checker can tell a transition it saw from one it only inferred. Every such
re-list is a gap, counted with its length.

Objects are raw JSON dicts (the client's model objects are several times slower)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

OnEvent = Callable[[str, dict[str, Any], dict[str, Any] | None, bool], None]
"""(type ADDED|MODIFIED|DELETED, object, the object as last known or None, resynced)"""


def rv_of(obj: dict[str, Any]) -> int:
    return int(obj.get("metadata", {}).get("resourceVersion") or 0)


def key_of(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{meta.get('namespace') or ''}/{meta.get('name')}"


@dataclass
class Gap:
    started: float
    ended: float
    since_rv: int
    """Events after this resourceVersion and up to the re-list's were not seen one by one."""
    until_rv: int
    changed: int
    """Objects that differed across the gap."""


@dataclass
class ListWatch:
    """Runs `list_call(*args, **kwargs)`'s LIST and WATCH in a daemon thread until
    `stop()`. `on_event` is called from that thread, one event at a time."""

    name: str
    list_call: Callable[..., Any]
    on_event: OnEvent
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    stream_seconds: int = 30
    rv: int = 0
    """The latest resourceVersion this stream has caught up with (events, bookmarks, lists)."""
    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    gaps: list[Gap] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    handler_errors: list[str] = field(default_factory=list)
    events: int = 0
    listed: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ListWatch:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.stream_seconds + 10)

    @property
    def blind_seconds(self) -> float:
        return sum(g.ended - g.started for g in self.gaps)

    def _run(self) -> None:
        need_list, broke_at = True, time.monotonic()
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list(first=not self.listed.is_set(), broke_at=broke_at)
                    need_list = False
                if not self._watch():
                    need_list, broke_at = True, time.monotonic()
            except Exception as e:  # the API server restarting: refused, reset, 5xx
                self.errors.append(f"{type(e).__name__}: {str(e)[:120]}")
                if not need_list:
                    need_list, broke_at = True, time.monotonic()
                self._stop.wait(0.2)

    def _list(self, first: bool, broke_at: float) -> None:
        answer = self.list_call(
            *self.args, _preload_content=False, _request_timeout=30, **self.kwargs
        )
        body = json.loads(answer.data)
        list_rv = int(body["metadata"]["resourceVersion"])
        items = {key_of(o): o for o in body.get("items") or []}
        changed = 0
        for k, obj in items.items():
            old = self.known.get(k)
            if old is None or rv_of(old) != rv_of(obj):
                changed += 1
                self._emit("ADDED" if old is None else "MODIFIED", obj, old, not first)
        for k in set(self.known) - set(items):
            changed += 1
            self._emit("DELETED", self.known[k], self.known[k], not first)
        if not first:
            self.gaps.append(Gap(broke_at, time.monotonic(), self.rv, list_rv, changed))
        self.known = items
        self.rv = list_rv
        self.listed.set()

    def _watch(self) -> bool:
        """One stream from `self.rv`; False when it cannot be resumed (re-list)."""
        w = watch.Watch()
        try:
            for event in w.stream(
                self.list_call,
                *self.args,
                resource_version=str(self.rv),
                allow_watch_bookmarks=True,
                timeout_seconds=self.stream_seconds,
                _request_timeout=self.stream_seconds + 30,
                deserialize=False,  # raw JSON
                **self.kwargs,
            ):
                if self._stop.is_set():
                    w.stop()
                    return True
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":  # (the client raises 410 Gone itself, as ApiException)
                    return False
                if kind == "BOOKMARK":
                    self.rv = max(self.rv, rv_of(obj))
                    continue
                k = key_of(obj)
                old = self.known.get(k)
                if kind == "DELETED":
                    self.known.pop(k, None)
                else:
                    self.known[k] = obj
                self.rv = max(self.rv, rv_of(obj))
                self._emit(kind, obj, old, False)
        except ApiException as e:
            if e.status == 410:
                return False
            raise
        return True

    def _emit(
        self, kind: str, obj: dict[str, Any], old: dict[str, Any] | None, resynced: bool
    ) -> None:
        self.events += 1
        try:
            self.on_event(kind, obj, old, resynced)
        except Exception as e:  # a checker's own bug: recorded, and fails the checker
            self.handler_errors.append(f"{type(e).__name__}: {e}")
