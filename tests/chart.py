"""The Helm chart (charts/pitstop) and the binaries that render it, for the unit
test that compares it with manifests/ and the in-cluster tier that installs it.

helm and kubectl are the ones hack/build-control-plane.sh builds into the cache
(keyed by hack/versions.env), else whatever is on PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "pitstop"
MANIFESTS = REPO / "manifests"
RELEASE = "pitstop"


def _versions() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (REPO / "hack" / "versions.env").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def binary(name: str) -> str:
    """The cached build of `name` (helm, kubectl) at the pinned version, else PATH's.
    Fails with what to run when there is none."""
    versions = _versions()
    folder = {
        "helm": f"helm-{versions['HELM_VERSION']}",
        "kubectl": f"kube-{versions['KUBE_VERSION']}",
    }
    cache = Path(os.environ.get("PITSTOP_CACHE", Path.home() / ".cache" / "pitstop"))
    cached = cache / "bin" / folder[name] / name
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    found = shutil.which(name)
    if found is None:
        make = "make helm" if name == "helm" else "make build"
        raise FileNotFoundError(f"{name} not in {cached.parent} nor on PATH: run `{make}`")
    return found


def run(*argv: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs helm or kubectl (argv[0]); never raises on a non-zero exit."""
    return subprocess.run(
        [binary(argv[0]), *argv[1:]], input=input, capture_output=True, text=True, timeout=120
    )


class _Loader(yaml.SafeLoader):
    """Go's YAML writes the string "=" bare (a CRD default); YAML 1.1 calls that the
    `value` tag, which PyYAML does not construct. It is the string "=" to Kubernetes."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: node.value)


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(text, Loader=_Loader) if doc]


def template(
    *args: str, chart: Path = CHART, namespace: str = "pitstop-system"
) -> list[dict[str, Any]]:
    """`helm template` of the chart, CRDs included; `args` are more flags (--set ...)."""
    done = run("helm", "template", RELEASE, str(chart), "-n", namespace, "--include-crds", *args)
    if done.returncode != 0:
        raise AssertionError(f"helm template failed: {done.stderr.strip()}")
    return documents(done.stdout)


def kustomize(path: Path = MANIFESTS) -> list[dict[str, Any]]:
    """`kubectl kustomize manifests/`: what `kubectl apply -k` would create."""
    done = run("kubectl", "kustomize", str(path))
    if done.returncode != 0:
        raise AssertionError(f"kubectl kustomize failed: {done.stderr.strip()}")
    return documents(done.stdout)


Key = tuple[str, str, str]


def by_key(objects: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """Objects by (kind, namespace, name)."""
    return {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects
    }
