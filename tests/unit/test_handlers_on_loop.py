"""kopf runs a plain function handler in its thread pool; pitstop's index and
watch-event handlers run on the event loop instead (indexes.on_the_loop): no
thread hop per watch event, and the asyncio Events they set are set on the
loop's own thread (asyncio is not thread-safe)."""

from __future__ import annotations

import asyncio
import threading

import kopf
import pytest
from kopf._core.actions.invocation import invoke, is_async_fn

from pitstop import handlers
from pitstop.cluster import indexes


def registered(kind: str) -> dict[str, object]:
    """The handlers of pitstop's modules in kopf's default registry, by id."""
    reg = getattr(kopf.get_default_registry(), kind)
    return {
        str(h.id): h.fn
        for h in reg.get_all_handlers()
        if getattr(h.fn, "__module__", "").startswith("pitstop.")
    }


@pytest.mark.parametrize("kind", ["_indexing", "_watching"])
def test_every_index_and_watch_handler_runs_on_the_loop(kind: str) -> None:
    assert handlers.WATCH_HANDLERS  # the handlers module registered them
    found = registered(kind)
    assert found, f"no pitstop handlers in {kind}"
    in_threads = sorted(name for name, fn in found.items() if not is_async_fn(fn))  # type: ignore[arg-type]
    assert in_threads == []


def test_a_node_event_wakes_its_repair_from_the_loops_own_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As kopf calls it: the waker is set on the loop's thread, and its waiter runs."""
    set_on: list[int] = []

    class Recording(asyncio.Event):
        def set(self) -> None:
            set_on.append(threading.get_ident())
            super().set()

    async def scenario() -> None:
        wake = indexes.Wakeups()
        monkeypatch.setattr(indexes.asyncio, "Event", Recording)
        waker = wake.nodes.register("n1")
        monkeypatch.undo()
        fn = registered("_watching")["wake_on_node"]
        await invoke(fn, kwargs={"name": "n1", "memo": {indexes.MEMO_WAKEUPS: wake}})  # type: ignore[arg-type]
        await asyncio.wait_for(waker.wait(), 1)

    asyncio.run(scenario())
    assert set_on == [threading.get_ident()]


def test_every_watch_handler_is_kept_quiet() -> None:
    # wake_on_room (room check) was left out: its "succeeded" line was logged on every
    # pod event, 4,170 lines in one e2e run, thousands a minute at scale.
    assert set(registered("_watching")) - handlers.WATCH_HANDLERS == set()
