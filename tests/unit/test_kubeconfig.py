"""Choosing the credentials source and turning it into kopf's ConnectionInfo (no cluster)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from pitstop.cluster.kubeconfig import (
    KubeconfigError,
    KubeSource,
    connection_info,
    load_configuration,
    resolve_source,
)

CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def write_kubeconfig(path: Path, *, user: str, cluster_extra: str = "") -> Path:
    path.write_text(
        f"""\
apiVersion: v1
kind: Config
current-context: ctx
contexts:
  - name: ctx
    context: {{cluster: c, user: u}}
  - name: other
    context: {{cluster: c, user: u}}
clusters:
  - name: c
    cluster:
      server: https://api.example:6443
{cluster_extra}
users:
  - name: u
    user: {user}
"""
    )
    return path


@pytest.fixture
def token_kubeconfig(tmp_path: Path) -> Path:
    ca = base64.b64encode(CA_PEM).decode()
    return write_kubeconfig(
        tmp_path / "kc",
        user="{token: sa-token-123}",
        cluster_extra=f"      certificate-authority-data: {ca}",
    )


def test_explicit_path_wins(token_kubeconfig: Path) -> None:
    env = {"KUBECONFIG": "/elsewhere", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert resolve_source(str(token_kubeconfig), env) == KubeSource(paths=(str(token_kubeconfig),))


def test_explicit_missing_path() -> None:
    with pytest.raises(KubeconfigError, match="kubeconfig /nope: no such file"):
        resolve_source("/nope", {})


def test_explicit_empty_path() -> None:
    with pytest.raises(KubeconfigError, match="empty"):
        resolve_source("", {})


def test_env_list_skips_missing_files(token_kubeconfig: Path) -> None:
    env = {"KUBECONFIG": f"/missing:{token_kubeconfig}", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert resolve_source(None, env).paths == (str(token_kubeconfig),)


def test_in_cluster_when_service_host_is_set() -> None:
    source = resolve_source(None, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert source.in_cluster
    assert source.describe() == "in-cluster ServiceAccount"


def test_home_kubeconfig_last(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".kube").mkdir()
    path = write_kubeconfig(tmp_path / ".kube" / "config", user="{token: t}")
    assert resolve_source(None, {}).paths == (str(path),)


def test_token_kubeconfig_to_connection_info(token_kubeconfig: Path) -> None:
    info = connection_info(KubeSource(paths=(str(token_kubeconfig),)))
    assert info.server == "https://api.example:6443"
    assert (info.scheme, info.token) == ("Bearer", "sa-token-123")
    assert info.insecure is False
    assert info.ca_path is not None
    assert Path(str(info.ca_path)).read_bytes() == CA_PEM
    assert info.certificate_path is None
    assert info.default_namespace is None


def test_client_certificate_paths_are_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "client.crt").write_text("cert")
    (tmp_path / "client.key").write_text("key")
    path = write_kubeconfig(
        tmp_path / "kc",
        user="{client-certificate: client.crt, client-key: client.key}",
        cluster_extra="      insecure-skip-tls-verify: true",
    )
    info = connection_info(KubeSource(paths=(str(path),)))
    assert info.token is None
    assert info.insecure is True
    assert Path(str(info.certificate_path)) == tmp_path / "client.crt"
    assert Path(str(info.private_key_path)) == tmp_path / "client.key"


def test_load_configuration_never_touches_the_global_default(token_kubeconfig: Path) -> None:
    import kubernetes.client

    before = kubernetes.client.Configuration.get_default_copy().host
    config = load_configuration(KubeSource(paths=(str(token_kubeconfig),)))
    assert config.host == "https://api.example:6443"
    assert kubernetes.client.Configuration.get_default_copy().host == before


def test_in_cluster_without_token_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubeconfigError, match=r"^in-cluster ServiceAccount: .*token"):
        load_configuration(KubeSource())
