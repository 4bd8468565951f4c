"""Helpers and fixtures (import `policies_fixture`, `alerts_token_fixture` to use
`policies`, `alerts_token`) for the RepairPolicy and alert-receiver e2e tests
(test_policy.py, test_alerts.py): RepairPolicies scoped to one test's node pool,
fault injection in bulk, a "repair crew" thread that finishes Manual repairs, a
watcher that checks the pool limits continuously, and the receiver's bearer token.

Every policy made here selects only its own test's pool (`pool=<id>`), so tests of
several engineers can share one cluster; the `policies` fixture deletes the
policies, then every NodeRepair of the pool's nodes (whoever made it)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.e2e.kube import Cluster, Pool, wait_until
from tests.e2e.operator import Operator
from tests.e2e.repairs import GROUP, PLURAL, VERSION

RP_PLURAL = "repairpolicies"
FAULT = "sim.pitstop.dev/fault"
DEADLOCK = "KernelDeadlock"
REPAIRED = "pitstop.dev/repaired"
POLICY_LABEL = "pitstop.dev/policy"
LOCK = "pitstop.dev/repair"
FINAL = ("Succeeded", "Failed", "Aborted")
TEMPLATE = {
    "spec": {
        "repair": {"strategy": "Manual", "timeoutSeconds": 600},
        "verify": {"stableSeconds": 1, "timeoutSeconds": 30},
    }
}
"""A Manual repair: the test (or the RepairCrew) heals the node and marks it done."""

ALERTS_NAMESPACE = "pitstop-system"
ALERTS_SECRET, ALERTS_KEY = "pitstop-alerts", "token"


def new_client(cluster: Cluster) -> client.ApiClient:
    """A client of its own, for a background thread."""
    return config.new_client_from_config(config_file=cluster.kubeconfig)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- nodes and faults ---


def node_condition(cluster: Cluster, node: str, type_: str) -> client.V1NodeCondition | None:
    for c in cluster.core.read_node(node).status.conditions or []:
        if c.type == type_:
            return c
    return None


def set_fault(cluster: Cluster, node: str, fault: str | None) -> None:
    cluster.core.patch_node(node, {"metadata": {"annotations": {FAULT: fault}}})


def inject(cluster: Cluster, node: str, fault: str = DEADLOCK) -> client.V1NodeCondition:
    """Breaks the node (kwok sets `fault`=True) and returns the condition once it shows."""
    set_fault(cluster, node, fault)
    found: client.V1NodeCondition = wait_until(
        f"{fault}=True on {node}",
        lambda: (c := node_condition(cluster, node, fault)) and c.status == "True" and c,
        timeout=20,
        interval=0.05,
    )
    return found


def heal(cluster: Cluster, node: str, fault: str = DEADLOCK, wait: bool = True) -> None:
    set_fault(cluster, node, None)
    if wait:
        wait_until(
            f"{fault}=False on {node}",
            lambda: (c := node_condition(cluster, node, fault)) is not None and c.status == "False",
            timeout=20,
            interval=0.05,
        )


def inject_many(
    cluster: Cluster, pool: Pool, nodes: list[str], fault: str = DEADLOCK, wait: bool = True
) -> None:
    """Breaks `nodes` at once (in parallel) and waits until every fault shows."""
    with ThreadPoolExecutor(max_workers=10) as ex:
        list(ex.map(lambda n: set_fault(cluster, n, fault), nodes))
    if not wait:
        return
    wanted = set(nodes)

    def shown() -> bool:
        items = cluster.core.list_node(label_selector=selector(pool)).items
        ok = {
            n.metadata.name
            for n in items
            if any(c.type == fault and c.status == "True" for c in n.status.conditions or [])
        }
        return wanted <= ok

    wait_until(f"{fault}=True on {len(nodes)} nodes", shown, timeout=60, interval=0.2)


def selector(pool: Pool) -> str:
    return ",".join(f"{k}={v}" for k, v in pool.selector.items())


def is_available(node: dict[str, Any]) -> bool:
    """Ready and schedulable (DESIGN.md, "Pool arithmetic"); `node` as raw JSON."""
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return ready and not (node.get("spec") or {}).get("unschedulable")


# --- NodeRepairs of a pool ---


def all_repairs(api: client.CustomObjectsApi) -> list[dict[str, Any]]:
    return list(api.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"])


def repairs_for(cluster: Cluster, nodes: Iterable[str]) -> list[dict[str, Any]]:
    """Every NodeRepair (whoever made it) whose node is one of `nodes`."""
    wanted = set(nodes)
    return [r for r in all_repairs(cluster.custom) if r["spec"]["nodeName"] in wanted]


def phase(repair: dict[str, Any]) -> str | None:
    return (repair.get("status") or {}).get("phase")


def is_active(repair: dict[str, Any]) -> bool:
    """Past Pending and not finished (DESIGN.md)."""
    return phase(repair) not in (None, "Pending", *FINAL)


def get_repair(cluster: Cluster, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = cluster.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    return obj


def mark_repaired(cluster: Cluster, name: str, value: str = "true") -> None:
    cluster.custom.patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, name, {"metadata": {"annotations": {REPAIRED: value}}}
    )


def wait_repair_phase(
    cluster: Cluster, name: str, *phases: str, timeout: float = 60
) -> dict[str, Any]:
    found: dict[str, Any] = wait_until(
        f"{name} in {phases}",
        lambda: (r := get_repair(cluster, name)) and phase(r) in phases and r,
        timeout=timeout,
    )
    return found


def events_about(cluster: Cluster, kind: str, name: str) -> list[client.CoreV1Event]:
    return list(
        cluster.core.list_event_for_all_namespaces(
            field_selector=f"involvedObject.kind={kind},involvedObject.name={name}"
        ).items
    )


def no_repair_for(cluster: Cluster, nodes: Iterable[str], seconds: float) -> None:
    """Asserts that no NodeRepair exists for `nodes`, for `seconds` (polled)."""
    nodes = list(nodes)
    deadline = time.monotonic() + seconds
    while True:
        found = repairs_for(cluster, nodes)
        assert not found, f"unexpected NodeRepairs: {[r['metadata']['name'] for r in found]}"
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


# --- RepairPolicies ---


def policy_spec(pool: Pool, **overrides: Any) -> dict[str, Any]:
    """A policy for `pool` that acts on KernelDeadlock=True at once, with limits that
    stay out of the way unless a test sets them."""
    spec: dict[str, Any] = {
        "nodeSelector": {"matchLabels": dict(pool.selector)},
        "unhealthyConditions": [{"type": DEADLOCK, "status": "True", "duration": "0s"}],
        "maxUnhealthy": "100%",
        "maxConcurrentRepairs": 10,
        "minAvailable": 0,
        "repairTemplate": TEMPLATE,
    }
    spec.update(overrides)
    return spec


class Policies:
    """RepairPolicies of one test, and the NodeRepairs of its nodes, deleted after it."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.made: list[str] = []
        self.nodes: set[str] = set()
        self.selectors: set[str] = set()

    def create(self, pool: Pool, spec: dict[str, Any], name: str | None = None) -> str:
        name = name or f"rp-{uuid.uuid4().hex[:8]}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RepairPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.cluster.custom.create_cluster_custom_object(GROUP, VERSION, RP_PLURAL, body)
        self.made.append(name)
        self.nodes.update(pool.names)
        self.selectors.add(selector(pool))
        return name

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.cluster.custom.get_cluster_custom_object(
            GROUP, VERSION, RP_PLURAL, name
        )
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for c in self.status(name).get("conditions") or []:
            if c["type"] == type_:
                return dict(c)
        return None

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.cluster.custom.patch_cluster_custom_object(
            GROUP, VERSION, RP_PLURAL, name, {"spec": spec}
        )

    def wait_status(
        self, name: str, what: str, probe: Callable[[dict[str, Any]], Any], timeout: float = 30
    ) -> dict[str, Any]:
        found: dict[str, Any] = wait_until(
            f"{name}: {what}", lambda: (s := self.status(name)) and probe(s) and s, timeout=timeout
        )
        return found

    def wait_observed(self, name: str, timeout: float = 30) -> dict[str, Any]:
        """Until the operator has written a status for the policy's current generation."""
        gen = self.get(name)["metadata"]["generation"]
        return self.wait_status(
            name,
            f"observedGeneration {gen}",
            lambda s: (s.get("observedGeneration") or 0) >= gen,
            timeout,
        )

    def events(self, name: str) -> list[client.CoreV1Event]:
        return events_about(self.cluster, "RepairPolicy", name)

    def wait_event(
        self, name: str, reason: str, type_: str | None = None, timeout: float = 20
    ) -> list[client.CoreV1Event]:
        found: list[client.CoreV1Event] = wait_until(
            f"Event {reason} on {name}",
            lambda: [
                e
                for e in self.events(name)
                if e.reason == reason and (type_ is None or e.type == type_)
            ],
            timeout=timeout,
        )
        return found

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def cleanup(self) -> None:
        # Heal first: nothing left for a policy to act on while everything goes.
        faulty = [
            n.metadata.name
            for sel in self.selectors
            for n in self.cluster.core.list_node(label_selector=sel).items
            if FAULT in (n.metadata.annotations or {})
        ]
        with ThreadPoolExecutor(max_workers=10) as ex:
            list(ex.map(lambda n: set_fault(self.cluster, n, None), faulty))
        for name in self.made:
            try:
                self.cluster.custom.delete_cluster_custom_object(GROUP, VERSION, RP_PLURAL, name)
            except ApiException as e:
                if e.status != 404:
                    raise
        for name in self.made:
            wait_until(f"policy {name} deleted", lambda n=name: not self.exists(n), timeout=60)
        # Then every repair of the pool's nodes (the policies', and manual ones).
        left = [r["metadata"]["name"] for r in repairs_for(self.cluster, self.nodes)]
        for name in left:
            try:
                self.cluster.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
            except ApiException as e:
                if e.status != 404:
                    raise
        wait_until(
            f"NodeRepairs of the test's nodes deleted ({len(left)})",
            lambda: not repairs_for(self.cluster, self.nodes),
            timeout=120,
            interval=0.5,
        )


@pytest.fixture(name="policies")
def policies_fixture(
    cluster: Cluster, running_operator: Operator, pool: Callable[[int], Pool]
) -> Iterator[Policies]:
    """Set up after `pool`, so torn down before its nodes go; the operator runs the
    repairs' finalizers."""
    made = Policies(cluster)
    yield made
    running_operator.ensure_running()
    made.cleanup()


# --- the outside world: a repair crew and a limits watcher ---


class Background:
    """A polling thread that reports its first error when it is stopped."""

    interval = 0.1
    transient: tuple[type[BaseException], ...] = ()
    """Errors that are retried, not reported (a chaos run's API server restarting)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.api = new_client(cluster)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self.error is not None and exc[0] is None:
            raise AssertionError(f"{type(self).__name__} failed: {self.error!r}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except ApiException as e:
                if e.status not in (404, 409, 429, 500, 503):
                    self.error = self.error or e
            except self.transient:
                pass
            except BaseException as e:  # reported by __exit__
                self.error = self.error or e
            self._stop.wait(self.interval)

    def step(self) -> None:
        raise NotImplementedError


class RepairCrew(Background):
    """Finishes every NodeRepair of `nodes` that reaches Repairing: heals the node
    (removes the fault annotation) and annotates the repair `pitstop.dev/repaired=true`."""

    def __init__(self, cluster: Cluster, nodes: Iterable[str]):
        super().__init__(cluster)
        self.nodes = set(nodes)
        self.done: list[str] = []

    def step(self) -> None:
        custom, core = client.CustomObjectsApi(self.api), client.CoreV1Api(self.api)
        for r in all_repairs(custom):
            name = r["metadata"]["name"]
            if r["spec"]["nodeName"] not in self.nodes or phase(r) != "Repairing":
                continue
            if (r["metadata"].get("annotations") or {}).get(REPAIRED) == "true":
                continue
            core.patch_node(r["spec"]["nodeName"], {"metadata": {"annotations": {FAULT: None}}})
            body = {"metadata": {"annotations": {REPAIRED: "true"}}}
            custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, body)
            self.done.append(name)


@dataclass(frozen=True)
class Sample:
    at: float
    active: list[str]
    available: int
    locked: list[str]


class LimitsWatch(Background):
    """Checks the pool limits every ~50 ms, from outside: repairs of the pool past
    Pending and not final (at most `max_active`), nodes held by a repair (the
    `pitstop.dev/repair` lock; at most `max_active` too), and the pool's Ready and
    schedulable nodes (at least `min_available`)."""

    interval = 0.05

    def __init__(self, cluster: Cluster, pool: Pool, max_active: int, min_available: int):
        super().__init__(cluster)
        self.pool, self.max_active, self.min_available = pool, max_active, min_available
        self.samples = 0
        self.violations: list[Sample] = []
        self.peak_active = 0
        self.peak_locked = 0
        self.low_available = len(pool.names)
        self.pending_messages: set[str] = set()
        self.left_pending: set[str] = set()

    def step(self) -> None:
        custom, core = client.CustomObjectsApi(self.api), client.CoreV1Api(self.api)
        names = set(self.pool.names)
        mine = [r for r in all_repairs(custom) if r["spec"]["nodeName"] in names]
        # Raw JSON: the client's model objects make a 50-node list several times slower.
        raw = core.list_node(label_selector=selector(self.pool), _preload_content=False)
        nodes = json.loads(raw.data)["items"]
        active = sorted(r["metadata"]["name"] for r in mine if is_active(r))
        available = sum(1 for n in nodes if is_available(n))
        locked = sorted(
            n["metadata"]["name"]
            for n in nodes
            if (n["metadata"].get("annotations") or {}).get(LOCK)
        )
        for r in mine:
            status = r.get("status") or {}
            if phase(r) == "Pending" and status.get("message"):
                self.pending_messages.add(status["message"])
            if phase(r) not in (None, "Pending"):
                self.left_pending.add(r["metadata"]["name"])
        self.samples += 1
        self.peak_active = max(self.peak_active, len(active))
        self.peak_locked = max(self.peak_locked, len(locked))
        self.low_available = min(self.low_available, available)
        if (
            len(active) > self.max_active
            or len(locked) > self.max_active
            or available < self.min_available
        ):
            self.violations.append(Sample(time.monotonic(), active, available, locked))


# --- the alert receiver ---


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any


def post(
    port: int,
    body: bytes | Iterable[bytes],
    token: str | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> Reply:
    """POST /alerts on the operator's receiver (127.0.0.1)."""
    h = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        # The server may answer (and close) before reading a body it refuses.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request("POST", "/alerts", body=body, headers=h, encode_chunked=chunked)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw.decode(errors="replace")
    return Reply(resp.status, parsed)


def alert(name: str, node: str | None, status: str = "firing", **labels: str) -> dict[str, Any]:
    all_labels = {"alertname": name, **labels}
    if node is not None:
        all_labels["node"] = node
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": f"{name} on {node}"},
        "startsAt": "2025-01-01T00:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2025-01-01T01:00:00Z",
        "generatorURL": "http://prometheus.example/graph",
        "fingerprint": uuid.uuid4().hex[:16],
    }


def payload(*alerts: dict[str, Any], version: str = "4") -> bytes:
    """Alertmanager's webhook payload."""
    firing = any(a["status"] == "firing" for a in alerts)
    return json.dumps(
        {
            "version": version,
            "groupKey": '{}:{alertname="x"}',
            "truncatedAlerts": 0,
            "status": "firing" if firing else "resolved",
            "receiver": "pitstop",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.example",
            "alerts": list(alerts),
        }
    ).encode()


@pytest.fixture(scope="session", name="alerts_token")
def alerts_token_fixture(cluster: Cluster, operator: Operator) -> Iterator[str]:
    """The receiver's bearer token: Secret pitstop-alerts (key token) in pitstop-system.
    An existing Secret is used as it is (the cluster may be shared); one made here is
    deleted after the session. The operator caches the token (also its absence) for
    30 s, so if it already refused before the Secret existed, it is restarted."""
    created = False
    try:
        secret = cluster.core.read_namespaced_secret(ALERTS_SECRET, ALERTS_NAMESPACE)
        token = base64.b64decode(secret.data[ALERTS_KEY]).decode().strip()
    except ApiException as e:
        if e.status != 404:
            raise
        token = secrets.token_urlsafe(24)
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=ALERTS_SECRET),
            string_data={ALERTS_KEY: token},
        )
        cluster.core.create_namespaced_secret(ALERTS_NAMESPACE, body)
        created = True
    operator.ensure_running()
    if post(operator.alerts_port, payload(), token).status == 401:
        operator.kill()  # a cached "no Secret": start afresh
        operator.start()
    reply = post(operator.alerts_port, payload(), token)
    assert reply.status == 200, f"the receiver refuses the Secret's token: {reply}"
    yield token
    if created:
        cluster.core.delete_namespaced_secret(ALERTS_SECRET, ALERTS_NAMESPACE)
