"""`pitstop gate open`: the break-glass for the serving gate. Every pod that declares
the readiness gate pitstop.dev/serving turns Ready only once pitstop writes that
condition; with the operator down, no new gated pod does. This command writes it
with the caller's own rights (list pods, nodes and NodeRepairs; patch pods/status),
by the operator's rule, except that it never opens a gate a repair may have closed:
a pod on a node whose repair is past Cordoning (deregistering, or further) stays
closed (invariant 2), and is printed as held. There is no override: such a node is
being emptied, and its repair closes the gate again when it next runs; the way to
put it back in service is `pitstop abort`.

Each write carries the pod's resourceVersion as listed: a pod that changed since
(a repair closed its gate meanwhile) is read and judged again, never overwritten."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pitstop import constants
from pitstop.cli.errors import CLIError, refused
from pitstop.cluster.kubeconfig import load_configuration, resolve_source
from pitstop.instances import contract
from pitstop.models import Phase

C = constants
G, V, P = C.GROUP, C.VERSION, C.NODEREPAIR_PLURAL

REASON_BREAK_GLASS = "BreakGlass"
"""The reason of a gate this command opened (the operator's own is NodeInService)."""
CLOSABLE_PHASES = frozenset({None, Phase.PENDING, Phase.CORDONING})
"""Phases of a node's repair before any gate of it is closed: a gate there is safe to
open (the repair closes it itself when it deregisters)."""
WORKERS = 8
"""Writes in flight at once: a burst of thousands of pods is opened in seconds, not
minutes, without flooding the API server of a cluster already in trouble."""
ATTEMPTS = 3
"""A pod that changed under a write is judged again at most this often."""


@dataclass(frozen=True)
class Verdict:
    """What the break-glass does with one pod: `open` it, leave it `held` (a repair
    closed or may close its gate) or `skip` it (nothing to do); `why` says so."""

    action: str
    why: str


def verdict(
    pod: Mapping[str, Any],
    node: Mapping[str, Any] | None,
    repairs: Mapping[str, str | None] | None,
) -> Verdict:
    """The operator's rule (`instances.serving.wants_serving`) for a pod whose node may
    be locked: `repairs` maps each NodeRepair's name to its phase (None: no status
    yet); None when the caller may not read them (then every locked node holds)."""
    if not contract.has_serving_gate(pod):
        return Verdict("skip", "no serving gate")
    if contract.serving_status(pod) == "True":
        return Verdict("skip", "open already")
    if contract.is_terminating(pod) or not contract.is_instance(pod):
        return Verdict("skip", "terminating or finished")
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name:
        return Verdict("skip", "not scheduled yet")
    if node is None:
        return Verdict("skip", f"node {node_name} does not exist")
    holder = ((node.get("metadata") or {}).get("annotations") or {}).get(C.ANNOTATION_REPAIR)
    if not holder:
        return Verdict("open", f"node {node_name}")
    if repairs is None:
        return Verdict("held", f"node {node_name} is locked by NodeRepair {holder}")
    if holder not in repairs:  # force-deleted: the operator's orphan sweep reopens it
        return Verdict("open", f"node {node_name}, lock of a deleted NodeRepair {holder}")
    phase = repairs[holder]
    if phase in CLOSABLE_PHASES:
        return Verdict("open", f"node {node_name}, NodeRepair {holder} {phase or 'Pending'}")
    return Verdict(
        "held",
        f"node {node_name} is under NodeRepair {holder} ({phase}), past deregistration",
    )


def api(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    configuration = load_configuration(resolve_source(kubeconfig, os.environ, context))
    configuration.connection_pool_maxsize = WORKERS
    return client.ApiClient(configuration)


@dataclass
class World:
    """The nodes and repairs the verdicts are judged against, as listed."""

    nodes: dict[str, dict[str, Any]]
    repairs: dict[str, str | None] | None


def read_world(api_client: client.ApiClient) -> World:
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    try:
        listed = core.list_node(_preload_content=False)
    except ApiException as e:
        raise refused(e, "cannot list nodes") from e
    nodes = {n["metadata"]["name"]: n for n in json.loads(listed.data)["items"]}
    repairs: dict[str, str | None] | None
    try:
        items = custom.list_cluster_custom_object(G, V, P).get("items") or []
        repairs = {r["metadata"]["name"]: (r.get("status") or {}).get("phase") for r in items}
    except ApiException as e:
        if e.status not in (403, 404):
            raise refused(e, "cannot list NodeRepairs") from e
        repairs = None  # unknown: every locked node holds
    return World(nodes, repairs)


def read_node_world(api_client: client.ApiClient, node_name: str | None) -> World:
    """The one node a changed pod is on, and the repair that holds it, read now: a
    pod changed under a write is judged again on fresh state, without listing every
    node of a cluster in trouble again."""
    if not node_name:
        return World({}, {})
    core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
    try:
        node: dict[str, Any] = json.loads(core.read_node(node_name, _preload_content=False).data)
    except ApiException as e:
        if e.status == 404:
            return World({}, {})
        raise refused(e, f"cannot read node {node_name}") from e
    holder = ((node.get("metadata") or {}).get("annotations") or {}).get(C.ANNOTATION_REPAIR)
    repairs: dict[str, str | None] | None = {}
    if holder:
        try:
            repair = custom.get_cluster_custom_object(G, V, P, holder)
            repairs = {holder: (repair.get("status") or {}).get("phase")}
        except ApiException as e:
            if e.status == 403:
                repairs = None  # unknown: the locked node holds
            elif e.status != 404:
                raise refused(e, f"cannot read NodeRepair {holder}") from e
    return World({node_name: node}, repairs)


def list_pods(api_client: client.ApiClient, namespace: str | None) -> list[dict[str, Any]]:
    core = client.CoreV1Api(api_client)
    try:
        if namespace:
            listed = core.list_namespaced_pod(namespace, _preload_content=False)
        else:
            listed = core.list_pod_for_all_namespaces(_preload_content=False)
    except ApiException as e:
        raise refused(e, f"cannot list pods{f' in {namespace}' if namespace else ''}") from e
    items: list[dict[str, Any]] = json.loads(listed.data)["items"]
    return [p for p in items if contract.has_serving_gate(p)]


def read_pod(api_client: client.ApiClient, key: str) -> dict[str, Any] | None:
    ns, name = key.split("/", 1)
    try:
        got = client.CoreV1Api(api_client).read_namespaced_pod(name, ns, _preload_content=False)
    except ApiException as e:
        if e.status == 404:
            return None
        raise refused(e, f"cannot read pod {key}") from e
    pod: dict[str, Any] = json.loads(got.data)
    return pod


def patch_open(api_client: client.ApiClient, pod: Mapping[str, Any], now: datetime) -> None:
    """The condition True, as the operator writes it, on the pod as listed (its
    resourceVersion: the API server refuses the write with 409 if it changed)."""
    meta = pod["metadata"]
    body = {
        "metadata": {"resourceVersion": meta["resourceVersion"]},
        "status": {
            "conditions": [
                {
                    "type": C.CONDITION_SERVING,
                    "status": "True",
                    "reason": REASON_BREAK_GLASS,
                    "message": "opened by `pitstop gate open`: its node is not past deregistration",
                    "lastProbeTime": None,
                    "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            ]
        },
    }
    client.CoreV1Api(api_client).patch_namespaced_pod_status(meta["name"], meta["namespace"], body)


@dataclass(frozen=True)
class Outcome:
    key: str
    action: str
    """opened, held, skipped, failed (or, with --dry-run, would open)."""
    why: str


def open_one(
    api_client: client.ApiClient,
    pod: dict[str, Any],
    world: World,
    dry_run: bool,
    reread: Callable[[str | None], World],
) -> Outcome:
    """Judge the pod and open it if the verdict says so; a pod changed since it was
    read is read again with its node and repairs and judged again."""
    key = contract.key(pod)
    for _ in range(ATTEMPTS):
        node_name = (pod.get("spec") or {}).get("nodeName")
        v = verdict(pod, world.nodes.get(node_name) if node_name else None, world.repairs)
        if v.action != "open":
            return Outcome(key, "held" if v.action == "held" else "skipped", v.why)
        if dry_run:
            return Outcome(key, "would open", v.why)
        try:
            patch_open(api_client, pod, datetime.now(UTC))
            return Outcome(key, "opened", v.why)
        except ApiException as e:
            if e.status == 404:
                return Outcome(key, "skipped", "gone")
            if e.status != 409:
                return Outcome(key, "failed", str(refused(e, "cannot patch pods/status")))
        try:
            fresh = read_pod(api_client, key)
            if fresh is None:
                return Outcome(key, "skipped", "gone")
            world = reread((fresh.get("spec") or {}).get("nodeName"))
        except CLIError as e:
            return Outcome(key, "failed", str(e))
        pod = fresh
    return Outcome(key, "failed", f"changed under {ATTEMPTS} writes in a row; run again")


def open_gates(
    api_client: client.ApiClient,
    pods: Iterable[dict[str, Any]],
    world: World,
    dry_run: bool = False,
) -> list[Outcome]:
    def reread(node_name: str | None) -> World:
        return read_node_world(api_client, node_name)

    todo = [p for p in pods if verdict_needed(p)]
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda p: open_one(api_client, p, world, dry_run, reread), todo))


def is_gated(pod: Mapping[str, Any]) -> bool:
    return contract.has_serving_gate(pod)


def verdict_needed(pod: Mapping[str, Any]) -> bool:
    """A gated pod whose gate is not open: the only ones a line is printed for."""
    return contract.has_serving_gate(pod) and contract.serving_status(pod) != "True"


def report(outcomes: Sequence[Outcome]) -> tuple[str, bool]:
    """The lines to print (held pods first: they are what the caller must know about)
    and whether every pod that should open did."""
    order = {"held": 0, "failed": 1, "opened": 2, "would open": 2, "skipped": 3}
    lines = [
        f"{o.action:<10} {o.key}: {o.why}"
        for o in sorted(outcomes, key=lambda o: (order[o.action], o.key))
    ]
    counts = {a: sum(1 for o in outcomes if o.action == a) for a in order}
    done = "would open" if counts["would open"] else "opened"
    lines.append(
        f"{counts[done]} {done}, {counts['held']} held (a repair past deregistration), "
        f"{counts['skipped']} skipped, {counts['failed']} failed"
    )
    return "\n".join(lines), counts["failed"] == 0
