"""A kubeconfig for the operator's own ServiceAccount, so e2e tests reach the API
with exactly the permissions of manifests/rbac, not the admin's."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.kube import REPO

NAMESPACE = "pitstop-system"
SERVICE_ACCOUNT = "pitstop"
TOKEN_DURATION = "2h"
RBAC_DIR = REPO / "manifests" / "rbac"
CLUSTER_FIELDS = frozenset(
    {
        "server",
        "certificate-authority",
        "certificate-authority-data",
        "insecure-skip-tls-verify",
        "tls-server-name",
    }
)
"""What the ServiceAccount kubeconfig takes from the admin's cluster entry."""


def _kubectl(kubeconfig: str, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _current_cluster(admin_kubeconfig: str) -> dict[str, Any]:
    """The admin's current cluster entry, with a file CA made absolute (it may be relative)."""
    config = yaml.safe_load(Path(admin_kubeconfig).read_text())
    context_name = config["current-context"]
    context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    entry = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    cluster = {k: v for k, v in entry.items() if k in CLUSTER_FIELDS}
    ca = cluster.get("certificate-authority")
    if ca and not os.path.isabs(ca):
        cluster["certificate-authority"] = str(Path(admin_kubeconfig).resolve().parent / ca)
    return cluster


def operator_kubeconfig(admin_kubeconfig: str, out_path: str) -> str:
    """Apply manifests/rbac, mint a token for pitstop-system/pitstop through the
    TokenRequest API, write a kubeconfig using it (same server and CA as the
    admin's) to `out_path`, and return that path once the RBAC is in effect."""
    _kubectl(admin_kubeconfig, "apply", "-k", str(RBAC_DIR))
    token = _kubectl(
        admin_kubeconfig,
        "create",
        "token",
        SERVICE_ACCOUNT,
        "-n",
        NAMESPACE,
        f"--duration={TOKEN_DURATION}",
    ).strip()
    assert token, "empty ServiceAccount token"

    name = f"{SERVICE_ACCOUNT}@{NAMESPACE}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": name,
        "clusters": [{"name": "cluster", "cluster": _current_cluster(admin_kubeconfig)}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": "cluster", "user": name, "namespace": NAMESPACE},
            }
        ],
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds a token
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f)

    # The RBAC authorizer learns new (Cluster)RoleBindings from its informers: wait
    # until both bindings are effective for this token, so no test sees a stale 403.
    deadline = time.monotonic() + 30
    while True:
        cluster_ok = _can_i(out_path, "list", "nodes")
        ns_ok = _can_i(out_path, "create", "jobs.batch", "-n", NAMESPACE)
        if cluster_ok and ns_ok:
            return out_path
        if time.monotonic() > deadline:
            raise AssertionError("the pitstop ServiceAccount's RBAC did not take effect in 30s")
        time.sleep(0.2)


def _can_i(kubeconfig: str, *args: str) -> bool:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, "auth", "can-i", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.returncode == 0 and proc.stdout.strip() == "yes"
