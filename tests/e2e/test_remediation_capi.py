"""pitstop as the external remediator of the REAL Cluster API MachineHealthCheck.

Cluster API's own MachineHealthCheck controller (sigs.k8s.io/cluster-api v1.14.2,
core/reconcilers/machinehealthcheck, from the Go module proxy) runs as a local
process (tests/e2e/capimhc) against the test control plane, which doubles as the
"workload cluster" through the `<cluster>-kubeconfig` Secret Cluster API's
ClusterCache reads. With Cluster API's own CRDs installed from that module, a
Cluster, a Machine whose status.nodeRef names a kwok node, and a MachineHealthCheck
whose remediation.templateRef is pitstop's template: the node goes unhealthy, MHC
creates the NodeRepairRemediation, pitstop drains and repairs the node, MHC sees the
Machine healthy and deletes the object, and the node is given back.

Building the controller takes minutes (about 20 on a loaded 2-CPU machine; cached in
~/.cache/pitstop/bin): `make e2e-checkers` (PITSTOP_REAL_CHECKERS=1) builds it and runs
this module. `make test` runs it once the controller is built, and skips it, saying
so, on a machine where it is not, to keep a cold CI run within its time.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import remediations as rem
from tests.e2e.helpers import make_pool, node_pods
from tests.e2e.kube import Cluster, Pool, wait_until
from tests.e2e.operator import Operator
from tests.e2e.policies_helpers import DEADLOCK, heal, inject
from tests.e2e.repairs import GROUP, PLURAL, VERSION, node_markers
from tests.e2e.workloads import deployment, running_pods

pytestmark = pytest.mark.e2e

CAPI_VERSION = "v1.14.2"
SOURCE = Path(__file__).parent / "capimhc"
CACHE = Path.home() / ".cache" / "pitstop"
BINARY = CACHE / "bin" / f"capimhc-{CAPI_VERSION}"
CAPI = ("cluster.x-k8s.io", "v1beta2")
CRDS = ("clusters", "machines", "machinehealthchecks", "machinepools")
"""Cluster API's CRDs the controller reads (its default indexes include MachinePools)."""
RELEASED = {"unschedulable": False, "taint": False, "lock": None}
BUILD_TIMEOUT = 1800


def go_env() -> dict[str, str]:
    return {
        **os.environ,
        "GOFLAGS": "-mod=mod",
        "GOPATH": str(CACHE / "go"),
        "GOCACHE": str(CACHE / "go-build"),
    }


@pytest.fixture(scope="module")
def capimhc() -> Path:
    """Cluster API's MachineHealthCheck controller, built once per machine."""
    if not BINARY.exists() and os.environ.get("PITSTOP_REAL_CHECKERS") != "1":
        pytest.skip(
            f"Cluster API's MachineHealthCheck controller is not built ({BINARY}): "
            "`make e2e-checkers` builds it (minutes) and runs this test"
        )
    if not BINARY.exists():
        BINARY.parent.mkdir(parents=True, exist_ok=True)
        built = subprocess.run(
            ["go", "build", "-o", str(BINARY), "."],
            cwd=SOURCE,
            env=go_env(),
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        assert built.returncode == 0, f"building capimhc failed:\n{built.stderr[-3000:]}"
    return BINARY


def module_dir() -> Path:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/cluster-api@{CAPI_VERSION}"],
        cwd=SOURCE,
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return Path(json.loads(out.stdout)["Dir"])


@pytest.fixture(scope="module")
def capi_crds(cluster: Cluster, capimhc: Path) -> None:
    """Cluster API's own CRDs (core/config/crd/bases of the module), as served."""
    bases = module_dir() / "core" / "config" / "crd" / "bases"
    for plural in CRDS:
        doc = yaml.safe_load((bases / f"cluster.x-k8s.io_{plural}.yaml").read_text())
        cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(doc)
        )
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{p}.cluster.x-k8s.io" for p in CRDS),
    )


@pytest.fixture
def checker(
    cluster: Cluster, capimhc: Path, capi_crds: None, tmp_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """The MachineHealthCheck controller, as a local process with the admin's kubeconfig."""
    log = (tmp_path / "capimhc.log").open("wb")
    proc = subprocess.Popen(
        [str(capimhc), "--kubeconfig", cluster.kubeconfig],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    print(f"\ncapimhc log: {tmp_path / 'capimhc.log'}")


def create(cluster: Cluster, ns: str, plural: str, body: dict[str, Any]) -> dict[str, Any]:
    made: dict[str, Any] = cluster.custom.create_namespaced_custom_object(*CAPI, ns, plural, body)
    return made


def workload_cluster(cluster: Cluster, ns: str, name: str) -> None:
    """A Cluster whose control plane is up, and the kubeconfig Secret through which
    Cluster API reaches its nodes: the test control plane itself."""
    create(
        cluster,
        ns,
        "clusters",
        {
            "apiVersion": "/".join(CAPI),
            "kind": "Cluster",
            "metadata": {"name": name},
            "spec": {
                "infrastructureRef": {
                    "apiGroup": "infrastructure.cluster.x-k8s.io",
                    "kind": "KwokCluster",
                    "name": name,
                }
            },
        },
    )
    cluster.custom.patch_namespaced_custom_object_status(
        *CAPI,
        ns,
        "clusters",
        name,
        {
            "status": {
                "initialization": {
                    "infrastructureProvisioned": True,
                    "controlPlaneInitialized": True,
                },
                "conditions": [
                    {
                        "type": kind,
                        "status": "True",
                        "reason": "Ready",
                        "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                    # what MachineHealthCheck asks before it judges a Machine
                    for kind in ("ControlPlaneInitialized", "InfrastructureReady")
                ],
            }
        },
    )
    # Certificates inline: the Secret has no directory to resolve file paths against.
    kubeconfig = cluster.kubectl("config", "view", "--raw", "--flatten", "--minify").stdout
    cluster.core.create_namespaced_secret(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": f"{name}-kubeconfig",
                "labels": {"cluster.x-k8s.io/cluster-name": name},
            },
            "type": "cluster.x-k8s.io/secret",
            "data": {"value": base64.b64encode(kubeconfig.encode()).decode()},
        },
    )


def machine(cluster: Cluster, ns: str, name: str, cluster_name: str, node: str) -> dict[str, Any]:
    made = create(
        cluster,
        ns,
        "machines",
        {
            "apiVersion": "/".join(CAPI),
            "kind": "Machine",
            "metadata": {
                "name": name,
                "labels": {"cluster.x-k8s.io/cluster-name": cluster_name, "pool": "faas-md-0"},
            },
            "spec": {
                "clusterName": cluster_name,
                "bootstrap": {"dataSecretName": "none"},
                "infrastructureRef": {
                    "apiGroup": "infrastructure.cluster.x-k8s.io",
                    "kind": "KwokMachine",
                    "name": name,
                },
            },
        },
    )
    cluster.custom.patch_namespaced_custom_object_status(
        *CAPI,
        ns,
        "machines",
        name,
        {
            "status": {"nodeRef": {"name": node}},
        },
    )
    return made


def test_the_real_machinehealthcheck_drives_a_gentle_repair(
    cluster: Cluster,
    pool: Callable[[int], Pool],
    namespace: str,
    running_operator: Operator,
    checker: subprocess.Popen[bytes],
) -> None:
    p = make_pool(cluster, pool, 2)
    node = p.names[0]
    rem.allow(cluster, namespace)
    cluster.apps.create_namespaced_deployment(namespace, deployment("fn", 4, p.selector))
    running_pods(cluster, namespace, "fn", 4)
    on_node = {x.metadata.name for x in node_pods(cluster, namespace, node)}
    assert on_node

    name = f"faas-{uuid.uuid4().hex[:5]}"
    workload_cluster(cluster, namespace, name)
    m = machine(cluster, namespace, f"{name}-md-0-a", name, node)
    tmpl = rem.template(
        cluster,
        namespace,
        "gentle",
        {
            "drain": {"taskTimeoutSeconds": 60},
            "repair": {"strategy": "Manual", "timeoutSeconds": 600},
            "verify": {
                "conditions": [
                    {"type": "Ready", "status": "True"},
                    {"type": DEADLOCK, "status": "False"},
                ],
                "stableSeconds": 1,
                "timeoutSeconds": 30,
            },
        },
    )
    create(
        cluster,
        namespace,
        "machinehealthchecks",
        {
            "apiVersion": "/".join(CAPI),
            "kind": "MachineHealthCheck",
            "metadata": {"name": f"{name}-md-0"},
            "spec": {
                "clusterName": name,
                "selector": {"matchLabels": {"pool": "faas-md-0"}},
                "checks": {
                    "unhealthyNodeConditions": [
                        {"type": DEADLOCK, "status": "True", "timeoutSeconds": 1},
                    ]
                },
                "remediation": {
                    "templateRef": {
                        "apiVersion": tmpl["apiVersion"],
                        "kind": tmpl["kind"],
                        "name": tmpl["metadata"]["name"],
                    }
                },
            },
        },
    )
    machine_name = m["metadata"]["name"]

    inject(cluster, node)

    def made() -> dict[str, Any] | None:
        assert checker.poll() is None, "the MachineHealthCheck controller exited (its log above)"
        return rem.get(cluster, namespace, machine_name)

    obj = wait_until("MachineHealthCheck's remediation object", made, timeout=120)
    owners = obj["metadata"]["ownerReferences"]
    assert [(o["kind"], o["name"]) for o in owners] == [("Machine", machine_name)]
    nrs = wait_until("its NodeRepair", lambda: rem.node_repairs_of(cluster, obj["metadata"]["uid"]))
    nr = nrs[0]
    assert nr["spec"]["nodeName"] == node
    repair = nr["metadata"]["name"]
    wait_until(
        f"{repair} Repairing",
        lambda: (
            (
                cluster.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, repair).get(
                    "status"
                )
                or {}
            ).get("phase")
            == "Repairing"
        ),
        timeout=90,
    )
    assert not ({x.metadata.name for x in node_pods(cluster, namespace, node)} & on_node)
    rem.wait_conditions(cluster, namespace, machine_name, Processing="True", Succeeded="Unknown")

    # The repair: the node is fixed and a human says so (Manual strategy).
    heal(cluster, node)
    cluster.custom.patch_cluster_custom_object(
        GROUP,
        VERSION,
        PLURAL,
        repair,
        {"metadata": {"annotations": {"pitstop.dev/repaired": "true"}}},
    )
    # MHC sees the Machine healthy and deletes the object; pitstop's finalizer lets go
    # once the NodeRepair is gone.
    wait_until(
        "MachineHealthCheck deleted the remediation object",
        lambda: rem.get(cluster, namespace, machine_name) is None,
        timeout=120,
    )
    assert not rem.node_repairs_of(cluster, obj["metadata"]["uid"])
    assert node_markers(cluster, node) == RELEASED
    assert len(running_pods(cluster, namespace, "fn", 4)) == 4
