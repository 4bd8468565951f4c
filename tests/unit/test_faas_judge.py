"""The simulated router's judgement of "a request sent to a pod after it left"
(tests/e2e/faas.py), fed states by hand: the two watch streams it compares arrive
at their own pace, so only the API's own order (resourceVersion) may call a
request dropped."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.faas import FaasRuntime, PodView


def runtime() -> FaasRuntime:
    cluster: Any = SimpleNamespace(api=client.ApiClient())  # no request is made
    return FaasRuntime(cluster, "ns", "fn", requests_per_tick=4)


def view(name: str, left_rv: int | None) -> PodView:
    return PodView(
        name=name,
        node="n-1",
        rv="1",
        annotations={},
        terminating=left_rv is not None,
        phase="Running",
        gated=True,
        left_rv=left_rv,
    )


@pytest.mark.parametrize(
    ("pod", "gone", "slice_rv", "dropped"),
    [
        pytest.param(view("p", 10), {}, 12, True, id="ready-after-terminating"),
        pytest.param(None, {"p": 10}, 12, True, id="ready-after-deleted"),
        pytest.param(view("p", 10), {}, 8, False, id="slice-stream-behind"),
        pytest.param(view("p", None), {}, 12, False, id="still-serving"),
        pytest.param(None, {}, 12, False, id="pod-stream-behind"),
    ],
)
def test_dropped_is_judged_in_resource_version_order(
    pod: PodView | None, gone: dict[str, int], slice_rv: int, dropped: bool
) -> None:
    r = runtime()
    if pod is not None:
        r.pods["p"] = pod
    r.gone.update(gone)
    r.slice_ready["fn-abc"] = (slice_rv, {"p": True})
    r._route()
    assert (r.judge.dropped, r.judge.served) == ((4, 0) if dropped else (0, 4))
    assert r.judge.dropped_to == (["p"] * 4 if dropped else [])


def test_an_unready_endpoint_gets_no_request() -> None:
    r = runtime()
    r.pods["p"] = view("p", 10)
    r.slice_ready["fn-abc"] = (12, {"p": False})
    r._route()
    assert (r.judge.dropped, r.judge.served) == (0, 0)
