"""API requests counted by kube-apiserver itself (its /metrics), and those of the
operator alone, by verb.

`apiserver_request_total` has verb, resource and scope labels but no client
label, so it counts everyone: kwok, the controllers, the scheduler and the
benchmark too. To attribute requests to the operator, the operator runs as its
own ServiceAccount (manifests/rbac, as in production and in e2e), and one API
Priority and Fairness FlowSchema per verb matches that ServiceAccount's requests.
kube-apiserver counts every request it dispatches per FlowSchema
(`apiserver_flowcontrol_dispatched_requests_total{flow_schema=...}`), so those
counters are the operator's requests by verb. The FlowSchemas send the requests
to the `exempt` priority level: no queueing, as the admin identity the drain
benchmark uses also gets.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.cluster import REPO, BenchError, Cluster, poll

NAMESPACE, SERVICE_ACCOUNT = "pitstop-system", "pitstop"
"""The operator's ServiceAccount (manifests/rbac)."""
PREFIX = "bench-operator-"
"""Name prefix of the FlowSchemas that count the operator's requests."""
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
CLUSTER_LIST = "list-cluster-wide"
"""A LIST without a namespace: of a cluster-scoped resource, or across all namespaces."""
NON_RESOURCE = "non-resource"
"""Discovery, /version, /healthz and the like."""
RESOURCES = (
    "pods",
    "pods/eviction",
    "pods/status",
    "nodes",
    "events",
    "noderepairs",
    "noderepairs/status",
    "repairpolicies",
    "repairpolicies/status",
    "instanceprofiles",
    "endpointslices",
    "leases",
    "jobs",
)
"""Resources the operator's requests are also broken down by (each verb's other
resources are counted under the verb alone)."""
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def operator_kubeconfig(cluster: Cluster, path: Path) -> str:
    """Applies manifests/rbac and writes a kubeconfig with a token of the operator's
    ServiceAccount; returns its path once its RBAC is in effect."""
    cluster.run_kubectl("apply", "-k", str(REPO / "manifests" / "rbac"))
    token = cluster.run_kubectl(
        "create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, "--duration=12h"
    ).stdout.strip()
    if not token:
        raise BenchError("empty ServiceAccount token")
    kubeconfig = cluster.kubeconfig_for(token, path)

    def allowed() -> bool:
        command = cluster.kubectl_command("auth", "can-i", "patch", "nodes", kubeconfig=kubeconfig)
        proc = subprocess.run(command, capture_output=True, text=True, timeout=30)
        return proc.stdout.strip() == "yes"

    poll("the operator's RBAC in effect", allowed, 30)
    return kubeconfig


def _rule(
    verbs: list[str], namespaced: bool, cluster_scope: bool, resource: str = "*"
) -> dict[str, object]:
    rule: dict[str, object] = {
        "verbs": verbs,
        "apiGroups": ["*"],
        "resources": [resource],
        "clusterScope": cluster_scope,
    }
    if namespaced:
        rule["namespaces"] = ["*"]
    return rule


def install_flow_schemas(cluster: Cluster) -> None:
    """One FlowSchema per verb for the operator's ServiceAccount (LIST split into
    namespaced and cluster-wide), one for its non-resource requests, and, matched
    first, one per verb and resource of RESOURCES (`<verb>.<resource>`)."""
    subject = {
        "kind": "ServiceAccount",
        "serviceAccount": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE},
    }
    rules: dict[str, dict[str, Any]] = {
        verb: {"resourceRules": [_rule([verb], True, verb != "list")]} for verb in VERBS
    }
    rules["list-all"] = {"resourceRules": [_rule(["list"], False, True)]}
    # A repair reads its node's pods across namespaces (fieldSelector spec.nodeName,
    # served by the API server's node index): counted apart from the other LISTs.
    pod_lists = {"list-all.pods": {"resourceRules": [_rule(["list"], False, True, "pods")]}}
    rules["nonresource"] = {"nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}
    detail = {
        f"{verb}.{resource.replace('/', '-')}": {
            "resourceRules": [_rule([verb], True, True, resource)]
        }
        for verb in VERBS
        if verb not in ("list", "watch")
        for resource in RESOURCES
    }
    # Matched before the per-verb ones, and all before `service-accounts` (9000).
    detail.update(pod_lists)
    precedence = {**dict.fromkeys(detail, 400), **dict.fromkeys(rules, 500)}
    items = [
        {
            "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
            "kind": "FlowSchema",
            "metadata": {"name": PREFIX + name},
            "spec": {
                "priorityLevelConfiguration": {"name": "exempt"},
                "matchingPrecedence": precedence[name],
                "rules": [{"subjects": [subject], **rule}],
            },
        }
        for name, rule in {**detail, **rules}.items()
    ]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    cluster.run_kubectl("apply", "-f", "-", input=listing)


def _samples(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            labels, value = line.rsplit(" ", 1)
            out.append((dict(_LABEL.findall(labels)), float(value)))
    return out


def _flow_name(flow_schema: str) -> tuple[str, str | None]:
    """(verb, resource or None) that a FlowSchema of ours counts."""
    name = flow_schema.removeprefix(PREFIX)
    verb, _, resource = name.partition(".")
    verb = {"list-all": CLUSTER_LIST, "nonresource": NON_RESOURCE}.get(verb, verb)
    return verb, resource.replace("-", "/") or None


class Snapshot:
    """Request counters at one moment: the operator's by verb, everyone's by verb."""

    def __init__(self, cluster: Cluster) -> None:
        text = cluster.get_raw("/metrics")
        self.operator: defaultdict[str, float] = defaultdict(float)
        """The operator's requests by verb, and by `verb resource` for RESOURCES."""
        for labels, value in _samples(text, "apiserver_flowcontrol_dispatched_requests_total"):
            if labels.get("flow_schema", "").startswith(PREFIX):
                verb, resource = _flow_name(labels["flow_schema"])
                self.operator[verb] += value
                if resource is not None:
                    self.operator[f"{verb} {resource}"] += value
        self.everyone: defaultdict[str, float] = defaultdict(float)
        for labels, value in _samples(text, "apiserver_request_total"):
            verb = labels.get("verb", "?").lower()
            if verb == "list" and labels.get("scope") == "cluster":
                verb = CLUSTER_LIST
            self.everyone[verb] += value

    def since(self, before: Snapshot) -> dict[str, dict[str, float]]:
        """What was counted between `before` and this snapshot."""
        return {
            "operator": _minus(self.operator, before.operator),
            "everyone": _minus(self.everyone, before.everyone),
        }


def _minus(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] - before.get(k, 0)}
