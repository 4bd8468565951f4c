"""manifests/rbac grants the operator what the repair flow needs and nothing more.

Checked with the pitstop ServiceAccount's own token: `kubectl auth can-i` for the
whole matrix, and real API requests for the rules that matter most (a node PATCH
succeeds, a node DELETE is refused, ...). Requests that must be refused and would
do harm if the RBAC were wrong use server-side dry-run where the API has it:
authorization is checked before dry-run is honoured, so the answer is the same.
"""

from __future__ import annotations

import datetime
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.e2e.kube import Cluster, Pool, wait_until
from tests.e2e.sa import NAMESPACE, operator_kubeconfig

pytestmark = pytest.mark.e2e

GROUP = "pitstop.dev"
VERSION = "v1alpha1"
DRY_RUN = "All"


@pytest.fixture(scope="module")
def sa_kubeconfig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("sa") / "pitstop.kubeconfig"
    return operator_kubeconfig(cluster.kubeconfig, str(out))


@pytest.fixture(scope="module")
def sa(sa_kubeconfig: str) -> Iterator[client.ApiClient]:
    """An API client authenticated as system:serviceaccount:pitstop-system:pitstop."""
    api = config.new_client_from_config(config_file=sa_kubeconfig)
    yield api
    api.close()


def can_i(kubeconfig: str, *args: str) -> bool:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, "auth", "can-i", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {' '.join(args)}: {proc.stderr.strip()}"
    return answer == "yes"


def forbidden(call: Callable[[], Any]) -> None:
    """`call` must be refused by authorization (HTTP 403), not fail for another reason."""
    with pytest.raises(ApiException) as info:
        call()
    status = info.value.status
    assert status == 403, f"expected 403 Forbidden, got {status}: {info.value}"


ALLOWED = [
    # nodes: watch pools, cordon, taint, lock annotation
    *(f"{verb} nodes" for verb in ("get", "list", "watch", "patch")),
    # pods: instances and their drain annotation, anywhere
    *(f"{verb} pods --all-namespaces" for verb in ("get", "list", "watch", "patch")),
    "patch pods --subresource=status --all-namespaces",
    "create pods --subresource=eviction --all-namespaces",
    *(f"{verb} endpointslices.discovery.k8s.io --all-namespaces" for verb in ("get", "list")),
    "watch endpointslices.discovery.k8s.io --all-namespaces",
    "create events -n default",
    "patch events --all-namespaces",
    "create events.events.k8s.io --all-namespaces",
    "patch events.events.k8s.io -n default",
    *(f"{verb} poddisruptionbudgets.policy --all-namespaces" for verb in ("get", "list", "watch")),
    *(
        f"{verb} {kind}.pitstop.dev"
        for verb in ("get", "list", "watch", "patch", "update", "create")
        for kind in ("noderepairs", "repairpolicies")
    ),
    *(
        f"{verb} {kind}.pitstop.dev --subresource=status"
        for verb in ("get", "patch", "update")
        for kind in ("noderepairs", "repairpolicies")
    ),
    # the NodeRepair a remediation object made, when the checker deletes that object
    "delete noderepairs.pitstop.dev",
    *(
        f"{verb} noderepairremediations.pitstop.dev --all-namespaces"
        for verb in ("get", "list", "watch", "patch")
    ),
    *(
        f"{verb} noderepairremediations.pitstop.dev --subresource=status --all-namespaces"
        for verb in ("get", "patch")
    ),
    *(f"{verb} instanceprofiles.pitstop.dev" for verb in ("get", "list", "watch")),
    *(f"{verb} instanceprofiles.pitstop.dev --subresource=status" for verb in ("get", "patch")),
    # namespaces: their labels, for InstanceProfile namespaceSelectors
    *(f"{verb} namespaces" for verb in ("get", "list", "watch")),
    "list customresourcedefinitions.apiextensions.k8s.io",
    "watch customresourcedefinitions.apiextensions.k8s.io",
    # only in the operator's namespace
    *(f"{verb} jobs.batch -n {NAMESPACE}" for verb in ("create", "get", "list", "watch", "delete")),
    *(
        f"{verb} leases.coordination.k8s.io -n {NAMESPACE}"
        for verb in ("get", "create", "update", "patch")
    ),
    f"get secrets -n {NAMESPACE}",
    # the labels of a repair Job's ServiceAccount (docs/security.md)
    f"get serviceaccounts -n {NAMESPACE}",
    # verify.canary pods, created and deleted only here (get: the cluster-wide rule)
    f"create pods -n {NAMESPACE}",
    f"delete pods -n {NAMESPACE}",
]

REFUSED = [
    "delete nodes",
    "create nodes",
    "update nodes",
    "create pods -n default",
    "delete pods -n default",
    "delete pods --all-namespaces",
    "update pods/status -n default",
    "list secrets --all-namespaces",
    f"list secrets -n {NAMESPACE}",
    f"watch secrets -n {NAMESPACE}",
    "get secrets -n default",
    "get secrets -n kube-system",
    "get serviceaccounts -n default",
    f"list serviceaccounts -n {NAMESPACE}",
    f"patch serviceaccounts -n {NAMESPACE}",
    f"create serviceaccounts --subresource=token -n {NAMESPACE}",
    "create jobs.batch -n default",
    "create jobs.batch --all-namespaces",
    "create leases.coordination.k8s.io -n default",
    "delete repairpolicies.pitstop.dev",
    # remediation objects are the checker's to create and delete; templates its to read
    *(
        f"{verb} noderepairremediations.pitstop.dev -n default"
        for verb in ("create", "delete", "update")
    ),
    "get noderepairremediationtemplates.pitstop.dev -n default",
    "update clusterroles.rbac.authorization.k8s.io",
    "patch clusterroles.rbac.authorization.k8s.io",
    "create clusterrolebindings.rbac.authorization.k8s.io",
    f"create rolebindings.rbac.authorization.k8s.io -n {NAMESPACE}",
    "create customresourcedefinitions.apiextensions.k8s.io",
    "delete deployments.apps -n default",
    # namespaces and InstanceProfiles are read, never written
    "patch namespaces",
    "delete namespaces",
    *(f"{verb} instanceprofiles.pitstop.dev" for verb in ("create", "update", "patch", "delete")),
]


@pytest.mark.parametrize("check", ALLOWED)
def test_can_i_allowed(sa_kubeconfig: str, check: str) -> None:
    assert can_i(sa_kubeconfig, *check.split()), f"pitstop should be able to: {check}"


@pytest.mark.parametrize("check", REFUSED)
def test_can_i_refused(sa_kubeconfig: str, check: str) -> None:
    assert not can_i(sa_kubeconfig, *check.split()), f"pitstop must not be able to: {check}"


# --- real requests ---


@pytest.fixture
def node(pool: Callable[[int], Pool]) -> str:
    return pool(1).names[0]


def test_nodes_read_patch_but_never_delete(
    cluster: Cluster, sa: client.ApiClient, sa_kubeconfig: str, node: str
) -> None:
    core = client.CoreV1Api(sa)
    assert node in {n.metadata.name for n in core.list_node().items}
    assert core.read_node(node).metadata.name == node

    # A watch stream is allowed (the server ends it after timeoutSeconds).
    watched = core.list_node(watch=True, timeout_seconds=1, _preload_content=False)
    assert watched.status == 200
    watched.read()  # to the server's end of the stream, so the connection is reusable
    watched.release_conn()

    # Real PATCHes, as the operator does them: a label, the lock annotation, the cordon.
    core.patch_node(
        node,
        {
            "metadata": {
                "labels": {"e2e.pitstop.dev/rbac": "patched"},
                "annotations": {"pitstop.dev/repair": "rbac-probe"},
            },
            "spec": {"unschedulable": True},
        },
    )
    seen = cluster.core.read_node(node)
    assert seen.metadata.labels["e2e.pitstop.dev/rbac"] == "patched"
    assert seen.spec.unschedulable is True
    # ... and kubectl's own cordon path with the ServiceAccount kubeconfig.
    uncordon = subprocess.run(
        ["kubectl", "--kubeconfig", sa_kubeconfig, "uncordon", node],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert uncordon.returncode == 0, uncordon.stderr
    assert not cluster.core.read_node(node).spec.unschedulable

    # A real DELETE (no dry-run) is refused, and the node is still there.
    forbidden(lambda: core.delete_node(node))
    forbidden(lambda: core.replace_node(node, cluster.core.read_node(node)))
    assert cluster.core.read_node(node).metadata.name == node


def pending_pod(name: str) -> client.V1Pod:
    """A pod no node can take: it stays Pending and nothing but the test touches it."""
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
        spec=client.V1PodSpec(
            node_selector={"e2e.pitstop.dev/no-such-node": "true"},
            containers=[client.V1Container(name="fn", image="fake")],
            termination_grace_period_seconds=0,
        ),
    )


def test_pods_drain_annotation_serving_condition_eviction(
    cluster: Cluster, sa: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(sa)
    name = "instance"
    cluster.core.create_namespaced_pod(namespace, pending_pod(name))

    assert core.read_namespaced_pod(name, namespace).metadata.name == name
    assert name in {p.metadata.name for p in core.list_pod_for_all_namespaces().items}

    # Drain signal annotation (pods patch).
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    core.patch_namespaced_pod(
        name, namespace, {"metadata": {"annotations": {"pitstop.dev/draining": now}}}
    )
    # Serving gate condition (pods/status patch).
    core.patch_namespaced_pod_status(
        name,
        namespace,
        {"status": {"conditions": [{"type": "pitstop.dev/serving", "status": "False"}]}},
    )
    seen = cluster.core.read_namespaced_pod(name, namespace)
    assert seen.metadata.annotations["pitstop.dev/draining"] == now
    assert any(
        c.type == "pitstop.dev/serving" and c.status == "False" for c in seen.status.conditions
    )

    # Never created, never deleted directly, never written whole.
    forbidden(
        lambda: core.create_namespaced_pod(namespace, pending_pod("intruder"), dry_run=DRY_RUN)
    )
    forbidden(lambda: core.delete_namespaced_pod(name, namespace, dry_run=DRY_RUN))
    forbidden(lambda: core.replace_namespaced_pod_status(name, namespace, seen, dry_run=DRY_RUN))

    # Only evicted, through the Eviction API (pods/eviction create).
    core.create_namespaced_pod_eviction(
        name,
        namespace,
        client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace)),
    )

    def gone() -> bool:
        pods = cluster.core.list_namespaced_pod(namespace, field_selector=f"metadata.name={name}")
        return not pods.items or pods.items[0].metadata.deletion_timestamp is not None

    wait_until(f"pod {name} evicted", gone)


def test_endpointslices_pdbs_crds_are_readable(
    cluster: Cluster, sa: client.ApiClient, namespace: str
) -> None:
    service = {
        "metadata": {"name": "fn"},
        "spec": {"selector": {"app": "fn"}, "ports": [{"port": 80}]},
    }
    cluster.core.create_namespaced_service(namespace, service)
    wait_until(
        "the Service's EndpointSlice, as the operator sees it",
        lambda: any(
            s.metadata.namespace == namespace
            for s in client.DiscoveryV1Api(sa).list_endpoint_slice_for_all_namespaces().items
        ),
    )
    client.PolicyV1Api(sa).list_pod_disruption_budget_for_all_namespaces()
    crds = client.ApiextensionsV1Api(sa).list_custom_resource_definition()
    assert f"noderepairs.{GROUP}" in {c.metadata.name for c in crds.items}


def test_events_can_be_posted(sa: client.ApiClient, namespace: str, node: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    # core/v1, about a namespaced object (kopf's kopf.event() posts these) ...
    client.CoreV1Api(sa).create_namespaced_event(
        namespace,
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="pitstop-"),
            involved_object=client.V1ObjectReference(
                api_version="v1", kind="Pod", name="instance", namespace=namespace
            ),
            reason="RbacProbe",
            message="pitstop may post Events",
            type="Normal",
            source=client.V1EventSource(component="pitstop"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        ),
    )
    # ... and events.k8s.io/v1, about a cluster-scoped Node, in "default".
    client.EventsV1Api(sa).create_namespaced_event(
        "default",
        client.EventsV1Event(
            metadata=client.V1ObjectMeta(generate_name="pitstop-"),
            event_time=now,
            action="Probe",
            reason="RbacProbe",
            note="pitstop may post Events about nodes",
            type="Normal",
            regarding=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
            reporting_controller="pitstop.dev/operator",
            reporting_instance="e2e",
        ),
    )


@pytest.fixture
def node_repair(cluster: Cluster, node: str) -> Iterator[str]:
    name = f"rbac-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NodeRepair",
        "metadata": {"name": name},
        # dryRun: should an operator be running against this cluster, it changes nothing.
        "spec": {"nodeName": node, "reason": "RbacProbe", "dryRun": True},
    }
    cluster.custom.create_cluster_custom_object(GROUP, VERSION, "noderepairs", body)
    yield name
    cluster.custom.delete_cluster_custom_object(GROUP, VERSION, "noderepairs", name)


def allowed(sa: client.ApiClient, verb: str, group: str, resource: str, ns: str = "") -> bool:
    """A SelfSubjectAccessReview: unlike `kubectl auth can-i`, it needs no CRD of the
    resource installed (Cluster API's Machines may not be)."""
    review = client.AuthorizationV1Api(sa).create_self_subject_access_review(
        client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    verb=verb, group=group, resource=resource, namespace=ns or None
                )
            )
        )
    )
    return bool(review.status.allowed)


def test_cluster_api_machines_are_only_read(sa: client.ApiClient) -> None:
    """One Machine is read, the owner of a MachineHealthCheck's remediation object,
    for its status.nodeRef; never listed or written."""
    assert allowed(sa, "get", "cluster.x-k8s.io", "machines", "any")
    for verb in ("list", "watch", "patch", "update", "delete", "create"):
        assert not allowed(sa, verb, "cluster.x-k8s.io", "machines", "any"), verb


def test_noderepairs_and_their_status(
    cluster: Cluster, sa: client.ApiClient, node_repair: str
) -> None:
    custom = client.CustomObjectsApi(sa)
    listed = custom.list_cluster_custom_object(GROUP, VERSION, "noderepairs")
    assert node_repair in {o["metadata"]["name"] for o in listed["items"]}
    assert custom.get_cluster_custom_object(GROUP, VERSION, "noderepairs", node_repair)
    assert custom.get_cluster_custom_object_status(GROUP, VERSION, "noderepairs", node_repair)

    # The answer to the write is the proof: the running operator may rewrite the
    # message of this (dry-run) repair before a second read.
    seen = custom.patch_cluster_custom_object_status(
        GROUP, VERSION, "noderepairs", node_repair, {"status": {"message": "rbac probe"}}
    )
    assert seen["status"]["message"] == "rbac probe"

    # The finalizer and progress annotations kopf writes (noderepairs patch).
    custom.patch_cluster_custom_object(
        GROUP,
        VERSION,
        "noderepairs",
        node_repair,
        {"metadata": {"annotations": {"pitstop.dev/rbac-probe": "yes"}}},
    )
    # Deleting a repair is a human decision, or a health checker's: the operator
    # deletes the NodeRepair a deleted NodeRepairRemediation made (docs/security.md).
    custom.delete_cluster_custom_object(GROUP, VERSION, "noderepairs", node_repair, dry_run=DRY_RUN)
    assert custom.get_cluster_custom_object(GROUP, VERSION, "noderepairs", node_repair)
    assert client.CustomObjectsApi(sa).list_cluster_custom_object(GROUP, VERSION, "repairpolicies")


def test_jobs_only_in_the_operator_namespace(sa: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(sa)
    name = f"repair-rbac-{uuid.uuid4().hex[:6]}"

    def job(ns: str) -> client.V1Job:
        return client.V1Job(
            metadata=client.V1ObjectMeta(name=name, namespace=ns),
            spec=client.V1JobSpec(
                suspend=True,  # no pods: only the permission is under test
                template=client.V1PodTemplateSpec(
                    spec=client.V1PodSpec(
                        restart_policy="Never",
                        containers=[client.V1Container(name="repair", image="fake")],
                    )
                ),
            ),
        )

    batch.create_namespaced_job(NAMESPACE, job(NAMESPACE))
    try:
        assert batch.read_namespaced_job(name, NAMESPACE).metadata.name == name
        assert name in {j.metadata.name for j in batch.list_namespaced_job(NAMESPACE).items}
    finally:
        batch.delete_namespaced_job(name, NAMESPACE, propagation_policy="Background")

    forbidden(lambda: batch.create_namespaced_job("default", job("default"), dry_run=DRY_RUN))
    forbidden(lambda: batch.create_namespaced_job(namespace, job(namespace), dry_run=DRY_RUN))
    forbidden(lambda: batch.list_job_for_all_namespaces())


def test_leases_only_in_the_operator_namespace(sa: client.ApiClient) -> None:
    coordination = client.CoordinationV1Api(sa)

    def lease(ns: str) -> client.V1Lease:
        return client.V1Lease(
            metadata=client.V1ObjectMeta(name="pitstop-rbac-probe", namespace=ns),
            spec=client.V1LeaseSpec(holder_identity="e2e", lease_duration_seconds=15),
        )

    coordination.create_namespaced_lease(NAMESPACE, lease(NAMESPACE), dry_run=DRY_RUN)
    forbidden(
        lambda: coordination.create_namespaced_lease("default", lease("default"), dry_run=DRY_RUN)
    )


def test_secrets_only_get_and_only_in_the_operator_namespace(
    cluster: Cluster, sa: client.ApiClient, namespace: str
) -> None:
    def secret(name: str) -> client.V1Secret:
        return client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), string_data={"token": "s3cr3t"}
        )

    own = f"webhook-token-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespaced_secret(NAMESPACE, secret(own))
    cluster.core.create_namespaced_secret(namespace, secret("elsewhere"))
    try:
        core = client.CoreV1Api(sa)
        assert core.read_namespaced_secret(own, NAMESPACE).data["token"]
        forbidden(lambda: core.read_namespaced_secret("elsewhere", namespace))
        forbidden(lambda: core.list_secret_for_all_namespaces())
        forbidden(lambda: core.list_namespaced_secret(NAMESPACE))
    finally:
        cluster.core.delete_namespaced_secret(own, NAMESPACE)


def test_rbac_itself_is_out_of_reach(sa: client.ApiClient) -> None:
    rbac = client.RbacAuthorizationV1Api(sa)
    forbidden(lambda: rbac.read_cluster_role("pitstop"))
    forbidden(
        lambda: rbac.patch_cluster_role(
            "pitstop", {"metadata": {"labels": {"e2e": "escalated"}}}, dry_run=DRY_RUN
        )
    )
    role = client.V1ClusterRole(
        metadata=client.V1ObjectMeta(name="pitstop"),
        rules=[client.V1PolicyRule(api_groups=["*"], resources=["*"], verbs=["*"])],
    )
    forbidden(lambda: rbac.replace_cluster_role("pitstop", role, dry_run=DRY_RUN))
    # Namespaces are read (InstanceProfile namespaceSelectors), never written.
    assert client.CoreV1Api(sa).list_namespace().items
    forbidden(
        lambda: client.CoreV1Api(sa).patch_namespace(
            "default", {"metadata": {"labels": {"e2e": "escalated"}}}, dry_run=DRY_RUN
        )
    )


def test_kubeconfig_holds_only_a_token(sa_kubeconfig: str) -> None:
    text = Path(sa_kubeconfig).read_text()
    assert "token:" in text
    assert "client-key" not in text  # not the admin's identity
    assert Path(sa_kubeconfig).stat().st_mode & 0o077 == 0
