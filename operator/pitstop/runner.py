"""Runs the operator: the metrics server, then kopf with pitstop's handlers, until a signal."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf

from pitstop import constants, metrics
from pitstop.cluster.kubeconfig import KubeSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """What `pitstop run` needs, already validated by the CLI."""

    source: KubeSource
    bind: str = "0.0.0.0"
    health_port: int = constants.HEALTH_PORT
    metrics_port: int = constants.METRICS_PORT
    alerts_port: int = constants.ALERTS_PORT
    """0 disables the Alertmanager receiver."""
    alerts_secret: str = constants.ALERTS_SECRET
    """NAME/KEY of the Secret (operator's namespace) holding the receiver's bearer token."""
    verbose: bool = False


def liveness_endpoint(bind: str, port: int) -> str:
    """kopf's liveness URL for an address to listen on (IPv6 literals bracketed)."""
    host = f"[{bind}]" if ":" in bind else bind
    return f"http://{host}:{port}{constants.HEALTH_PATH}"


class QuietWatchers(logging.Filter):
    """Drops kopf's "Handler '...' succeeded." line for the watch handlers that run
    on every pod, node and EndpointSlice event: thousands a minute on a busy cluster,
    telling nothing (their failures are still logged)."""

    def __init__(self, names: frozenset[str]) -> None:
        super().__init__()
        self.lines = frozenset(f"Handler '{name}' succeeded." for name in names)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.lines


def run(options: RunOptions) -> None:
    """Run until SIGTERM/SIGINT; raises OSError if a port cannot be bound."""
    kopf.configure(verbose=options.verbose)
    if not options.verbose:
        quiet = QuietWatchers(main_module().WATCH_HANDLERS)
        logging.getLogger("kopf.objects").addFilter(quiet)

    main = main_module()

    try:
        server = metrics.serve(options.metrics_port, addr=options.bind)
    except OSError as e:
        reason = e.strerror or str(e)
        raise OSError(
            f"cannot serve metrics on {options.bind}:{options.metrics_port}: {reason}"
        ) from e
    logger.info(
        f"Serving metrics at http://{options.bind}:{server.port}/metrics; "
        f"credentials from the {options.source.describe()}.",
    )
    try:
        kopf.run(
            clusterwide=True,  # NodeRepair, RepairPolicy and Node are cluster-scoped
            liveness_endpoint=liveness_endpoint(options.bind, options.health_port),
            memo=kopf.Memo({main.MEMO_KUBE_SOURCE: options.source, main.MEMO_OPTIONS: options}),
        )
    finally:
        metrics.UP.set(0)
        server.close()


def main_module() -> Any:
    """pitstop.main; importing it registers the handlers in kopf's default registry."""
    from pitstop import main

    return main
