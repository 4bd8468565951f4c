"""Runs the operator: the metrics server, leader election, then kopf with pitstop's
handlers, until a signal.

A replica that does not hold the Lease is a standby: it serves /healthz (with its
role) and /metrics, answers the alert receiver's port with 503, and makes no change
to the cluster. kopf (every watch, handler and write) starts only once the Lease is
won, and the process exits when it is lost (pitstop.cluster.leader's fence). The
acting replica labels its Pod pitstop.dev/leader=true, which the alerts Service
selects (pitstop.cluster.leader_label); a replica clears that label at its start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import kopf
from aiohttp import web

from pitstop import __version__, constants, heap, kopf_memory, kopf_startup, metrics
from pitstop.cluster import leader_label
from pitstop.cluster.kube import Kube
from pitstop.cluster.kubeconfig import KubeSource, connection_info
from pitstop.cluster.leader import ElectionConfig, Elector, Fence, Keeper
from pitstop.cluster.leader_label import OwnPod

logger = logging.getLogger(__name__)

LOST_EXIT_CODE = 3
"""Exit code of a replica deposed by its fence (the container restarts as a standby)."""
LABEL_TIMEOUT = 10.0
"""Seconds for one request of the leader label without leader election."""


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
    alerts_token_file: str | None = None
    """A file with the token (a mounted Secret) instead: read again when it changes."""
    alerts_rate: float = constants.ALERTS_RATE
    """Requests per second per client of the receiver; 0: no limit."""
    alerts_burst: int = constants.ALERTS_BURST
    election: ElectionConfig | None = None
    """None: act at once, alone (no Lease); only for a single replica."""

    @property
    def identity(self) -> str | None:
        """The replica's name, sent in the User-Agent of every API request."""
        return self.election.identity if self.election else None

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
    handlers = handlers_module()
    # before kopf starts its watches; the heap trimmed once its start-up gate opens
    kopf_startup.install(handlers.indexes.WATCH_SLIMMERS, on_open=heap.Trimmer().opened)
    # less kept per pod: no memory of it, a lighter backlog, only its event at the gate
    kopf_memory.install()
    if not options.verbose:
        logging.getLogger("kopf.objects").addFilter(QuietWatchers(handlers.WATCH_HANDLERS))

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
        asyncio.run(_run(options, handlers))
    finally:
        metrics.UP.set(0)
        metrics.LEADER.set(0)
        server.close()


async def _run(options: RunOptions, handlers: Any) -> None:
    memo = kopf.Memo({handlers.MEMO_KUBE_SOURCE: options.source, handlers.MEMO_OPTIONS: options})
    election = options.election
    pod = OwnPod.from_env(os.environ)
    kube = _client(options, election.renew_deadline if election else LABEL_TIMEOUT)
    if election is None:
        metrics.LEADER.set(1)
        try:
            async with _marked(kube, pod, LABEL_TIMEOUT):
                await _kopf(options, memo)
        finally:
            await kube.close()
        return

    stop = asyncio.Event()
    memo[handlers.MEMO_STOP] = stop
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    elector = Elector(kube, election)
    if pod is not None:  # before /healthz answers: not Ready while it may carry the label
        await leader_label.unmark(kube, pod)
    standby = await _Standby.start(options, elector)
    fence: Fence | None = None
    keeper: Keeper | None = None
    beat: asyncio.Task[None] | None = None
    try:
        logger.info(
            f"Standing by for the Lease {election.namespace}/{election.name} "
            f"as {election.identity!r}."
        )
        sent = await elector.acquire(stop)
        if sent is None:
            return  # stopped while standing by: nothing to hand over
        fence = Fence(election.renew_deadline, _deposed)
        fence.start(sent)
        # Renewed from a thread of its own: kopf's start-up may keep this loop busy
        # past the renew deadline (leader.Keeper).
        keeper = Keeper(elector, fence, _client(options, election.renew_deadline))
        keeper.start()
        beat = asyncio.create_task(keeper.beating(), name="lease-beat")
        metrics.LEADER.set(1)
        logger.info(f"Leading: holding the Lease {election.namespace}/{election.name}.")
        await standby.close()  # kopf binds the health and alert ports from here on
        # kopf installs its own SIGTERM/SIGINT handlers; a signal that came while we
        # were taking over is passed on through the stop flag.
        async with _marked(kube, pod, election.retry_period):
            await _kopf(options, memo, stop_flag=stop)
    finally:
        if beat is not None:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        if keeper is not None:
            # Off the loop: a renewal in flight ends within its bound (the fence).
            await asyncio.to_thread(keeper.stop, election.renew_deadline)
        if fence is not None:
            fence.stop()
        await standby.close()
        if fence is not None:
            await elector.release()  # after kopf stopped: nothing acts any more
        metrics.LEADER.set(0)
        await kube.close()


@contextlib.asynccontextmanager
async def _marked(kube: Kube, pod: OwnPod | None, retry_period: float) -> AsyncIterator[None]:
    """While acting: our Pod labelled as the leader's, which the alerts Service
    selects (a task, so kopf's start never waits for it)."""
    if pod is None:
        yield
        return
    task = asyncio.create_task(leader_label.keep_marked(kube, pod, retry_period))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _kopf(
    options: RunOptions, memo: kopf.Memo, stop_flag: asyncio.Event | None = None
) -> None:
    await kopf.operator(
        clusterwide=True,  # NodeRepair, RepairPolicy and Node are cluster-scoped
        liveness_endpoint=liveness_endpoint(options.bind, options.health_port),
        memo=memo,
        stop_flag=stop_flag,
    )


def _client(options: RunOptions, request_timeout: float) -> Kube:
    """A client of the operator's credentials for the election and the leader label
    (the handlers have their own)."""
    return Kube(lambda: connection_info(options.source, options.identity), request_timeout)


def _deposed(why: str) -> None:
    """The fence fired: stop acting now, before another replica may take over.
    No cleanup: exiting at once is the point (the Pod restarts as a standby)."""
    logger.critical(f"Leadership lost: {why}; exiting so that this replica stops acting.")
    logging.shutdown()
    os._exit(LOST_EXIT_CODE)


class _Standby:
    """The endpoints of a replica waiting for the Lease: /healthz answers 200 with
    the role, the alert receiver's port 503 (Alertmanager retries; the leader takes
    the alert), so probes pass and nothing is lost."""

    def __init__(self, runner: web.AppRunner | None) -> None:
        self.runner = runner

    @classmethod
    async def start(cls, options: RunOptions, elector: Elector) -> _Standby:
        async def health(_: web.Request) -> web.Response:
            body = {"version": __version__, "role": "standby", "leader": elector.holder or None}
            return web.json_response(body)

        async def alerts(_: web.Request) -> web.Response:
            holder = elector.holder or "not known yet"
            message = f"this replica stands by; the leader ({holder}) receives alerts"
            return web.json_response({"message": message}, status=503, headers={"Retry-After": "5"})

        app = web.Application()
        app.router.add_get(constants.HEALTH_PATH, health)
        app.router.add_post("/alerts", alerts)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ports = [options.health_port] + ([options.alerts_port] if options.alerts_port else [])
        for port in ports:
            await web.TCPSite(runner, options.bind, port).start()
        return cls(runner)

    async def close(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()


def handlers_module() -> Any:
    """pitstop.handlers; importing it registers them in kopf's default registry."""
    from pitstop import handlers

    return handlers
