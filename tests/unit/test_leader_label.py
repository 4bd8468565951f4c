"""The leader's label on its own Pod (pitstop.cluster.leader_label), which the alerts
Service selects: the patches, and the hand-overs on an in-memory Pod store that keeps
the API server's rules for a merge patch (a null removes a label; a resourceVersion
in the patch makes it conditional, 409 if the Pod changed)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pitstop.cluster.kube import ApiError
from pitstop.cluster.leader_label import (
    LEADER_LABEL,
    OwnPod,
    keep_marked,
    label_patch,
    mark,
    stale_marks,
    unmark,
)

NS = "pitstop-system"


def test_own_pod_comes_from_the_downward_api() -> None:
    assert OwnPod.from_env({"POD_NAME": "p-1", "POD_NAMESPACE": "ops"}) == OwnPod("ops", "p-1")
    assert OwnPod.from_env({"POD_NAME": "p-1"}) == OwnPod(NS, "p-1")
    assert OwnPod.from_env({"POD_NAMESPACE": "ops"}) is None  # not in a Pod: no label
    assert OwnPod("ops", "p-1").path == "/api/v1/namespaces/ops/pods/p-1"


def test_label_patches() -> None:
    assert label_patch(True) == {"metadata": {"labels": {LEADER_LABEL: "true"}}}
    assert label_patch(False, "7") == {
        "metadata": {"labels": {LEADER_LABEL: None}, "resourceVersion": "7"}
    }


def test_stale_marks_are_the_other_labelled_pods() -> None:
    def pod(name: str, version: str, **labels: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "resourceVersion": version, "labels": labels}}

    pods = [
        pod("me", "1", **{LEADER_LABEL: "true"}),
        pod("old", "2", **{LEADER_LABEL: "true"}),
        pod("other", "3", app="x"),
        pod("odd", "4", **{LEADER_LABEL: "false"}),
        {"metadata": {"name": "bare"}},
    ]
    assert stale_marks(pods, "me") == [("old", "2")]


class Pods:
    """Pods of one namespace, as the API server patches and lists them."""

    def __init__(self, *names: str) -> None:
        self.version = 0
        self.pods: dict[str, dict[str, Any]] = {}
        for name in names:
            self.pods[name] = {"metadata": {"name": name, "labels": {"app": "pitstop"}}}
            self._bump(name)
        self.down = False
        self.after_list: Callable[[], None] | None = None
        """Runs once after the next list is answered (a change racing the caller)."""

    def _bump(self, name: str) -> None:
        self.version += 1
        self.pods[name]["metadata"]["resourceVersion"] = str(self.version)

    def labelled(self) -> set[str]:
        return {n for n, p in self.pods.items() if p["metadata"]["labels"].get(LEADER_LABEL)}

    def restart(self, name: str) -> None:
        """A container restart changes the Pod's status, so its resourceVersion."""
        self._bump(name)

    def client(self) -> Any:
        store = self

        class Client:
            async def request(
                self,
                method: str,
                path: str,
                body: Any = None,
                content_type: str = "",
                params: dict[str, str] | None = None,
            ) -> dict[str, Any]:
                await asyncio.sleep(0)
                if store.down:
                    raise ApiError(503, "the API server is down")
                prefix = f"/api/v1/namespaces/{NS}/pods"
                if method == "GET" and path == prefix:
                    assert params == {"labelSelector": LEADER_LABEL}
                    items = [
                        copy.deepcopy(p)
                        for p in store.pods.values()
                        if LEADER_LABEL in p["metadata"]["labels"]
                    ]
                    if store.after_list is not None:
                        store.after_list()
                        store.after_list = None
                    return {"items": items}
                assert method == "PATCH" and content_type == "application/merge-patch+json"
                name = path.removeprefix(prefix + "/")
                if name not in store.pods:
                    raise ApiError(404, "not found")
                metadata = store.pods[name]["metadata"]
                given = body["metadata"].get("resourceVersion")
                if given is not None and given != metadata["resourceVersion"]:
                    raise ApiError(409, "the object has been modified")
                labels = metadata["labels"]
                before = dict(labels)
                for key, value in body["metadata"]["labels"].items():
                    if value is None:
                        labels.pop(key, None)
                    else:
                        labels[key] = value
                if labels != before:
                    store._bump(name)
                return copy.deepcopy(store.pods[name])

        return Client()


def test_hand_over_moves_the_label_to_the_new_leader() -> None:
    """a leads; its fence fires (its Pod keeps the label); b takes the Lease and
    labels itself, clearing a's; a's container restarts and clears its own again."""

    async def scenario() -> list[set[str]]:
        pods = Pods("a", "b")
        kube = pods.client()
        a, b = OwnPod(NS, "a"), OwnPod(NS, "b")
        seen = []
        await unmark(kube, a)
        await unmark(kube, b)
        seen.append(pods.labelled())
        await mark(kube, a)
        seen.append(pods.labelled())
        await mark(kube, b)  # a was fenced: it exited with the label on
        seen.append(pods.labelled())
        pods.restart("a")
        await unmark(kube, a)
        seen.append(pods.labelled())
        return seen

    assert asyncio.run(scenario()) == [set(), {"a"}, {"b"}, {"b"}]


def test_restarted_replica_clears_its_own_label_before_a_new_leader_exists() -> None:
    async def scenario() -> set[str]:
        pods = Pods("a", "b")
        kube = pods.client()
        await mark(kube, OwnPod(NS, "a"))
        pods.restart("a")  # fenced and restarted: a standby now
        await unmark(kube, OwnPod(NS, "a"))
        return pods.labelled()

    assert asyncio.run(scenario()) == set()


def test_a_stale_clear_spares_a_pod_that_changed_since_the_list() -> None:
    """The clear names the resourceVersion listed: a Pod that restarted and labelled
    itself again between the list and the clear (a newer leader, say, while b's write
    was delayed) keeps its label."""

    async def scenario() -> set[str]:
        pods = Pods("a", "b")
        kube = pods.client()
        await mark(kube, OwnPod(NS, "a"))

        def a_comes_back() -> None:
            pods.restart("a")
            pods.pods["a"]["metadata"]["labels"][LEADER_LABEL] = "true"
            pods.restart("a")

        pods.after_list = a_comes_back
        await mark(kube, OwnPod(NS, "b"))
        return pods.labelled()

    assert asyncio.run(scenario()) == {"a", "b"}


def test_keep_marked_retries_until_the_api_answers() -> None:
    async def scenario() -> set[str]:
        pods = Pods("a", "b")
        pods.down = True
        task = asyncio.create_task(keep_marked(pods.client(), OwnPod(NS, "a"), 0.01))
        await asyncio.sleep(0.05)
        assert not task.done()
        pods.down = False
        await asyncio.wait_for(task, 2)
        return pods.labelled()

    assert asyncio.run(scenario()) == {"a"}


def test_unmark_never_stops_a_replica() -> None:
    async def scenario() -> None:
        pods = Pods("a")
        pods.down = True
        await unmark(pods.client(), OwnPod(NS, "a"))  # logs, does not raise

    asyncio.run(scenario())


def test_manifests_route_alerts_to_the_labelled_pod_only() -> None:
    """The alerts Service selects the label; the Pod template never carries it (or
    both replicas would match) and gives the process its Pod's name and namespace."""
    root = Path(__file__).resolve().parents[2] / "manifests" / "operator"
    services = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all((root / "service.yaml").open())
    }
    deployment = yaml.safe_load((root / "deployment.yaml").read_text())
    template = deployment["spec"]["template"]
    alerts = services["pitstop-alerts"]["spec"]["selector"]
    assert alerts[LEADER_LABEL] == "true"
    assert LEADER_LABEL not in services["pitstop-metrics"]["spec"]["selector"]  # both scraped
    assert LEADER_LABEL not in template["metadata"]["labels"]
    assert {k: v for k, v in alerts.items() if k != LEADER_LABEL}.items() <= template["metadata"][
        "labels"
    ].items()
    env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
