"""The kopf entry point: registers pitstop's handlers and does nothing else.

Importing this module registers the handlers in kopf's default registry;
pitstop.runner imports it and runs kopf. The reconciliation handlers of the
repair flow are added here as they are written, each step in its own module.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from typing import Any, cast

import kopf

# Importing a module registers its handlers: each step of the flow lives in its own.
# pitstop.registry first: its startup handler makes the run's state the others use.
from pitstop import __version__, constants, metrics, registry
from pitstop.cluster import indexes
from pitstop.cluster.kube import Kube
from pitstop.cluster.kubeconfig import KubeSource, connection_info, resolve_source
from pitstop.instances import serving
from pitstop.instances.sources import daemon as sources_daemon
from pitstop.pool import alerts
from pitstop.pool import daemon as pool_daemon
from pitstop.remediation import daemon as remediation_daemon
from pitstop.repair import daemon as repair_daemon
from pitstop.repair import orphans

__all__ = [
    "indexes",
    "orphans",
    "pool_daemon",
    "registry",
    "remediation_daemon",
    "repair_daemon",
    "serving",
    "sources_daemon",
]

WATCH_HANDLERS = frozenset(
    {
        "on_pod_event",
        "on_node",
        "sweep_node",
        "sweep_after_deletion",
        "wake_on_endpoints",
        "wake_on_pdb",
        "wake_on_node",
        "wake_on_repair",
        "wake_on_policy",
        "wake_on_profile",
        "wake_remediation",
    }
)
"""Handlers run on every watch event; their success is not logged (pitstop.runner)."""


@kopf.on.event("pods")  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
async def on_pod_event(
    body: kopf.Body,
    type: str | None,
    memo: kopf.Memo,
    nodes_by_name: kopf.Index[str, Any],
    pods_by_node: kopf.Index[str, Any],
    profiles_by_name: kopf.Index[str, Any],
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Every pod event, through kopf once: the handlers of each concept that follows
    pods run here in turn. kopf's work per handler and event (its kwargs, state,
    outcome and log record) was most of the operator's busy loop in a drain, the
    handlers' own work a few percent (bench/README.md). As kopf would, a handler's
    error is logged and the others still run."""
    for wake in (indexes.wake_on_room, sources_daemon.wake_on_pod):
        try:
            wake(body=body, type=type, memo=memo, profiles_by_name=profiles_by_name)
        except Exception:  # kopf's own rule for event handlers
            logger.exception(f"{wake.__name__} failed on this pod event")
    await serving.on_pod(
        body=body,
        type=type,
        memo=memo,
        nodes_by_name=nodes_by_name,
        pods_by_node=pods_by_node,
        logger=logger,
    )


MEMO_KUBE_SOURCE = "kube_source"
MEMO_STOP = "stop"
"""Key of the runner's stop flag: set once kopf stops, so that kopf does not wait
for its own watcher of that flag among the tasks it expects to end (5 s)."""
MEMO_OPTIONS = "options"
"""Key under which pitstop.runner passes its RunOptions (ports, the alerts Secret)."""
"""Key in the operator-wide memo under which pitstop.runner passes the KubeSource."""

# Watch streams: ask the server to end each watch after WATCH_SERVER_TIMEOUT (it
# otherwise picks 5-10 min), and give up client-side a bit later, so a stream that
# went silent (lost connection, stuck proxy) is restarted instead of hanging forever.
# kopf's inactivity_timeout (70 s without any event or bookmark) stays as a third net.
# The server timeout goes into the URL as timeoutSeconds, so it must be a whole number.
WATCH_SERVER_TIMEOUT = 270
WATCH_CLIENT_TIMEOUT = 300.0
WATCH_CONNECT_TIMEOUT = 10.0
# The initial LIST of each resource (and any re-LIST after a 410) in pages: 100,000
# pods in one response are some 300 MB of JSON, parsed at once, whose memory the process
# keeps; pages are indexed and dropped one after the other.
LIST_CHUNK_SIZE = 500
# Ordinary (non-watch) API requests: fail fast rather than hold a handler for kopf's 5 min.
REQUEST_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0


DIFFED_API_GROUPS = frozenset({constants.GROUP})
"""The API groups with change or daemon handlers (tests/unit/test_handlers_on_loop.py
keeps this true): only their objects need kopf's diff base."""


class OwnKindsDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff base, made only for objects of DIFFED_API_GROUPS. kopf
    builds one (a deep copy of the body, then cleaned) and reads one for every watch
    event of every resource, but uses them only for change and daemon handlers;
    pods, nodes, EndpointSlices and budgets have index and event handlers alone, and
    their copies were about 12 % of the operator's busy loop in a drain (bench/README.md)."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        if not _diffed(body):
            return _NO_ESSENCE
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return super().fetch(body=body) if _diffed(body) else _NO_ESSENCE


_NO_ESSENCE = cast(kopf.BodyEssence, {})
"""The same (empty) essence before and after: no change, nothing stored."""


def _diffed(body: kopf.Body) -> bool:
    group, _, version = str(body.get("apiVersion") or "").rpartition("/")
    return not version or group in DIFFED_API_GROUPS  # unknown: as kopf would


@kopf.on.startup()
def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Operator-wide settings; runs before any watch starts."""
    # No KopfPeering: peering is not leader election. Of several replicas only the
    # holder of the coordination.k8s.io Lease runs kopf at all (pitstop.runner).
    settings.peering.standalone = True

    settings.watching.server_timeout = WATCH_SERVER_TIMEOUT
    settings.watching.client_timeout = WATCH_CLIENT_TIMEOUT
    settings.watching.connect_timeout = WATCH_CONNECT_TIMEOUT
    settings.watching.chunk_size = LIST_CHUNK_SIZE
    settings.networking.request_timeout = REQUEST_TIMEOUT
    settings.networking.connect_timeout = CONNECT_TIMEOUT

    # Handler log lines stay in the log; pitstop posts its Events deliberately
    # (kopf.event() and friends), with specific reasons, as the component "pitstop".
    settings.posting.loggers = False
    settings.posting.reporting_component = "pitstop"
    settings.posting.reporting_instance = os.environ.get("POD_NAME") or socket.gethostname()
    settings.posting.event_name_prefix = "pitstop-"

    # Handler progress and the last-handled spec live in pitstop.dev/ annotations of
    # pitstop's own objects (status belongs to the schema, which prunes unknown fields).
    settings.persistence.finalizer = constants.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=constants.KOPF_ANNOTATIONS_PREFIX,
        v1=False,
    )
    settings.persistence.diffbase_storage = OwnKindsDiffBase(
        prefix=constants.KOPF_ANNOTATIONS_PREFIX,
        key="last-handled-configuration",
        v1=False,
    )

    # pitstop's own API calls (cordon, pod patches, evictions, status) share the
    # credentials of kopf's login handler below.
    identity = _identity(memo)
    memo["kube"] = Kube(
        lambda: connection_info(_source(memo), identity), request_timeout=REQUEST_TIMEOUT
    )

    metrics.UP.set(1)
    logger.info(f"pitstop {__version__} started.")


@kopf.on.startup()
async def start_alert_receiver(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Alertmanager's webhook receiver (RepairPolicy alerts), unless disabled."""
    options = memo.get(MEMO_OPTIONS)
    if options is None or not options.alerts_port:
        return
    secret, _, key = options.alerts_secret.partition("/")
    memo["alerts"] = await alerts.serve(
        memo["kube"],
        pool_daemon.pools(memo).alerts,
        options.bind,
        options.alerts_port,
        secret,
        key,
        token_file=options.alerts_token_file,
        rate=options.alerts_rate,
        burst=options.alerts_burst,
    )
    logger.info(f"Alert receiver on http://{options.bind}:{options.alerts_port}/alerts.")


@kopf.on.cleanup()
async def mark_down(memo: kopf.Memo, **_: Any) -> None:
    metrics.UP.set(0)
    if MEMO_STOP in memo:
        memo[MEMO_STOP].set()
    if "alerts" in memo:
        await memo["alerts"].cleanup()
    if "kube" in memo:
        await memo["kube"].close()


def _source(memo: kopf.Memo) -> KubeSource:
    source = memo.get(MEMO_KUBE_SOURCE)
    if not isinstance(source, KubeSource):  # e.g. started with `kopf run -m pitstop.handlers`
        source = resolve_source(None, os.environ)
    return source


def _identity(memo: kopf.Memo) -> str | None:
    options = memo.get(MEMO_OPTIONS)
    return getattr(options, "identity", None)


@kopf.on.login(id="pitstop")
def login(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> kopf.ConnectionInfo:
    """Credentials from the source chosen by the CLI (kopf calls this again on HTTP 401).

    Registering a login handler replaces kopf's fallbacks, which would try the
    in-cluster ServiceAccount before an explicit kubeconfig.
    """
    source = _source(memo)
    logger.debug(f"Logging in with the {source.describe()}.")
    return connection_info(source, _identity(memo))


@kopf.on.probe(id="version")
def version(**_: Any) -> str:
    """Shown in /healthz; the probe makes no API call, so liveness never hinges on the API."""
    return __version__


@kopf.on.probe(id="role")
def role(**_: Any) -> str:
    """A standby never runs kopf (pitstop.runner serves its /healthz): this one leads."""
    return "leader"
