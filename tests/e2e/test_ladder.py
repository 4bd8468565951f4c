"""The repair ladder (repair.steps) on the real control plane, as the operator's own
ServiceAccount: a ladder that escalates step by step with the status and Events a
user follows; a runOnNode Job; the Replace step against Cluster API Machines; the
External step against a remediator's CRDs.

No Cluster API controllers and no remediator run here: the Machine CRD installed
below is a minimal one of the cluster.x-k8s.io Machine shape (group, version, kind,
the fields pitstop reads), and the test plays the MachineSet controller (a new
Machine and its new Node when the old Machine is deleted) and the remediator (the
CR's Succeeded condition) itself. The platform admin's grants (docs/security.md)
are made by the test as the admin: the labels on the Machine and the template,
and the pitstop-remediators ClusterRole bound in the test's namespace."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e import remediations as rem
from tests.e2e.helpers import cond, make_pool, repair_events, wait_event
from tests.e2e.kube import Cluster, wait_until
from tests.e2e.operator import Operator
from tests.e2e.repairs import Repairs
from tests.e2e.test_cli import pitstop
from tests.e2e.test_repair import (
    NS,
    VERIFY,
    heal,
    inject,
    job_repair,
    jobs_of,
    mark,
)
from tests.e2e.webhook_server import Reply, WebhookServer

pytestmark = pytest.mark.e2e

CAPI = ("cluster.x-k8s.io", "v1beta1", "machines")
REMEDY = ("remediation.e2e.pitstop.dev", "v1alpha1")
SET_LABEL = "cluster.x-k8s.io/set-name"
READY = {"stableSeconds": 1, "timeoutSeconds": 10}
"""Verification of a node no fault was injected into: Ready=True (the default)."""


def step(strategy: str, **more: Any) -> dict[str, Any]:
    return {"strategy": strategy, **more}


def job_step(node: str, **more: Any) -> dict[str, Any]:
    found = job_repair(node, **more)
    return {k: v for k, v in found.items() if k != "strategy"} | {"strategy": "Job"}


def crd(group: str, kind: str, plural: str, version: str = "v1alpha1") -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def install_crd(cluster: Cluster, body: dict[str, Any]) -> None:
    ext = client.ApiextensionsV1Api(cluster.api)
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as e:
        if e.status != 409:
            raise

    def established() -> bool:
        found = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(
            c.type == "Established" and c.status == "True" for c in found.status.conditions or []
        )

    wait_until(f"CRD {body['metadata']['name']} established", established, timeout=30)
    group, version = body["spec"]["group"], body["spec"]["versions"][0]["name"]
    plural = body["spec"]["names"]["plural"]
    wait_until(
        f"{plural} served",
        lambda: _served(cluster, group, version, plural),
        timeout=30,
    )


def _served(cluster: Cluster, group: str, version: str, plural: str) -> bool:
    try:
        cluster.custom.list_cluster_custom_object(group, version, plural)
    except ApiException:
        return False
    return True


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace where the platform admin lets pitstop use remediators: the shipped
    pitstop-remediators ClusterRole bound to pitstop's ServiceAccount there."""
    name = f"capi-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    cluster.kubectl(
        "-n",
        name,
        "create",
        "rolebinding",
        "pitstop-remediators",
        "--clusterrole=pitstop-remediators",
        f"--serviceaccount={NS}:pitstop",
    )
    yield name
    cluster.core.delete_namespace(name)


def own_node(cluster: Cluster, name: str, **annotations: str) -> str:
    """A kwok node made by the test (not the pool fixture: a Replace deletes it)."""
    cluster.create_node(name, {"pool": "ladder"})
    if annotations:
        cluster.core.patch_node(name, {"metadata": {"annotations": annotations}})
    wait_until(f"node {name} Ready", lambda: cluster.node_ready(name), timeout=30)
    wait_until(
        f"node {name} untainted",
        lambda: not cluster.core.read_node(name).spec.taints,
        timeout=30,
    )
    return name


def delete_node(cluster: Cluster, name: str) -> None:
    try:
        cluster.core.delete_node(name)
    except ApiException as e:
        if e.status != 404:
            raise


def step_events(cluster: Cluster, repair: str) -> list[tuple[str, str]]:
    wanted = ("RepairStepStarted", "RepairStepFailed", "RepairStepSkipped")
    found = [e for e in repair_events(cluster, repair) if e.reason in wanted]
    found.sort(key=lambda e: (e.first_timestamp or e.event_time or 0, e.metadata.name))
    return [(e.reason, e.message) for e in found]


# --- the ladder ---


def test_three_steps_walk_the_ladder_with_status_and_events(
    cluster: Cluster, pool: Any, repairs: Repairs
) -> None:
    """A failing Job, a Webhook that only ever answers Running (its step times out),
    then Manual: each step starts when the previous one failed, status names the step,
    its attempts and why the last was left, and each step posts its Events."""
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    with WebhookServer(lambda req, i: Reply(body={"status": "Running"})) as server:
        hook = {"url": server.url, "timeoutSeconds": 2, "allowInsecureHTTP": True}
        name = repairs.create(
            node,
            repair={
                "steps": [
                    {"name": "reset", **job_step(node, exit_code=1, timeout=30)},
                    step("Webhook", name="reboot", webhook=hook, timeoutSeconds=4),
                    step("Manual", timeoutSeconds=120),
                ]
            },
            verify=VERIFY,
        )
        status: dict[str, Any] = wait_until(
            f"{name} at step 3",
            lambda: (s := repairs.status(name)).get("repair", {}).get("step") == 3 and s,
            timeout=60,
        )
        calls = list(server.requests)
    rs = status["repair"]
    report = (status, step_events(cluster, name))
    assert status["phase"] == "Repairing", report
    assert (rs["steps"], rs["stepName"], rs["attempts"]) == (3, "Manual", 1), report
    assert rs["movedOn"] == "step 2 of 3: reboot (Webhook) failed: attempt 1 timed out after 4s"
    assert "step 3 of 3: Manual" in status["message"], report
    assert cond(status, "Repaired")["reason"] == "RepairStarted"
    # The webhook step was called as step 2 once, then polled; never re-sent.
    assert calls and calls[0].body["step"] == 2 and calls[0].body["poll"] is False
    assert all(c.body["poll"] for c in calls[1:]), [c.body for c in calls]
    # The Job step's Job ran once and failed.
    assert [j.metadata.name for j in jobs_of(cluster, name)] == [f"pitstop-{name}-1"]

    # One Event per step started, one per step left (kopf posts them a moment later).
    events: list[tuple[str, str]] = wait_until(
        "3 RepairStepStarted and 2 RepairStepFailed Events",
        lambda: (
            (e := step_events(cluster, name))
            and [r for r, _ in e].count("RepairStepStarted") == 3
            and [r for r, _ in e].count("RepairStepFailed") == 2
            and e
        ),
        timeout=20,
    )
    started = sorted(m for r, m in events if r == "RepairStepStarted")
    failed = sorted(m for r, m in events if r == "RepairStepFailed")
    assert started[0] == "Repair step 1 of 3: reset (Job)", events
    assert started[1].startswith(
        f"Repair step 2 of 3: reboot (Webhook) (after step 1 of 3: reset (Job) failed: Job"
        f" pitstop-{name}-1 failed"
    ), events
    assert started[2] == (
        "Repair step 3 of 3: Manual (after step 2 of 3: reboot (Webhook) failed:"
        " attempt 1 timed out after 4s)"
    ), events
    assert failed[0].startswith(f"step 1 of 3: reset (Job) failed: Job pitstop-{name}-1 failed")
    assert failed[0].endswith("; next: step 2 of 3: reboot (Webhook)")
    assert failed[1] == (
        "step 2 of 3: reboot (Webhook) failed: attempt 1 timed out after 4s;"
        " next: step 3 of 3: Manual"
    )

    # `pitstop status -o wide` shows the ladder and the running step.
    out = pitstop(cluster, "status", name, "-o", "wide")
    assert out.returncode == 0, out.stderr
    row = out.stdout.splitlines()[1]
    assert "Job>Webhook>Manual" in row and "3/3:Manual#1" in row, out.stdout

    # The last step is the human's: the repair ends as a Manual one does.
    heal(cluster, node)
    mark(cluster, name, "true")
    done = repairs.wait_phase(name, "Succeeded", "Failed", timeout=30)
    assert done["phase"] == "Succeeded", done
    assert cond(done, "Repaired")["message"] == "declared repaired by a human"


def test_the_last_step_failing_fails_the_repair(
    cluster: Cluster, pool: Any, repairs: Repairs
) -> None:
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    name = repairs.create(
        node,
        repair={
            "steps": [
                step("Manual", timeoutSeconds=2),
                {**job_step(node, exit_code=1), "maxAttempts": 2},
            ]
        },
        verify=VERIFY,
        onFailure="Uncordon",
    )
    status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=60)
    rs = status["repair"]
    assert status["phase"] == "Failed", status
    assert (rs["step"], rs["attempts"]) == (2, 2), status
    assert rs["movedOn"] == "step 1 of 2: Manual failed: attempt 1 timed out after 2s"
    assert "(attempt 2 of 2, step 2 of 2: Job)" in status["message"], status
    assert sorted(j.metadata.name for j in jobs_of(cluster, name)) == [
        f"pitstop-{name}-s2a1",
        f"pitstop-{name}-s2a2",
    ]
    wait_event(cluster, name, "RepairFailed")


def test_operator_killed_mid_ladder_resumes_at_the_same_step(
    cluster: Cluster, pool: Any, repairs: Repairs, running_operator: Operator
) -> None:
    """Invariant 6: killed while step 2 (a Webhook) runs, the operator resumes at
    step 2, attempt 1: the step's call is only polled, never sent anew, and step 1's
    Job is never run again; then the ladder goes on."""
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    with WebhookServer(lambda req, i: Reply(body={"status": "Running"})) as server:
        hook = {"url": server.url, "timeoutSeconds": 2, "allowInsecureHTTP": True}
        name = repairs.create(
            node,
            repair={
                "steps": [
                    job_step(node, exit_code=1, timeout=30),
                    step("Webhook", webhook=hook, timeoutSeconds=25),
                    step("Manual", timeoutSeconds=120),
                ]
            },
            verify=VERIFY,
        )
        server.wait_requests(1, timeout=60)
        running_operator.kill()
        before = len(server.requests)
        status = repairs.status(name)
        assert (status["repair"]["step"], status["repair"]["attempts"]) == (2, 1), status
        time.sleep(0.5)
        running_operator.start()
        moved: dict[str, Any] = wait_until(
            f"{name} at step 3",
            lambda: (s := repairs.status(name)).get("repair", {}).get("step") == 3 and s,
            timeout=60,
        )
        calls = [r.body for r in server.requests]
    assert len(calls) > before, "the restarted operator polled the running step"
    assert [(c["step"], c["attempt"], c["poll"]) for c in calls][:1] == [(2, 1, False)]
    assert all((c["step"], c["attempt"], c["poll"]) == (2, 1, True) for c in calls[1:]), calls
    assert "attempt 1 timed out after 25s" in moved["repair"]["movedOn"], moved
    assert [j.metadata.name for j in jobs_of(cluster, name)] == [f"pitstop-{name}-1"]


# --- runOnNode ---


def test_a_run_on_node_job_lands_on_the_node_it_repairs(
    cluster: Cluster, pool: Any, repairs: Repairs
) -> None:
    """Its template names no node: the affinity pitstop adds puts its pod on the
    cordoned, tainted node under repair (of two the scheduler could choose), with
    the node's name in its environment."""
    nodes = make_pool(cluster, pool, count=2).names
    node = nodes[1]
    job = job_repair(node, exit_code=0)
    del job["job"]["template"]["spec"]["template"]["spec"]["nodeSelector"]
    job["job"]["runOnNode"] = True
    name = repairs.create(node, repair={"steps": [{**job, "name": "on-node"}]}, verify=READY)
    status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=60)
    assert status["phase"] == "Succeeded", status
    (job_obj,) = jobs_of(cluster, name)
    pods = cluster.core.list_namespaced_pod(NS, label_selector=f"job-name={job_obj.metadata.name}")
    assert [p.spec.node_name for p in pods.items] == [node], [p.spec for p in pods.items]
    env = {e.name: e.value for e in pods.items[0].spec.containers[0].env}
    assert env["PITSTOP_NODE_NAME"] == node
    terms = pods.items[0].spec.affinity.node_affinity
    fields = terms.required_during_scheduling_ignored_during_execution.node_selector_terms
    assert [f.match_fields[0].values for f in fields] == [[node]]


# --- Replace ---


def test_replace_is_skipped_where_there_is_no_machine(cluster: Cluster, repairs: Repairs) -> None:
    """Runs before the Machine CRD is installed (this file's order): a node without
    Cluster API's annotation, and one with it but no Machine CRD, each skip their
    Replace step with the reason in status, and the ladder moves on."""
    plain = own_node(cluster, f"plain-{uuid.uuid4().hex[:6]}")
    annotated = own_node(
        cluster,
        f"capi-{uuid.uuid4().hex[:6]}",
        **{"cluster.x-k8s.io/machine": "m-1", "cluster.x-k8s.io/cluster-namespace": "capi"},
    )
    try:
        if _served(cluster, *CAPI):
            pytest.skip("the Machine CRD is installed already (test order)")
        ladder = {"steps": [step("Replace", timeoutSeconds=60), step("Manual", timeoutSeconds=60)]}
        names = [repairs.create(n, repair=ladder, verify=VERIFY) for n in (plain, annotated)]
        for name, why in zip(
            names,
            ["has no cluster.x-k8s.io/machine annotation", "Cluster API Machines"],
            strict=True,
        ):
            status = wait_until(
                f"{name} at step 2",
                lambda n=name: (s := repairs.status(n)).get("repair", {}).get("step") == 2 and s,
                timeout=30,
            )
            assert why in status["repair"]["movedOn"], status
            skipped = wait_event(cluster, name, "RepairStepSkipped")
            assert why in skipped[0].message
            assert skipped[0].message.endswith("; next: step 2 of 2: Manual")
            repairs.delete(name)
    finally:
        for n in (plain, annotated):
            delete_node(cluster, n)


@pytest.fixture
def machines(cluster: Cluster) -> Cluster:
    rem.ensure_machine_crd(cluster)
    return cluster


def machine(name: str, ns: str, node: str, allowed: bool = True) -> dict[str, Any]:
    labels = {SET_LABEL: "md-a", "cluster.x-k8s.io/cluster-name": "c1"}
    if allowed:
        labels["pitstop.dev/replace-allowed"] = "true"
    return {
        "apiVersion": "cluster.x-k8s.io/v1beta1",
        "kind": "Machine",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"clusterName": "c1"},
        "status": {"nodeRef": {"kind": "Node", "name": node}},
    }


def create_machine(cluster: Cluster, ns: str, body: dict[str, Any]) -> None:
    """Created, then its status written through the status subresource, as Cluster
    API's controllers do (a create ignores status where the CRD has the subresource)."""
    status = body.pop("status")
    made = cluster.custom.create_namespaced_custom_object(*CAPI[:2], ns, CAPI[2], body)
    cluster.custom.patch_namespaced_custom_object_status(
        *CAPI[:2], ns, CAPI[2], made["metadata"]["name"], {"status": status}
    )


class MachineSet:
    """Plays Cluster API's MachineSet (and infrastructure) controller: when the
    Machine `old` is deleted, it deletes its node and creates a new Machine of the
    same set with a new Node."""

    def __init__(self, cluster: Cluster, ns: str, old: str, old_node: str):
        self.cluster, self.ns, self.old, self.old_node = cluster, ns, old, old_node
        self.new_node = f"{old_node}-r"
        self.replaced = threading.Event()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MachineSet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        delete_node(self.cluster, self.new_node)
        if self.error is not None and exc[0] is None:
            raise AssertionError(f"machine set failed: {self.error!r}")

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and not self.replaced.is_set():
                try:
                    self.cluster.custom.get_namespaced_custom_object(
                        *CAPI[:2], self.ns, CAPI[2], self.old
                    )
                except ApiException as e:
                    if e.status != 404:
                        raise
                    delete_node(self.cluster, self.old_node)
                    own_node(self.cluster, self.new_node)
                    create_machine(
                        self.cluster, self.ns, machine(f"{self.old}-r", self.ns, self.new_node)
                    )
                    self.replaced.set()
                time.sleep(0.2)
        except BaseException as e:  # reported by __exit__
            self.error = e


def test_replace_deletes_the_machine_and_waits_for_a_new_ready_node(
    machines: Cluster, namespace: str, repairs: Repairs
) -> None:
    cluster = machines
    node = own_node(
        cluster,
        f"m-{uuid.uuid4().hex[:6]}",
        **{"cluster.x-k8s.io/machine": "m-old", "cluster.x-k8s.io/cluster-namespace": namespace},
    )
    create_machine(cluster, namespace, machine("m-old", namespace, node))
    # A peer Machine of the pool that was Ready before: not a replacement.
    create_machine(cluster, namespace, machine("m-peer", namespace, "some-ready-node"))
    with MachineSet(cluster, namespace, "m-old", node) as capi:
        name = repairs.create(
            node, repair={"steps": [step("Replace", timeoutSeconds=60)]}, verify=VERIFY
        )
        status = repairs.wait_phase(name, "Succeeded", "Failed", timeout=60)
        assert capi.replaced.is_set()
    report = (status, [(e.reason, e.message) for e in repair_events(cluster, name)])
    assert status["phase"] == "Succeeded", report
    replace = status["repair"]["replace"]
    assert replace["machine"] == f"{namespace}/m-old" and replace["pool"] == f"{SET_LABEL}=md-a"
    assert replace["replacement"] == capi.new_node, report
    for type_ in ("Repaired", "Verified", "Uncordoned"):
        assert cond(status, type_)["reason"] == "NodeReplaced", report
    assert f"node {capi.new_node} is Ready" in status["message"]
    wait_event(cluster, name, "NodeReplaced", type_="Normal")


def test_replace_is_refused_without_the_admins_grant(
    machines: Cluster, namespace: str, repairs: Repairs
) -> None:
    """A Machine the admin did not label pitstop.dev/replace-allowed is not deleted;
    nor one in a namespace where pitstop-remediators is not bound."""
    cluster = machines
    unbound = f"capi-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=unbound)))
    made = []
    try:
        cases = [(namespace, False, "ReplaceNotAllowed"), (unbound, True, "ReplaceNotAllowed")]
        for ns, labelled, reason in cases:
            node = own_node(
                cluster,
                f"m-{uuid.uuid4().hex[:6]}",
                **{"cluster.x-k8s.io/machine": "m-x", "cluster.x-k8s.io/cluster-namespace": ns},
            )
            made.append(node)
            create_machine(cluster, ns, machine("m-x", ns, node, allowed=labelled))
            name = repairs.create(
                node,
                repair={"steps": [step("Replace", timeoutSeconds=60)]},
                verify=VERIFY,
                onFailure="Uncordon",
            )
            status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=30)
            assert status["phase"] == "Failed", status
            assert reason in status["repair"]["lastError"], status
            # The Machine is still there.
            cluster.custom.get_namespaced_custom_object(*CAPI[:2], ns, CAPI[2], "m-x")
    finally:
        for n in made:
            delete_node(cluster, n)
        cluster.core.delete_namespace(unbound)


# --- External ---


@pytest.fixture
def remediator(cluster: Cluster) -> Iterator[Cluster]:
    """A remediator's CRDs (a template kind and the kind it yields) and the admin's
    ClusterRole that aggregates the rights on them into pitstop-remediators."""
    install_crd(cluster, crd(REMEDY[0], "RebootTemplate", "reboottemplates"))
    install_crd(cluster, crd(REMEDY[0], "Reboot", "reboots"))
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": "pitstop-e2e-reboots",
            "labels": {"pitstop.dev/aggregate-to-remediators": "true"},
        },
        "rules": [
            {"apiGroups": [REMEDY[0]], "resources": ["reboottemplates"], "verbs": ["get"]},
            {
                "apiGroups": [REMEDY[0]],
                "resources": ["reboots"],
                "verbs": ["get", "create", "delete"],
            },
        ],
    }
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    try:
        rbac.create_cluster_role(role)
    except ApiException as e:
        if e.status != 409:
            raise

    def aggregated() -> bool:
        rules = rbac.read_cluster_role("pitstop-remediators").rules or []
        return any("reboots" in (r.resources or []) for r in rules)

    wait_until("the reboot rights aggregated into pitstop-remediators", aggregated, timeout=30)
    yield cluster


def template(ns: str, name: str, allowed: bool) -> dict[str, Any]:
    labels = {"pitstop.dev/remediator-allowed": "true"} if allowed else {}
    return {
        "apiVersion": "/".join(REMEDY),
        "kind": "RebootTemplate",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"template": {"spec": {"strategy": "Soft"}}},
    }


def external(ns: str, name: str) -> dict[str, Any]:
    ref = {"apiVersion": "/".join(REMEDY), "kind": "RebootTemplate", "namespace": ns, "name": name}
    return step("External", timeoutSeconds=60, external={"templateRef": ref})


def test_external_creates_the_remediation_and_waits_for_succeeded(
    remediator: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    cluster = remediator
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    cluster.custom.create_namespaced_custom_object(
        *REMEDY, namespace, "reboottemplates", template(namespace, "soft", True)
    )
    name = repairs.create(node, repair={"steps": [external(namespace, "soft")]}, verify=VERIFY)
    cr: dict[str, Any] = wait_until(
        f"Reboot {node} created",
        lambda: _get(cluster, namespace, "reboots", node),
        timeout=60,
    )
    meta = cr["metadata"]
    assert cr["spec"] == {"strategy": "Soft"}, cr
    assert meta["annotations"]["remediation.medik8s.io/node-name"] == node
    assert meta["annotations"]["pitstop.dev/attempt"] == "1/1"
    assert meta["ownerReferences"][0]["name"] == name
    # The CR is made first, then recorded in status (a restart in between finds it
    # again by name and attempt): the record follows within the same pass.
    status = wait_until(
        "the CR recorded in status",
        lambda: (s := repairs.status(name)).get("repair", {}).get("external") and s,
        timeout=20,
    )
    assert status["repair"]["external"] == {
        "apiVersion": "/".join(REMEDY),
        "kind": "Reboot",
        "resource": "reboots",
        "namespace": namespace,
        "name": node,
    }, status
    assert status["phase"] == "Repairing"
    # The remediator reboots the node and reports Succeeded.
    heal(cluster, node)
    cr["status"] = {
        "conditions": [
            {"type": "Processing", "status": "False", "reason": "Done"},
            {"type": "Succeeded", "status": "True", "reason": "Rebooted"},
        ]
    }
    cluster.custom.replace_namespaced_custom_object(*REMEDY, namespace, "reboots", node, cr)
    done = repairs.wait_phase(name, "Succeeded", "Failed", timeout=60)
    assert done["phase"] == "Succeeded", done
    assert cond(done, "Repaired")["message"] == f"Reboot {node} succeeded: Rebooted"
    # The remediator's work on the node ends with the attempt: pitstop deletes its CR.
    wait_until(
        f"Reboot {node} deleted", lambda: not _get(cluster, namespace, "reboots", node), timeout=20
    )


def test_external_is_refused_without_the_admins_label(
    remediator: Cluster, namespace: str, pool: Any, repairs: Repairs
) -> None:
    cluster = remediator
    node = make_pool(cluster, pool).names[0]
    inject(cluster, node)
    cluster.custom.create_namespaced_custom_object(
        *REMEDY, namespace, "reboottemplates", template(namespace, "unmarked", False)
    )
    name = repairs.create(
        node,
        repair={"steps": [external(namespace, "unmarked"), step("Manual", timeoutSeconds=60)]},
        verify=VERIFY,
    )
    status = wait_until(
        f"{name} at step 2",
        lambda: (s := repairs.status(name)).get("repair", {}).get("step") == 2 and s,
        timeout=60,
    )
    assert "ExternalRemediationNotAllowed" in status["repair"]["movedOn"], status
    assert "pitstop.dev/remediator-allowed=true" in status["repair"]["movedOn"]
    assert not _get(cluster, namespace, "reboots", node), "nothing was created"


def _get(cluster: Cluster, ns: str, plural: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = cluster.custom.get_namespaced_custom_object(
            *REMEDY, ns, plural, name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return found
