"""NodeRepair helpers for e2e tests."""

from __future__ import annotations

import uuid
from typing import Any

from kubernetes.client.exceptions import ApiException

from tests.e2e.kube import Cluster, wait_until

GROUP, VERSION, PLURAL = "pitstop.dev", "v1alpha1", "noderepairs"


class Repairs:
    """Creates NodeRepairs for one test and deletes them (finalizers and all) after it."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.made: list[str] = []

    def create(self, node: str, name: str | None = None, **spec: Any) -> str:
        """A NodeRepair of `node` with `spec`. requireRoom is false unless given (None:
        left out, so the default holds): most tests pin their instances to a pool of
        one node, where they fit nowhere else, to test what comes after the cordon
        (tests/e2e/test_room.py tests the room check)."""
        name = name or f"r-{uuid.uuid4().hex[:8]}"
        spec.setdefault("requireRoom", False)
        if spec["requireRoom"] is None:
            del spec["requireRoom"]
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NodeRepair",
            "metadata": {"name": name},
            "spec": {"nodeName": node, "reason": "E2E", **spec},
        }
        self.cluster.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
        self.made.append(name)
        return name

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.cluster.custom.get_cluster_custom_object(
            GROUP, VERSION, PLURAL, name
        )
        return obj

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def phase(self, name: str) -> str | None:
        return self.status(name).get("phase")

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for c in self.status(name).get("conditions") or []:
            if c["type"] == type_:
                return dict(c)
        return None

    def wait_phase(self, name: str, *phases: str, timeout: float = 60) -> dict[str, Any]:
        status: dict[str, Any] = wait_until(
            f"{name} in {phases}",
            lambda: (s := self.status(name)).get("phase") in phases and s,
            timeout=timeout,
        )
        return status

    def delete(self, name: str, wait: bool = True, timeout: float = 30) -> None:
        try:
            self.cluster.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except ApiException as e:
            if e.status != 404:
                raise
        if wait:
            wait_until(f"{name} deleted", lambda: not self.exists(name), timeout=timeout)

    def force_delete(self, name: str) -> bool:
        """Deletes the repair without its finalizer, as a human would with
        `kubectl patch nr NAME --type=merge -p '{"metadata":{"finalizers":null}}'` and
        `kubectl delete nr NAME`. True if it went without its finalizer; False if the
        operator put the finalizer back in between (the deletion then runs it as usual)."""
        return force_delete(self.cluster, name)

    def cleanup(self) -> None:
        for name in self.made:
            self.delete(name, wait=False)
        for name in self.made:
            wait_until(f"{name} deleted", lambda n=name: not self.exists(n), timeout=60)


def force_delete(cluster: Cluster, name: str) -> bool:
    """See Repairs.force_delete."""
    custom = cluster.custom
    custom.patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, name, {"metadata": {"finalizers": None}}
    )
    answer = custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    return not ((answer or {}).get("metadata") or {}).get("finalizers")


def node_markers(cluster: Cluster, node: str) -> dict[str, Any]:
    n = cluster.core.read_node(node)
    annotations = n.metadata.annotations or {}
    return {
        "unschedulable": bool(n.spec.unschedulable),
        "taint": any(t.key == "pitstop.dev/maintenance" for t in n.spec.taints or []),
        "lock": annotations.get("pitstop.dev/repair"),
    }
