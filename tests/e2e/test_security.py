"""Attacks on the trust model (docs/security.md), each made as the least-privileged
role that could try it: a user bound to the shipped pitstop-viewer, pitstop-repairer
or pitstop-admin ClusterRole (impersonated by the test's admin). Each is refused
with a clear message (an admission error, or a Failed repair whose Repaired
condition names the reason), nothing is run (no Job, the node never cordoned) and
nothing is sent (the test's repair service receives no request)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.e2e.helpers import make_pool
from tests.e2e.kube import Cluster, wait_until
from tests.e2e.repairs import GROUP, PLURAL, VERSION, Repairs, node_markers
from tests.e2e.test_repair import NS, RELEASED, inject, job_repair, jobs_of
from tests.e2e.webhook_server import Reply, WebhookServer

pytestmark = pytest.mark.e2e

VIEWER, REPAIRER, ADMIN = "e2e-viewer", "e2e-repairer", "e2e-platform-admin"
ROLES = {VIEWER: "pitstop-viewer", REPAIRER: "pitstop-repairer", ADMIN: "pitstop-admin"}
TOKEN_KEY = "token"


@pytest.fixture(scope="module")
def users(cluster: Cluster, operator: Any) -> Iterator[None]:
    """Users bound to the shipped ClusterRoles (manifests/rbac/user-roles.yaml, applied
    with the operator's RBAC), for the test's admin to impersonate."""
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    for user, role in ROLES.items():
        rbac.create_cluster_role_binding(
            client.V1ClusterRoleBinding(
                metadata=client.V1ObjectMeta(name=f"{user}-{uuid.uuid4().hex[:6]}"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role
                ),
                subjects=[
                    client.RbacV1Subject(
                        api_group="rbac.authorization.k8s.io", kind="User", name=user
                    )
                ],
            )
        )
    for user in ROLES:  # the authorizer learns bindings from its informers
        wait_until(
            f"{user} may list noderepairs",
            lambda u=user: can_i(cluster, u, "list", "noderepairs.pitstop.dev"),
            timeout=30,
        )
    yield
    for binding in rbac.list_cluster_role_binding().items:
        if any(binding.metadata.name.startswith(f"{user}-") for user in ROLES):
            rbac.delete_cluster_role_binding(binding.metadata.name)


def can_i(cluster: Cluster, user: str, *args: str) -> bool:
    answer = cluster.kubectl("auth", "can-i", f"--as={user}", *args, check=False)
    return answer.stdout.strip() == "yes"


def create_as(cluster: Cluster, user: str, body: dict[str, Any]) -> tuple[bool, str]:
    """`kubectl create` as `user`: (created, stderr)."""
    done = cluster.kubectl("create", f"--as={user}", "-f", "-", input=json.dumps(body), check=False)
    return done.returncode == 0, done.stderr


def node_repair(node: str, repair: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NodeRepair",
        "metadata": {"name": f"sec-{uuid.uuid4().hex[:8]}"},
        "spec": {"nodeName": node, "reason": "E2E attack", "repair": repair},
    }


def pod_of(repair: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = repair["job"]["template"]["spec"]["template"]["spec"]
    return spec


def refused_in_status(cluster: Cluster, repairs: Repairs, name: str, node: str, reason: str) -> str:
    """The repair failed with `reason` in its Repaired condition, before its node was
    touched, and no Job of it exists. Returns the condition's message."""
    status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=30)
    assert status["phase"] == "Failed", status
    cond = next(c for c in status["conditions"] if c["type"] == "Repaired")
    assert (cond["status"], cond["reason"]) == ("False", reason), cond
    assert status["message"].startswith(f"{reason}: "), status["message"]
    assert node_markers(cluster, node) == RELEASED, "the node was never cordoned"
    assert not jobs_of(cluster, name), "nothing was run"
    assert "Cordoned" not in {c["type"] for c in status["conditions"]}
    return str(cond["message"])


@pytest.fixture
def made(cluster: Cluster, repairs: Repairs) -> Iterator[list[str]]:
    """Names of repairs a test made as another user, cleaned up like the repairs fixture's."""
    names: list[str] = []
    yield names
    repairs.made.extend(names)


def submit(cluster: Cluster, made: list[str], user: str, body: dict[str, Any]) -> str:
    created, err = create_as(cluster, user, body)
    assert created, err
    made.append(body["metadata"]["name"])
    return str(body["metadata"]["name"])


# --- who may ask at all ---


def test_a_viewer_may_read_but_not_repair(cluster: Cluster, users: None, pool: Any) -> None:
    node = make_pool(cluster, pool).names[0]
    created, err = create_as(cluster, VIEWER, node_repair(node, {"strategy": "Manual"}))
    assert not created and "Forbidden" in err and "noderepairs" in err, err
    assert can_i(cluster, VIEWER, "get", "noderepairs.pitstop.dev")
    assert can_i(cluster, VIEWER, "list", "repairpolicies.pitstop.dev")
    for verb in ("create", "patch", "delete"):
        assert not can_i(cluster, VIEWER, verb, "noderepairs.pitstop.dev"), verb
    # The built-in view role reads repairs too (pitstop-viewer aggregates into it).
    wait_until(
        "pitstop-viewer aggregated into view",
        lambda: (
            "noderepairs"
            in cluster.kubectl(
                "get", "clusterrole", "view", "-o", "jsonpath={.rules[*].resources}"
            ).stdout
        ),
        timeout=30,
    )
    # A repairer may not make policies (they repair nodes unattended).
    assert not can_i(cluster, REPAIRER, "create", "repairpolicies.pitstop.dev")
    assert not can_i(cluster, REPAIRER, "get", "secrets", "-n", NS)
    assert node_markers(cluster, node) == RELEASED


# --- a repair Job that would act with more than the admin granted ---


def test_a_job_as_the_operators_service_account_is_refused_at_admission(
    cluster: Cluster, users: None, pool: Any
) -> None:
    node = make_pool(cluster, pool).names[0]
    for field in ("serviceAccountName", "serviceAccount"):
        repair = job_repair(node)
        pod_of(repair)[field] = "pitstop"
        created, err = create_as(cluster, REPAIRER, node_repair(node, repair))
        assert not created, f"{field}: pitstop was accepted"
        assert "operator's own ServiceAccount" in err and field in err, err
    assert node_markers(cluster, node) == RELEASED


HOST_ACCESS: dict[str, dict[str, Any]] = {
    "privileged": {
        "containers": [{"name": "x", "image": "x", "securityContext": {"privileged": True}}]
    },
    "hostPath": {
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "containers": [
            {"name": "x", "image": "x", "volumeMounts": [{"name": "root", "mountPath": "/host"}]}
        ],
    },
    "hostPID": {"hostPID": True},
}


@pytest.mark.parametrize("kind", HOST_ACCESS)
def test_host_access_without_the_admins_grant_runs_nothing(
    cluster: Cluster, users: None, pool: Any, repairs: Repairs, made: list[str], kind: str
) -> None:
    node = make_pool(cluster, pool).names[0]
    repair = job_repair(node)
    pod_of(repair).update(HOST_ACCESS[kind])
    name = submit(cluster, made, REPAIRER, node_repair(node, repair))
    message = refused_in_status(cluster, repairs, name, node, "RepairJobNotAllowed")
    assert "host access is not allowed" in message and "pitstop-repair" in message, message
    assert "pitstop.dev/repair-host-access=true" in message, "it says how the admin allows it"


def test_a_service_account_runs_jobs_only_once_the_admin_labels_it(
    cluster: Cluster, users: None, pool: Any, repairs: Repairs, made: list[str]
) -> None:
    """The same template is refused, then run, after the admin's label: the refusal
    is the grant's doing, not the template's."""
    nodes = make_pool(cluster, pool, 2).names
    sa = f"e2e-tool-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespaced_service_account(
        NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=sa))
    )
    try:
        repair = job_repair(nodes[0])
        pod_of(repair)["serviceAccountName"] = sa
        name = submit(cluster, made, REPAIRER, node_repair(nodes[0], repair))
        message = refused_in_status(cluster, repairs, name, nodes[0], "RepairJobNotAllowed")
        assert f"{NS}/{sa} is not allowed for repair Jobs" in message, message

        cluster.core.patch_namespaced_service_account(
            sa, NS, {"metadata": {"labels": {"pitstop.dev/repair-allowed": "true"}}}
        )
        repair = job_repair(nodes[1])
        pod_of(repair)["serviceAccountName"] = sa
        name = submit(cluster, made, REPAIRER, node_repair(nodes[1], repair))
        jobs = wait_until(f"a Job of {name}", lambda: jobs_of(cluster, name), timeout=30)
        assert jobs[0].spec.template.spec.service_account_name == sa
    finally:
        cluster.core.delete_namespaced_service_account(sa, NS)


@pytest.fixture
def webhook_secret(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A Secret in pitstop-system the admin has not marked for webhooks: (name, token)."""
    name, token = f"unmarked-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    cluster.kubectl(
        "create", "secret", "generic", name, "-n", NS, f"--from-literal={TOKEN_KEY}={token}"
    )
    yield name, token
    cluster.kubectl("delete", "secret", name, "-n", NS, "--ignore-not-found", "--wait=false")


def test_a_job_reading_a_secret_it_was_not_granted_is_refused(
    cluster: Cluster,
    users: None,
    pool: Any,
    repairs: Repairs,
    made: list[str],
    webhook_secret: tuple[str, str],
) -> None:
    node = make_pool(cluster, pool).names[0]
    secret, _ = webhook_secret
    repair = job_repair(node)
    pod_of(repair)["containers"][0]["env"] = [
        {"name": "T", "valueFrom": {"secretKeyRef": {"name": secret, "key": TOKEN_KEY}}}
    ]
    name = submit(cluster, made, REPAIRER, node_repair(node, repair))
    message = refused_in_status(cluster, repairs, name, node, "RepairJobNotAllowed")
    assert f"Secrets {secret} are not allowed" in message, message


def test_a_policy_template_that_escalates(
    cluster: Cluster, users: None, pool: Any, repairs: Repairs
) -> None:
    """Even a platform admin's policy cannot run a Job as the operator (admission), and
    one whose Job asks for host access without the grant stamps out repairs that run
    nothing."""
    nodes = make_pool(cluster, pool)
    pool_id = nodes.selector["pool"]

    def policy(pod: dict[str, Any]) -> dict[str, Any]:
        repair = job_repair(nodes.names[0])
        pod_of(repair).update(pod)
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RepairPolicy",
            "metadata": {"name": f"sec-{uuid.uuid4().hex[:8]}"},
            "spec": {
                "nodeSelector": {"matchLabels": {"pool": pool_id}},
                "unhealthyConditions": [
                    {"type": "KernelDeadlock", "status": "True", "duration": "0s"}
                ],
                "maxUnhealthy": "100%",
                "minAvailable": 0,
                "repairTemplate": {"spec": {"repair": repair}},
            },
        }

    created, err = create_as(cluster, REPAIRER, policy({}))
    assert not created and "Forbidden" in err, err
    created, err = create_as(cluster, ADMIN, policy({"serviceAccountName": "pitstop"}))
    assert not created and "operator's own ServiceAccount" in err, err

    escalating = policy(HOST_ACCESS["privileged"])
    created, err = create_as(cluster, ADMIN, escalating)
    assert created, err
    try:
        inject(cluster, nodes.names[0])
        label = f"pitstop.dev/policy={escalating['metadata']['name']}"

        def stamped() -> list[str]:
            found = cluster.custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, label_selector=label
            )
            return [item["metadata"]["name"] for item in found["items"]]

        (name,) = wait_until("the policy's NodeRepair", stamped, timeout=60)
        repairs.made.append(name)
        message = refused_in_status(cluster, repairs, name, nodes.names[0], "RepairJobNotAllowed")
        assert "privileged container x" in message, message
    finally:
        cluster.custom.delete_cluster_custom_object(
            GROUP, VERSION, "repairpolicies", escalating["metadata"]["name"]
        )


# --- a webhook that would send a token where the admin did not allow ---


def test_a_secret_not_marked_for_webhooks_is_never_sent(
    cluster: Cluster,
    users: None,
    pool: Any,
    repairs: Repairs,
    made: list[str],
    webhook_secret: tuple[str, str],
) -> None:
    node = make_pool(cluster, pool).names[0]
    secret, token = webhook_secret
    with WebhookServer(lambda r, i: Reply(body={"status": "Succeeded"})) as server:
        repair = {
            "strategy": "Webhook",
            "maxAttempts": 1,
            "webhook": {
                "url": server.url,
                "allowInsecureHTTP": True,
                "secretRef": {"name": secret, "key": TOKEN_KEY},
            },
        }
        name = submit(cluster, made, REPAIRER, node_repair(node, repair))
        message = refused_in_status(cluster, repairs, name, node, "WebhookNotAllowed")
        assert f"{NS}/{secret} is not marked for webhooks" in message, message
        assert server.requests == [], "nothing was sent"
    events = cluster.kubectl("get", "events", "-A", "-o", "json").stdout
    assert token not in events and token not in json.dumps(repairs.get(name))


def test_http_without_the_opt_in_is_refused_at_admission(
    cluster: Cluster, users: None, pool: Any
) -> None:
    node = make_pool(cluster, pool).names[0]
    with WebhookServer(lambda r, i: Reply(body={"status": "Succeeded"})) as server:
        repair = {"strategy": "Webhook", "webhook": {"url": server.url}}
        created, err = create_as(cluster, REPAIRER, node_repair(node, repair))
        assert not created and "allowInsecureHTTP" in err and "spec.repair.webhook.url" in err, err
        assert server.requests == []
    assert node_markers(cluster, node) == RELEASED


def test_a_token_the_service_echoes_is_redacted(
    cluster: Cluster,
    users: None,
    pool: Any,
    repairs: Repairs,
    made: list[str],
    webhook_secret: tuple[str, str],
) -> None:
    """A marked Secret is sent; what the service answers lands in status and Events,
    so an echo of the token is redacted there."""
    node = make_pool(cluster, pool).names[0]
    secret, token = webhook_secret
    cluster.kubectl("label", "secret", secret, "-n", NS, "pitstop.dev/webhook-secret=true")

    def echo(request: Any, index: int) -> Reply:
        heard = request.headers.get("authorization", "")
        return Reply(body={"status": "Failed", "message": f"refusing {heard}"})

    with WebhookServer(echo) as server:
        repair = {
            "strategy": "Webhook",
            "maxAttempts": 1,
            "webhook": {
                "url": server.url,
                "allowInsecureHTTP": True,
                "secretRef": {"name": secret, "key": TOKEN_KEY},
            },
        }
        name = submit(cluster, made, REPAIRER, node_repair(node, repair))
        status = repairs.wait_phase(name, "Failed", "Succeeded", timeout=60)
        assert server.requests[0].headers["authorization"] == f"Bearer {token}", "it was sent"
    assert status["repair"]["lastError"] == "refusing Bearer [redacted]", status["repair"]
    events = cluster.kubectl("get", "events", "-A", "-o", "json").stdout
    assert token not in events and token not in json.dumps(repairs.get(name))


def test_neither_viewer_nor_repairer_reads_the_secrets(
    cluster: Cluster, users: None, webhook_secret: tuple[str, str]
) -> None:
    secret, _ = webhook_secret
    for user in (VIEWER, REPAIRER):
        done = cluster.kubectl("get", "secret", secret, "-n", NS, f"--as={user}", check=False)
        assert done.returncode != 0 and "Forbidden" in done.stderr, (user, done.stdout)
