"""pitstop as the external remediator of NodeHealthCheck and MachineHealthCheck, on
the real control plane with the operator's own ServiceAccount.

CONTRACT-DRIVEN: the checkers themselves do not run here. medik8s
node-healthcheck-operator is refused by the Go module proxy (403 "This module version
is not available", for @latest and @v0.9.0); Cluster API's MachineHealthCheck does
build and runs in tests/e2e/test_remediation_capi.py. So these tests take the
checker's steps as its documentation states them (tests/e2e/remediations.py):
create the remediation object from pitstop's template as NHC would (named after the
node, owned by a NodeHealthCheck, annotated) or as MHC would (named after a Machine
that owns it), wait on the conditions NHC reads, and delete the object once the node
is healthy. A human stands in for the Manual repair (`pitstop.dev/repaired=true`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e import remediations as rem
from tests.e2e.helpers import make_pool, node_pods
from tests.e2e.kube import Cluster, Pool, wait_until
from tests.e2e.operator import Operator
from tests.e2e.policies_helpers import DEADLOCK, heal, inject
from tests.e2e.repairs import GROUP, PLURAL, VERSION, node_markers
from tests.e2e.workloads import deployment, running_pods

pytestmark = pytest.mark.e2e

REPAIRED = "pitstop.dev/repaired"
RELEASED = {"unschedulable": False, "taint": False, "lock": None}
SPEC: dict[str, Any] = {
    "drain": {"taskTimeoutSeconds": 60},
    "repair": {"strategy": "Manual", "timeoutSeconds": 600},
    "verify": {
        "conditions": [{"type": "Ready", "status": "True"}, {"type": DEADLOCK, "status": "False"}],
        "stableSeconds": 1,
        "timeoutSeconds": 30,
    },
}


@pytest.fixture
def checks(cluster: Cluster, namespace: str, running_operator: Operator) -> Iterator[str]:
    """The namespace of the test's template and remediation objects, allowed by the
    admin; its remediation objects (and so their NodeRepairs) are deleted after it."""
    rem.allow(cluster, namespace)
    yield namespace
    running_operator.ensure_running()
    for obj in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, rem.PLURAL)[
        "items"
    ]:
        rem.delete(cluster, namespace, obj["metadata"]["name"])
    wait_until(
        f"remediations of {namespace} gone",
        lambda: (
            not cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, rem.PLURAL)[
                "items"
            ]
        ),
        timeout=60,
    )


def node_repair(cluster: Cluster, obj: dict[str, Any]) -> dict[str, Any]:
    """The one NodeRepair the remediation object made (found by its uid label)."""
    uid = obj["metadata"]["uid"]
    found: list[dict[str, Any]] = wait_until(
        f"NodeRepair of {obj['metadata']['name']}",
        lambda: rem.node_repairs_of(cluster, uid),
        timeout=30,
    )
    assert len(found) == 1, found
    return found[0]


def repair_phase(cluster: Cluster, name: str) -> str | None:
    obj = cluster.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    return (obj.get("status") or {}).get("phase")


def wait_repair_phase(cluster: Cluster, name: str, *phases: str, timeout: float = 60) -> None:
    wait_until(
        f"{name} in {phases}", lambda: repair_phase(cluster, name) in phases, timeout=timeout
    )


def repaired(cluster: Cluster, name: str) -> None:
    cluster.custom.patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, name, {"metadata": {"annotations": {REPAIRED: "true"}}}
    )


def repair_gone(cluster: Cluster, uid: str) -> bool:
    return not rem.node_repairs_of(cluster, uid)


def events_on(cluster: Cluster, namespace: str, name: str) -> set[str]:
    found = cluster.core.list_namespaced_event(
        namespace,
        field_selector=f"involvedObject.kind={rem.KIND},involvedObject.name={name}",
    ).items
    return {e.reason for e in found}


def test_nhc_contract_drives_a_full_gentle_repair(
    cluster: Cluster, pool: Callable[[int], Pool], checks: str
) -> None:
    """NHC's whole round: an unhealthy node gets a remediation object; pitstop cordons
    it and evicts its instances (Processing=True, Succeeded=Unknown while it runs),
    repairs and verifies it (Succeeded=True, Processing=False, never
    PermanentNodeDeletionExpected), and NHC deleting the object once the node is
    healthy leaves nothing behind."""
    p = make_pool(cluster, pool, 2)
    node = p.names[0]
    cluster.apps.create_namespaced_deployment(checks, deployment("fn", 4, p.selector))
    before = {x.metadata.name for x in running_pods(cluster, checks, "fn", 4)}
    on_node = {x.metadata.name for x in node_pods(cluster, checks, node)}
    assert on_node, "the spread puts instances on the faulty node"

    tmpl = rem.template(cluster, checks, "gentle", SPEC)
    nhc = rem.nodehealthcheck(cluster, f"nhc-{uuid.uuid4().hex[:6]}", p.selector, tmpl)
    inject(cluster, node)
    obj = rem.create_as_nhc(cluster, nhc, tmpl, node)

    nr = node_repair(cluster, obj)
    assert nr["spec"]["nodeName"] == node
    assert nr["metadata"]["annotations"]["pitstop.dev/remediation"] == f"{checks}/{node}"
    assert not nr["metadata"].get("ownerReferences")
    name = nr["metadata"]["name"]

    wait_repair_phase(cluster, name, "Repairing")
    running = wait_until(
        "Processing=True/Repairing mirrored",
        lambda: (
            (o := rem.get(cluster, checks, node))
            and rem.conditions(o).get("Processing") == ("True", "Repairing")
            and o
        ),
        timeout=30,
    )
    assert rem.conditions(running)["Succeeded"] == ("Unknown", "Repairing")
    assert rem.conditions(running)["PermanentNodeDeletionExpected"] == ("False", "NodeKept")
    assert running["status"]["nodeRepair"] == name and running["status"]["nodeName"] == node
    assert node_markers(cluster, node) == {"unschedulable": True, "taint": True, "lock": name}
    left = {x.metadata.name for x in node_pods(cluster, checks, node)}
    assert not (left & on_node), f"instances still on {node}: {left & on_node}"
    assert "NodeRepairCreated" in events_on(cluster, checks, node)

    heal(cluster, node)
    repaired(cluster, name)
    done = rem.wait_conditions(cluster, checks, node, Processing="False", Succeeded="True")
    assert rem.conditions(done)["Succeeded"] == ("True", "RepairSucceeded")
    assert done["status"]["phase"] == "Succeeded"
    assert node_markers(cluster, node) == RELEASED

    # NHC sees the node healthy and deletes the object: the NodeRepair goes with it.
    rem.delete(cluster, checks, node)
    uid = obj["metadata"]["uid"]
    wait_until(
        "remediation and NodeRepair gone",
        lambda: rem.get(cluster, checks, node) is None and repair_gone(cluster, uid),
        timeout=30,
    )
    assert node_markers(cluster, node) == RELEASED
    assert len(running_pods(cluster, checks, "fn", 4)) == 4 and before


def test_deleting_the_object_mid_repair_gives_the_node_back(
    cluster: Cluster, pool: Callable[[int], Pool], checks: str
) -> None:
    """NHC deletes the object while the repair runs (the node recovered on its own,
    or an admin removed it): the object stays until its NodeRepair's finalizer has
    uncordoned the node, untainted it and dropped the lock."""
    p = make_pool(cluster, pool, 2)
    node = p.names[0]
    tmpl = rem.template(cluster, checks, "gentle", SPEC)
    nhc = rem.nodehealthcheck(cluster, f"nhc-{uuid.uuid4().hex[:6]}", p.selector, tmpl)
    inject(cluster, node)
    obj = rem.create_as_nhc(cluster, nhc, tmpl, node)
    name = node_repair(cluster, obj)["metadata"]["name"]
    wait_repair_phase(cluster, name, "Repairing")
    assert node_markers(cluster, node)["unschedulable"]

    rem.delete(cluster, checks, node)
    # The object waits on pitstop's finalizer while the NodeRepair is still there.
    held = rem.get(cluster, checks, node)
    assert held is None or held["metadata"].get("deletionTimestamp")
    uid = obj["metadata"]["uid"]
    wait_until("NodeRepair gone", lambda: repair_gone(cluster, uid), timeout=30)
    wait_until("remediation gone", lambda: rem.get(cluster, checks, node) is None, timeout=30)
    assert node_markers(cluster, node) == RELEASED
    heal(cluster, node)


def test_a_namespace_the_admin_did_not_allow_repairs_nothing(
    cluster: Cluster, namespace: str, running_operator: Operator, pool: Callable[[int], Pool]
) -> None:
    """Rights on a namespace's remediation objects are not rights to drain nodes:
    without the admin's label on the namespace, the object is refused (Succeeded=
    False, so NHC escalates) and no NodeRepair is made."""
    p = make_pool(cluster, pool, 1)
    node = p.names[0]
    tmpl = rem.template(cluster, namespace, "gentle", SPEC)
    nhc = rem.nodehealthcheck(cluster, f"nhc-{uuid.uuid4().hex[:6]}", p.selector, tmpl)
    obj = rem.create_as_nhc(cluster, nhc, tmpl, node)
    try:
        refused = rem.wait_conditions(cluster, namespace, node, Succeeded="False")
        assert rem.conditions(refused)["Succeeded"] == ("False", "NamespaceNotAllowed")
        assert rem.conditions(refused)["Processing"][0] == "False"
        assert "pitstop.dev/remediation-allowed" in refused["status"]["message"]
        assert not rem.node_repairs_of(cluster, obj["metadata"]["uid"])
        assert node_markers(cluster, node) == RELEASED
    finally:
        rem.delete(cluster, namespace, node)
        wait_until("refused object gone", lambda: rem.get(cluster, namespace, node) is None)


def test_a_job_the_admin_did_not_grant_is_refused_before_the_node_is_touched(
    cluster: Cluster, pool: Callable[[int], Pool], checks: str
) -> None:
    """A remediation's template may carry a repair Job, but only within the grants
    in pitstop-system (repair/permits.py), as any NodeRepair: a ServiceAccount the
    admin did not allow fails the repair while Pending, and the object says so."""
    p = make_pool(cluster, pool, 1)
    node = p.names[0]
    job = {
        "template": {
            "spec": {
                "template": {
                    "spec": {
                        "serviceAccountName": "default",
                        "restartPolicy": "Never",
                        "containers": [{"name": "fix", "image": "fake"}],
                    }
                }
            }
        }
    }
    spec = {**SPEC, "repair": {"strategy": "Job", "job": job, "timeoutSeconds": 60}}
    tmpl = rem.template(cluster, checks, "job", spec)
    nhc = rem.nodehealthcheck(cluster, f"nhc-{uuid.uuid4().hex[:6]}", p.selector, tmpl)
    obj = rem.create_as_nhc(cluster, nhc, tmpl, node)
    failed = rem.wait_conditions(cluster, checks, node, Succeeded="False")
    assert rem.conditions(failed)["Succeeded"] == ("False", "RepairFailed")
    assert "not allowed for repair Jobs" in failed["status"]["message"]
    nr = node_repair(cluster, obj)
    conds = {c["type"]: c for c in nr["status"]["conditions"]}
    assert conds["Repaired"]["reason"] == "RepairJobNotAllowed"
    assert node_markers(cluster, node) == RELEASED
    assert not cluster.core.read_node(node).spec.unschedulable


def test_nhc_timeout_stops_the_repair(
    cluster: Cluster, pool: Callable[[int], Pool], checks: str
) -> None:
    """With escalatingRemediations NHC annotates the object nhc-timed-out when it
    moves on to its next remediator: pitstop stops, gives the node back, and reports
    Succeeded=False."""
    p = make_pool(cluster, pool, 2)
    node = p.names[0]
    tmpl = rem.template(cluster, checks, "gentle", SPEC)
    nhc = rem.nodehealthcheck(cluster, f"nhc-{uuid.uuid4().hex[:6]}", p.selector, tmpl)
    inject(cluster, node)
    obj = rem.create_as_nhc(cluster, nhc, tmpl, node)
    name = node_repair(cluster, obj)["metadata"]["name"]
    wait_repair_phase(cluster, name, "Repairing")
    cluster.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        checks,
        rem.PLURAL,
        node,
        {"metadata": {"annotations": {rem.TIMED_OUT: "2026-12-07T00:00:00Z"}}},
    )
    stopped = rem.wait_conditions(cluster, checks, node, Succeeded="False")
    assert rem.conditions(stopped)["Succeeded"] == ("False", "TimedOut")
    wait_until("NodeRepair gone", lambda: repair_gone(cluster, obj["metadata"]["uid"]), timeout=30)
    assert node_markers(cluster, node) == RELEASED
    heal(cluster, node)


def test_pool_guards_hold_remediation_repairs(
    cluster: Cluster, pool: Callable[[int], Pool], checks: str
) -> None:
    """A RepairPolicy whose pool holds the nodes limits the NodeRepairs remediation
    objects make, as it limits its own (pool/daemon.py Admission asks every
    NodeRepair): with maxConcurrentRepairs 1 the second waits Pending, and its object
    says Processing=True/Pending, until the first is done. The policy is paused, so
    it adds its limits without detecting faults itself."""
    p = make_pool(cluster, pool, 3)
    first, second = p.names[0], p.names[1]
    policy = f"rp-{uuid.uuid4().hex[:6]}"
    cluster.custom.create_cluster_custom_object(
        GROUP,
        VERSION,
        "repairpolicies",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RepairPolicy",
            "metadata": {"name": policy},
            "spec": {
                "nodeSelector": {"matchLabels": dict(p.selector)},
                "maxConcurrentRepairs": 1,
                "minAvailable": 0,
                "paused": True,
            },
        },
    )
    try:
        tmpl = rem.template(cluster, checks, "gentle", SPEC)
        nhc = rem.nodehealthcheck(cluster, f"nhc-{uuid.uuid4().hex[:6]}", p.selector, tmpl)
        inject(cluster, first)
        inject(cluster, second)
        one = rem.create_as_nhc(cluster, nhc, tmpl, first)
        name_one = node_repair(cluster, one)["metadata"]["name"]
        wait_repair_phase(cluster, name_one, "Repairing")
        two = rem.create_as_nhc(cluster, nhc, tmpl, second)
        name_two = node_repair(cluster, two)["metadata"]["name"]

        def held_back() -> bool:
            obj = rem.get(cluster, checks, second) or {}
            message = (obj.get("status") or {}).get("message") or ""
            return (
                rem.conditions(obj).get("Processing") == ("True", "Pending")
                and f"MaxConcurrentRepairs: 1 active repairs in the pool (max 1) (policy {policy})"
                in message
            )

        wait_until("the second repair held by maxConcurrentRepairs", held_back, timeout=30)
        assert not node_markers(cluster, second)["unschedulable"]

        heal(cluster, first)
        repaired(cluster, name_one)
        rem.wait_conditions(cluster, checks, first, Succeeded="True")
        wait_repair_phase(cluster, name_two, "Repairing")
        heal(cluster, second)
        repaired(cluster, name_two)
        rem.wait_conditions(cluster, checks, second, Succeeded="True")
    finally:
        cluster.custom.delete_cluster_custom_object(GROUP, VERSION, "repairpolicies", policy)


MACHINE_SPEC = {
    "clusterName": "faas",
    "bootstrap": {"dataSecretName": "none"},
    "infrastructureRef": {
        "apiGroup": "infrastructure.cluster.x-k8s.io",
        "kind": "KwokMachine",
        "name": "any",
    },
}
"""What Cluster API's own Machine schema requires, should its CRD be the one installed."""


def test_mhc_contract_repairs_the_machines_node(
    cluster: Cluster, pool: Callable[[int], Pool], checks: str
) -> None:
    """MHC's round: the object is named after the Machine and owned by it; pitstop
    repairs the Machine's node (status.nodeRef), and MHC deleting the object once the
    Machine is healthy gives the node back."""
    rem.ensure_machine_crd(cluster)
    p = make_pool(cluster, pool, 2)
    node = p.names[0]
    machine_name = f"md-0-{uuid.uuid4().hex[:5]}"
    machine = cluster.custom.create_namespaced_custom_object(
        "cluster.x-k8s.io",
        "v1beta2",
        checks,
        "machines",
        {
            "apiVersion": "cluster.x-k8s.io/v1beta2",
            "kind": "Machine",
            "metadata": {"name": machine_name},
            "spec": MACHINE_SPEC,
        },
    )
    cluster.custom.patch_namespaced_custom_object_status(
        "cluster.x-k8s.io",
        "v1beta2",
        checks,
        "machines",
        machine_name,
        {"status": {"nodeRef": {"name": node}}},
    )
    tmpl = rem.template(cluster, checks, "gentle", SPEC)
    inject(cluster, node)
    obj = rem.create_as_mhc(cluster, machine, tmpl)
    nr = node_repair(cluster, obj)
    assert nr["spec"]["nodeName"] == node
    assert f"Machine {machine_name}" in nr["spec"]["reason"]
    wait_repair_phase(cluster, nr["metadata"]["name"], "Repairing")
    heal(cluster, node)
    repaired(cluster, nr["metadata"]["name"])
    rem.wait_conditions(cluster, checks, machine_name, Succeeded="True")
    rem.delete(cluster, checks, machine_name)
    wait_until("remediation gone", lambda: rem.get(cluster, checks, machine_name) is None)
    assert repair_gone(cluster, obj["metadata"]["uid"])
    assert node_markers(cluster, node) == RELEASED


def test_a_machine_without_a_node_is_refused(cluster: Cluster, checks: str) -> None:
    """A Machine that never got a node (MHC's nodeStartupTimeout) leaves pitstop
    nothing to drain: Succeeded=False, NoNode."""
    rem.ensure_machine_crd(cluster)
    machine = cluster.custom.create_namespaced_custom_object(
        "cluster.x-k8s.io",
        "v1beta2",
        checks,
        "machines",
        {
            "apiVersion": "cluster.x-k8s.io/v1beta2",
            "kind": "Machine",
            "metadata": {"name": "md-0-nonode"},
            "spec": MACHINE_SPEC,
        },
    )
    tmpl = rem.template(cluster, checks, "gentle", SPEC)
    obj = rem.create_as_mhc(cluster, machine, tmpl)
    refused = rem.wait_conditions(cluster, checks, "md-0-nonode", Succeeded="False")
    assert rem.conditions(refused)["Succeeded"] == ("False", "NoNode")
    assert not rem.node_repairs_of(cluster, obj["metadata"]["uid"])


@pytest.mark.parametrize(
    "label",
    ["rbac.ext-remediation/aggregate-to-ext-remediation", "cluster.x-k8s.io/aggregate-to-manager"],
)
def test_the_checkers_roles_aggregate_pitstops_rules(
    cluster: Cluster, namespace: str, label: str
) -> None:
    """What NHC installs (an aggregated ClusterRole selecting its label) and Cluster
    API's aggregated manager role pick up pitstop-ext-remediation from
    manifests/rbac: the checker may read templates and create and delete remediation
    objects, and may not write their status (pitstop's) or NodeRepairs."""
    role = f"checker-{uuid.uuid4().hex[:6]}"
    sa = "checker"
    cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
    aggregated = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": role},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]},
    }
    cluster.kubectl("apply", "-f", "-", input=rem._json(aggregated))
    cluster.kubectl(
        "create",
        "clusterrolebinding",
        role,
        f"--clusterrole={role}",
        f"--serviceaccount={namespace}:{sa}",
    )
    who = f"system:serviceaccount:{namespace}:{sa}"

    def can(*args: str) -> bool:
        out = cluster.kubectl("auth", "can-i", *args, "--as", who, check=False).stdout.strip()
        return out == "yes"

    try:
        wait_until(
            "the aggregated rules",
            lambda: can("create", "noderepairremediations.pitstop.dev", "-n", namespace),
            timeout=30,
        )
        assert can("delete", "noderepairremediations.pitstop.dev", "-n", namespace)
        assert can("get", "noderepairremediationtemplates.pitstop.dev", "-n", namespace)
        assert not can(
            "patch", "noderepairremediations.pitstop.dev", "--subresource=status", "-n", namespace
        )
        assert not can("create", "noderepairs.pitstop.dev")
        assert not can("create", "noderepairremediationtemplates.pitstop.dev", "-n", namespace)
    finally:
        cluster.kubectl("delete", "clusterrolebinding", role, check=False)
        cluster.kubectl("delete", "clusterrole", role, check=False)


def test_a_killed_operator_resumes_the_remediation(
    cluster: Cluster, pool: Callable[[int], Pool], checks: str, running_operator: Operator
) -> None:
    """Invariant 6 for remediation objects: SIGKILLed while the object waits on its
    NodeRepair (and again while the object is being deleted), the restarted operator
    makes no second NodeRepair, reports the outcome, and still gives the node back."""
    p = make_pool(cluster, pool, 2)
    node = p.names[0]
    tmpl = rem.template(cluster, checks, "gentle", SPEC)
    nhc = rem.nodehealthcheck(cluster, f"nhc-{uuid.uuid4().hex[:6]}", p.selector, tmpl)
    inject(cluster, node)
    obj = rem.create_as_nhc(cluster, nhc, tmpl, node)
    name = node_repair(cluster, obj)["metadata"]["name"]
    wait_repair_phase(cluster, name, "Repairing")

    running_operator.kill()
    heal(cluster, node)
    repaired(cluster, name)
    running_operator.start()
    rem.wait_conditions(cluster, checks, node, Processing="False", Succeeded="True")
    assert len(rem.node_repairs_of(cluster, obj["metadata"]["uid"])) == 1

    running_operator.kill()
    rem.delete(cluster, checks, node)  # its finalizer holds it while nobody runs it
    assert rem.get(cluster, checks, node) is not None
    running_operator.start()
    wait_until("remediation gone", lambda: rem.get(cluster, checks, node) is None, timeout=60)
    assert repair_gone(cluster, obj["metadata"]["uid"])
    assert node_markers(cluster, node) == RELEASED


def test_rights_on_a_namespace_do_not_open_it_to_remediation(
    cluster: Cluster, pool: Callable[[int], Pool], namespace: str, running_operator: Operator
) -> None:
    """The trust model (docs/security.md): a namespace's built-in `admin` may neither
    create remediation objects (pitstop's roles aggregate into no built-in one) nor
    label its own namespace; and someone granted create on them in a namespace the
    platform admin did not label gets no repair, whatever the object asks for."""
    p = make_pool(cluster, pool, 1)
    node = p.names[0]
    sa = "ns-admin"
    who = f"system:serviceaccount:{namespace}:{sa}"
    cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
    cluster.kubectl(
        "create",
        "rolebinding",
        "ns-admin",
        "--clusterrole=admin",
        f"--serviceaccount={namespace}:{sa}",
        "-n",
        namespace,
    )

    def can(*args: str) -> bool:
        out = cluster.kubectl("auth", "can-i", *args, "--as", who, check=False).stdout
        return out.strip() == "yes"

    wait_until("the admin role bound", lambda: can("create", "deployments.apps", "-n", namespace))
    assert not can("create", "noderepairremediations.pitstop.dev", "-n", namespace)
    assert not can("create", "noderepairremediationtemplates.pitstop.dev", "-n", namespace)
    assert not can("patch", f"namespace/{namespace}")
    assert not can("create", "noderepairs.pitstop.dev")

    # Granted create on remediation objects here (not by pitstop's roles): still no
    # repair, as the namespace lacks the platform admin's label.
    cluster.kubectl(
        "create",
        "role",
        "remediate",
        "--verb=create,get",
        "--resource=noderepairremediations.pitstop.dev",
        "-n",
        namespace,
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "remediate",
        "--role=remediate",
        f"--serviceaccount={namespace}:{sa}",
        "-n",
        namespace,
    )
    wait_until(
        "create granted",
        lambda: can("create", "noderepairremediations.pitstop.dev", "-n", namespace),
    )
    body = {
        "apiVersion": rem.API_VERSION,
        "kind": rem.KIND,
        "metadata": {"name": node, "namespace": namespace},
        "spec": SPEC,
    }
    cluster.kubectl("create", "--as", who, "-f", "-", input=rem._json(body))
    try:
        refused = rem.wait_conditions(cluster, namespace, node, Succeeded="False")
        assert rem.conditions(refused)["Succeeded"] == ("False", "NamespaceNotAllowed")
        uid = refused["metadata"]["uid"]
        assert not rem.node_repairs_of(cluster, uid)
        assert node_markers(cluster, node) == RELEASED
    finally:
        rem.delete(cluster, namespace, node)
        wait_until("object gone", lambda: rem.get(cluster, namespace, node) is None)
