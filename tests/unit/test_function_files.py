"""function/deploy.yaml keeps the instance contract, and function/build-image.sh
makes a FROM-scratch rootfs: checked without a cluster."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def manifests() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((REPO / "function" / "deploy.yaml").read_text())
    return {d["kind"]: d for d in docs if d}


def test_the_example_workload_keeps_the_instance_contract() -> None:
    m = manifests()
    assert set(m) == {"Deployment", "Service", "PodDisruptionBudget"}
    pod = m["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e for e in c["env"]}

    assert pod["metadata"]["labels"]["pitstop.dev/instance-type"] == "sync"
    assert spec["readinessGates"] == [{"conditionType": "pitstop.dev/serving"}]
    assert c["image"] == "localhost/pitstop-function:dev"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "metrics": 9100}
    # SIGTERM's max wait fits in the grace period, with room to exit.
    max_wait = int(env["SHUTDOWN_MAX_WAIT_MS"]["value"]) / 1000
    assert spec["terminationGracePeriodSeconds"] >= max_wait + 5
    # The drain annotation reaches the runtime through the downward API.
    (podinfo,) = [v for v in spec["volumes"] if v["name"] == "podinfo"]
    assert podinfo["downwardAPI"]["items"] == [
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}
    ]
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    assert f"{mounts['podinfo']}/annotations" == env["ANNOTATIONS_FILE"]["value"]
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # Non-root on a read-only root; /tmp is the one writable place.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert mounts["tmp"] == "/tmp"

    labels = pod["metadata"]["labels"]
    svc = m["Service"]["spec"]
    assert svc["selector"].items() <= labels.items()
    assert svc["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    assert m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_build_image_makes_a_scratch_rootfs(function_bin: Path, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    proc = subprocess.run(
        [REPO / "function" / "build-image.sh", "--rootfs-only", "--rootfs", str(rootfs)],
        env={**os.environ, "FUNCTION_BIN": str(function_bin)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    tree = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*"))
    assert tree == ["etc", "etc/group", "etc/passwd", "function", "tmp"]
    assert (rootfs / "function").read_bytes() == function_bin.read_bytes()
    assert os.access(rootfs / "function", os.X_OK)
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o1777
    assert ":65532:65532:" in (rootfs / "etc" / "passwd").read_text()
