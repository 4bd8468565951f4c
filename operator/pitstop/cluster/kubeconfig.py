"""Where pitstop's API credentials come from, and how they are turned into kopf's.

One source for the whole process: an explicit kubeconfig (`--kubeconfig`), else
`$KUBECONFIG`, else the pod's ServiceAccount when running in a cluster, else
`~/.kube/config`. kopf's own login fallbacks try in-cluster first and read
`$KUBECONFIG` only as the official client saw it at import time, so an explicit
path would be ignored inside a pod; pitstop therefore registers its own login
handler (pitstop.handlers) that calls `connection_info()` with the chosen source.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import kubernetes.client
import kubernetes.config
import yaml

if TYPE_CHECKING:
    import kopf

ENV_KUBECONFIG = "KUBECONFIG"
"""Environment variable with a kubeconfig path (or several, joined by os.pathsep)."""
ENV_SERVICE_HOST = "KUBERNETES_SERVICE_HOST"
"""Set by the kubelet in every pod: the process runs inside a cluster."""
HOME_KUBECONFIG = "~/.kube/config"
"""The last resort, as for kubectl."""


class KubeconfigError(Exception):
    """The credentials cannot be loaded; the message is one line for the user."""


@dataclass(frozen=True)
class KubeSource:
    """Where the credentials come from: kubeconfig files, or the in-cluster ServiceAccount."""

    paths: tuple[str, ...] = ()
    """Kubeconfig files, merged in order as kubectl does; empty means in-cluster."""
    context: str | None = None
    """The kubeconfig context to use (kubectl's `--context`); None: the current one."""

    @property
    def in_cluster(self) -> bool:
        return not self.paths

    def describe(self) -> str:
        if self.in_cluster:
            return "in-cluster ServiceAccount"
        where = f"kubeconfig {os.pathsep.join(self.paths)}"
        return f"{where} (context {self.context})" if self.context else where


def resolve_source(
    explicit: str | None, environ: Mapping[str, str], context: str | None = None
) -> KubeSource:
    """Choose the credentials source; raise KubeconfigError when none is usable.

    `explicit` is a single file that must exist (as kubectl's `--kubeconfig`);
    `$KUBECONFIG` may list several files, of which missing ones are skipped, also
    as kubectl does, but at least one must exist. `context` names a kubeconfig
    context, so it needs a kubeconfig, not the in-cluster ServiceAccount.
    """
    if context == "":
        raise KubeconfigError("--context is empty")
    source = _resolve_paths(explicit, environ, context)
    return KubeSource(paths=source.paths, context=context) if context else source


def _resolve_paths(
    explicit: str | None, environ: Mapping[str, str], context: str | None
) -> KubeSource:
    if explicit is not None:
        if not explicit:
            raise KubeconfigError("--kubeconfig is empty")
        path = os.path.expanduser(explicit)
        if not os.path.isfile(path):
            raise KubeconfigError(f"kubeconfig {explicit}: no such file")
        return KubeSource(paths=(path,))

    listed = [p for p in environ.get(ENV_KUBECONFIG, "").split(os.pathsep) if p]
    if listed:
        existing = tuple(os.path.expanduser(p) for p in listed if _is_file(p))
        if not existing:
            raise KubeconfigError(
                f"${ENV_KUBECONFIG}={environ[ENV_KUBECONFIG]}: no such file",
            )
        return KubeSource(paths=existing)

    if environ.get(ENV_SERVICE_HOST) and context is None:  # a context needs a kubeconfig
        return KubeSource()

    if _is_file(HOME_KUBECONFIG):
        return KubeSource(paths=(os.path.expanduser(HOME_KUBECONFIG),))
    raise KubeconfigError(
        f"no kubeconfig: pass --kubeconfig, set ${ENV_KUBECONFIG}, or run in a cluster "
        f"({HOME_KUBECONFIG} does not exist)",
    )


def load_configuration(source: KubeSource) -> kubernetes.client.Configuration:
    """Load `source` into a fresh client Configuration (never the global default).

    The official client does the hard parts: relative certificate paths, inline
    `*-data` fields, exec and auth-provider plugins, the in-cluster token file.
    """
    config = kubernetes.client.Configuration()
    try:
        if source.in_cluster:
            kubernetes.config.load_incluster_config(client_configuration=config)
        else:
            _check_kubeconfig_files(source.paths)
            kubernetes.config.load_kube_config(
                config_file=os.pathsep.join(source.paths),
                context=source.context,
                client_configuration=config,
                persist_config=False,  # never rewrite the user's file on token refresh
            )
    except KubeconfigError:
        raise
    except (kubernetes.config.ConfigException, OSError, ValueError, KeyError, TypeError) as e:
        raise KubeconfigError(f"{source.describe()}: {_one_line(e)}") from e
    if not config.host:
        raise KubeconfigError(f"{source.describe()}: no API server address")
    return config


def user_agent(identity: str | None) -> str:
    """pitstop's User-Agent; with the replica's identity when it has one."""
    from pitstop import __version__

    return f"pitstop/{__version__}" + (f" ({identity})" if identity else "")


def connection_info(source: KubeSource, identity: str | None = None) -> kopf.ConnectionInfo:
    """kopf's credentials for `source` (what a `@kopf.on.login` handler returns),
    sending a User-Agent that names the replica `identity`."""
    # here, so that the CLI's parsing and error paths do not import kopf
    from pitstop.cluster.kube import NamedConnection

    config = load_configuration(source)

    # The client keeps the full header value ("Bearer <token>", "Basic <b64>"): the
    # 'BearerToken' key since kubernetes 36, 'authorization' before. Reading it via
    # get_api_key_with_prefix() runs the refresh hook (exec plugins, expiring tokens).
    header = _api_key(config, "BearerToken") or _api_key(config, "authorization")
    scheme: str | None = None
    token: str | None = None
    if header:
        parts = header.split(" ", 1)
        if len(parts) == 2:
            scheme, token = parts
        else:
            token = parts[0]

    return NamedConnection(
        user_agent=user_agent(identity),
        server=config.host,
        ca_path=config.ssl_ca_cert or None,  # may be a temporary file made from *-data
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file or None,
        private_key_path=config.key_file or None,
        proxy_url=config.proxy or None,
        # Events about cluster-scoped objects (NodeRepair) go to "default", where
        # Kubernetes keeps Node events too; kopf uses this namespace when it is None.
        default_namespace=None,
    )


def _api_key(config: kubernetes.client.Configuration, name: str) -> str | None:
    value = config.get_api_key_with_prefix(name)
    return value if isinstance(value, str) and value else None


def _check_kubeconfig_files(paths: Sequence[str]) -> None:
    """Fail with a short message on unreadable or non-YAML files (the client's are long)."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                content = yaml.safe_load(f)
        except OSError as e:
            raise KubeconfigError(f"kubeconfig {path}: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise KubeconfigError(f"kubeconfig {path}: not valid YAML") from e
        if content is not None and not isinstance(content, dict):
            raise KubeconfigError(f"kubeconfig {path}: not a kubeconfig (expected a mapping)")


def _is_file(path: str) -> bool:
    return os.path.isfile(os.path.expanduser(path))


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
