"""One operator process, run on the simulated loop the way kopf runs it: watch
streams fill the real indexes (pitstop.cluster.indexes' functions make every
entry), the real watch handlers wake the repairs, open serving gates and sweep
orphaned locks, and the real daemons (`drive` per NodeRepair, `watch_pool` per
RepairPolicy) and the real deletion handler (`abort`) do the work, through
`SimKube`. kopf's own part is stood in for: it puts its finalizer on a new
NodeRepair, stops a deleted repair's daemon (cancelled if it has not stopped
5 s later) while the deletion handler runs, retries failed handlers, and takes the
finalizer off once `abort` succeeded.

A watch stream delivers each change after a random delay, in order. Faults: a
stream late for a while, an event delivered twice, a stream that breaks (its
events are lost) and is re-listed later. Killing the process drops all it held in
memory (indexes, the drivers' state, admissions, wakers); a new one starts from a
listing, as kopf does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import kopf

from pitstop import constants as C
from pitstop.cluster import indexes
from pitstop.cluster.kube import MERGE, ApiError
from pitstop.instances import serving
from pitstop.pool import daemon as pool_daemon
from pitstop.registry import Registry
from pitstop.repair import daemon as repair_daemon
from pitstop.repair import orphans
from tests.sim.cluster import NS, RESOURCES, clone
from tests.sim.server import REPAIRS, SimKube

if TYPE_CHECKING:
    from tests.sim.run import Simulation

LOG = logging.getLogger("pitstop.sim.operator")
LOG.addHandler(logging.NullHandler())
LOG.propagate = False
LOG.setLevel(logging.CRITICAL)

EXPECTED = (ApiError, TimeoutError, OSError, kopf.TemporaryError)
"""What a handler may raise and kopf retries: anything else is a crash."""


class SimIndex(Mapping[str, list[Any]]):
    """A kopf index: key → the values the objects contributed under it."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}
        self.keys_of: dict[str, list[str]] = {}

    def put(self, obj: str, contribution: Mapping[Any, Any] | None) -> None:
        for k in self.keys_of.pop(obj, ()):
            store = self.entries[k]
            del store[obj]
            if not store:
                del self.entries[k]
        if contribution:
            self.keys_of[obj] = list(contribution)
            for k, v in contribution.items():
                self.entries.setdefault(k, {})[obj] = v

    def __getitem__(self, k: str) -> list[Any]:
        return list(self.entries[k].values())

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


class Stopped:
    """kopf.DaemonStopped: truthy once set, awaitable."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self) -> None:
        await self.event.wait()


@dataclass
class Stream:
    """One watch: deliveries in order, each after a lag."""

    last_at: float = 0.0
    pending: int = 0
    broken: bool = False
    slow_until: float = -1.0
    seen: dict[str, dict[str, Any] | None] = field(default_factory=dict)


class OrderedSet(dict[Any, None]):
    """A set that iterates in insertion order (asyncio tasks hash by address)."""

    def add(self, item: Any) -> None:
        self[item] = None

    def discard(self, item: Any) -> None:
        self.pop(item, None)


class Process:
    def __init__(self, sim: Simulation, number: int) -> None:
        self.sim = sim
        self.number = number
        self.alive = True
        self.loop = asyncio.get_running_loop()
        self.kube = SimKube(sim.server, sim.net)
        self.registry = Registry.fresh()
        """What this process keeps across its handlers (waiters, admissions, alerts,
        phases): its own, as each operator run's is, gone with it."""
        self.memo: dict[str, Any] = {"kube": self.kube}
        """The operator's memo; each object gets its own shallow copy (`memo_of`)."""
        self.registry.install(self.memo)
        self.memos: dict[str, dict[str, Any]] = {}
        """kopf's per-object memos of NodeRepairs and RepairPolicies, by uid: the
        daemon and the deletion handler of one repair share one (its PassGuard)."""
        self.index: dict[str, SimIndex] = {r: SimIndex() for r in RESOURCES}
        self.profiles = SimIndex()
        self.ns_labels = SimIndex()
        self.bodies: dict[str, dict[str, Any]] = {}
        """Live bodies (kopf.Body) of NodeRepairs and RepairPolicies, kept current."""
        self.daemons: dict[str, tuple[asyncio.Task[None], Stopped]] = {}
        self.finalizing: set[str] = set()
        """Repairs whose deletion handler runs."""
        self.adopted: set[str] = set()
        """Repairs kopf has put (or is putting) its finalizer on."""
        self.tasks: OrderedSet = OrderedSet()
        self.streams = {r: Stream() for r in RESOURCES}

    # --- life ---

    def start(self) -> None:
        for r in RESOURCES:
            self.relist(r)
        self.sim.cluster.listeners.append(self.on_change)

    def kill(self) -> None:
        self.alive = False
        if self.on_change in self.sim.cluster.listeners:
            self.sim.cluster.listeners.remove(self.on_change)
        for t in list(self.tasks):
            t.cancel()
        for t, _ in self.daemons.values():
            t.cancel()
        for t in list(self.registry.gates.retrying.values()):
            t.cancel()  # a dead process retries no gate write either

    def spawn(self, coro: Awaitable[Any], what: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(self._guard(coro, what))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _guard(self, coro: Awaitable[Any], what: str) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except EXPECTED:
            return None  # kopf logs it; the next event or pass tries again
        except Exception as e:
            self.sim.checks.crash(what, e)
            return None

    # --- watch streams ---

    def on_change(self, resource: str, key: str, body: dict[str, Any] | None) -> None:
        s = self.streams[resource]
        if s.broken:
            return
        rng = self.sim.rng()
        now = self.loop.time()
        lag = rng.uniform(0.005, 0.3)
        if rng.random() < 0.05:
            lag += rng.uniform(0.5, 5.0)
        if now < s.slow_until:
            lag += rng.uniform(5.0, 30.0)
        # Strictly later than the one before: timers due at the same moment do not
        # run in the order they were set, and a watch never reorders its events.
        s.last_at = max(s.last_at + 1e-6, now + lag)
        s.pending += 1
        self.loop.call_at(s.last_at, self._deliver, resource, key, body, True)

    def _deliver(self, resource: str, key: str, body: dict[str, Any] | None, counted: bool) -> None:
        s = self.streams[resource]
        if counted:
            s.pending -= 1
        if not self.alive or s.broken:
            return
        self.apply(resource, key, body)

    def duplicate(self, resource: str, count: int) -> None:
        """Events delivered again (a watch resumed from an older point)."""
        s = self.streams[resource]

        def again(key: str) -> None:
            if self.alive and not s.broken and key in s.seen:
                self.apply(resource, key, s.seen[key])

        for key in list(s.seen)[-count:]:
            s.last_at = max(s.last_at, self.loop.time()) + 0.01
            self.loop.call_at(s.last_at, again, key)

    def break_stream(self, resource: str, relist_after: float) -> None:
        s = self.streams[resource]
        if s.broken:
            return
        s.broken = True

        def relist() -> None:
            if self.alive:
                s.broken = False
                s.last_at = self.loop.time()
                self.relist(resource)

        self.loop.call_later(relist_after, relist)

    def relist(self, resource: str) -> None:
        """A listing: every object as it is now; those gone since are deleted."""
        c = self.sim.cluster
        now = set(c.keys(resource))
        for key in list(self.streams[resource].seen):
            if key not in now:
                self.apply(resource, key, None)
        for key in sorted(now):
            body = c.body(resource, key)
            if body is not None:
                self.apply(resource, key, clone(body))

    # --- what kopf does with an event ---

    def apply(self, resource: str, key: str, body: dict[str, Any] | None) -> None:
        # An event's handlers are called here, outside any task: an error (a handler
        # the model calls with the wrong arguments) would only be logged by the loop.
        try:
            self._apply(resource, key, body)
        except Exception as e:
            self.sim.checks.crash(f"the {resource} event of {key}", e)

    def _apply(self, resource: str, key: str, body: dict[str, Any] | None) -> None:
        s = self.streams[resource]
        old = s.seen.get(key)
        if body is None:
            s.seen.pop(key, None)
        else:
            s.seen[key] = body
        ix = self.index[resource]
        if resource == "nodes":
            ix.put(key, indexes.nodes_by_name(body=body, name=key) if body else None)
            self.on_node(key, body)
        elif resource == "pods":
            ix.put(key, indexes.pods_by_node(body=body) if body else None)
            if body is not None:
                self.on_pod(body)
        elif resource == "endpointslices":
            ix.put(key, indexes.endpoints_by_pod(body=body) if body else None)
            if body is not None:
                indexes.wake_on_endpoints(body=body, memo=self.memo)
        elif resource == "pdbs":
            ix.put(key, indexes.pdbs_by_namespace(body=body, namespace=NS) if body else None)
            if body is not None:
                indexes.wake_on_pdb(body=body, memo=self.memo, pods_by_node=self.index["pods"])
        elif resource == "noderepairs":
            self.on_repair(key, body, old)
        else:
            self.on_policy(key, body)

    def on_node(self, name: str, body: dict[str, Any] | None) -> None:
        if body is None:
            return
        indexes.wake_on_node(name=name, memo=self.memo)
        kw = {"memo": self.memo, "logger": LOG}
        pods = self.index["pods"]
        held = self.registry.wakeups.under_repair
        if any(serving.wants_serving(p, body, held) for p in pods.get(name, ())):
            self.spawn(
                serving.on_node(
                    name=name, body=body, nodes_by_name=self.index["nodes"], pods_by_node=pods, **kw
                ),
                "on_node",
            )
        if C.ANNOTATION_REPAIR in (body["metadata"].get("annotations") or {}):
            self.spawn(
                orphans.sweep_node(body=body, repairs_by_node=self.index["noderepairs"], **kw),
                "sweep_node",
            )

    def on_pod(self, body: dict[str, Any]) -> None:
        node_name = body["spec"].get("nodeName")
        wake = self.registry.wakeups
        wake.nodes.wake(node_name)
        nodes = self.index["nodes"]
        node = nodes.get(node_name)
        if node_name and serving.wants_serving(body, node[0] if node else None, wake.under_repair):
            self.spawn(
                serving.on_pod(
                    body=body,
                    type="MODIFIED",
                    memo=self.memo,
                    nodes_by_name=nodes,
                    pods_by_node=self.index["pods"],
                    logger=LOG,
                ),
                "on_pod",
            )

    def memo_of(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The object's memo, as kopf keeps it: a shallow copy of the operator's memo
        made when the object is first seen, kept until it is gone (by uid)."""
        uid = body["metadata"]["uid"]
        memo = self.memos.get(uid)
        if memo is None:
            memo = self.memos[uid] = dict(self.memo)
        return memo

    def forget(self, name: str, body: Mapping[str, Any] | None = None) -> None:
        """An object gone: kopf forgets it (a new one of the same name is another)."""
        if body is not None:
            self.memos.pop(body["metadata"]["uid"], None)
        self.bodies.pop(name, None)
        self.stop_daemon(name, at_once=True)
        self.daemons.pop(name, None)
        self.finalizing.discard(name)
        self.adopted.discard(name)

    def on_repair(self, name: str, body: dict[str, Any] | None, old: dict[str, Any] | None) -> None:
        ix = self.index["noderepairs"]
        if (
            body is not None
            and old is not None
            and old["metadata"]["uid"] != body["metadata"]["uid"]
        ):
            self.on_repair(name, None, old)  # deleted and made again between two events
            old = None
        if body is None:
            ix.put(name, None)
            self.forget(name, old)
            if old is not None:
                indexes.wake_on_repair(spec=old["spec"], memo=self.memo)
                self.spawn(
                    orphans.sweep_after_deletion(
                        type="DELETED",
                        spec=old["spec"],
                        memo=self.memo,
                        logger=LOG,
                        nodes_by_name=self.index["nodes"],
                        repairs_by_node=ix,
                    ),
                    "sweep_after_deletion",
                )
            return
        ix.put(
            name,
            indexes.repairs_by_node(
                body=body, name=name, spec=body["spec"], status=body.get("status") or {}
            ),
        )
        live = self.bodies.get(name)
        if live is None:
            live = self.bodies[name] = {}
        live.clear()
        live.update(body)
        indexes.wake_on_repair(spec=body["spec"], memo=self.memo)
        meta = body["metadata"]
        ours = C.FINALIZER in (meta.get("finalizers") or [])
        if meta.get("deletionTimestamp"):
            if ours and name not in self.finalizing:
                self.finalizing.add(name)
                self.stop_daemon(name, at_once=False)
                self.spawn(self.finalize(name), f"abort {name}")
            return
        if not ours and name not in self.adopted:
            self.adopted.add(name)
            self.spawn(self.add_finalizer(name), f"finalizer {name}")
        if name not in self.daemons:
            self.start_daemon(name, self.drive(name, live, self.memo_of(body)))

    def on_policy(self, name: str, body: dict[str, Any] | None) -> None:
        ix = self.index["repairpolicies"]
        if body is None:
            ix.put(name, None)
            return
        ix.put(name, pool_daemon.policies_by_name(name=name, spec=body["spec"]))
        live = self.bodies.setdefault(name, {})
        live.clear()
        live.update(body)
        indexes.wake_on_policy(memo=self.memo)
        if name not in self.daemons:
            self.start_daemon(name, self.watch_pool(name, live, self.memo_of(body)))

    # --- daemons and handlers ---

    def start_daemon(self, name: str, run: Callable[[Stopped], Awaitable[None]]) -> None:
        stopped = Stopped()
        task = asyncio.ensure_future(self._supervise(name, run, stopped))
        self.daemons[name] = (task, stopped)

    async def _supervise(
        self, name: str, run: Callable[[Stopped], Awaitable[None]], stopped: Stopped
    ) -> None:
        """kopf restarts a daemon that raised, after its backoff (2 s)."""
        while not stopped:
            try:
                await run(stopped)
                return
            except asyncio.CancelledError:
                raise
            except EXPECTED:
                pass
            except Exception as e:
                self.sim.checks.crash(f"daemon {name}", e)
                return
            await asyncio.sleep(2.0)

    def stop_daemon(self, name: str, at_once: bool) -> None:
        entry = self.daemons.get(name)
        if entry is None:
            return
        task, stopped = entry
        stopped.event.set()
        if at_once:
            task.cancel()
        else:
            self.loop.call_later(5.0, task.cancel)  # its cancellation_timeout

    def drive(
        self, name: str, body: dict[str, Any], memo: dict[str, Any]
    ) -> Callable[[Stopped], Awaitable[None]]:
        def run(stopped: Stopped) -> Awaitable[None]:
            ix = self.index
            return repair_daemon.drive(  # type: ignore[no-any-return]
                name=name,
                body=body,
                memo=memo,
                logger=LOG,
                stopped=stopped,
                pods_by_node=ix["pods"],
                endpoints_by_pod=ix["endpointslices"],
                nodes_by_name=ix["nodes"],
                repairs_by_node=ix["noderepairs"],
                policies_by_name=ix["repairpolicies"],
                profiles_by_name=self.profiles,
                namespace_labels=self.ns_labels,
                pdbs_by_namespace=ix["pdbs"],
            )

        return run

    def watch_pool(
        self, name: str, body: dict[str, Any], memo: dict[str, Any]
    ) -> Callable[[Stopped], Awaitable[None]]:
        def run(stopped: Stopped) -> Awaitable[None]:
            ix = self.index
            return pool_daemon.watch_pool(  # type: ignore[no-any-return]
                name=name,
                body=body,
                memo=memo,
                logger=LOG,
                stopped=stopped,
                nodes_by_name=ix["nodes"],
                repairs_by_node=ix["noderepairs"],
                policies_by_name=ix["repairpolicies"],
            )

        return run

    async def add_finalizer(self, name: str) -> None:
        for _ in range(10):
            try:
                await self.kube.request(
                    "PATCH", f"{REPAIRS}/{name}", {"metadata": {"finalizers": [C.FINALIZER]}}, MERGE
                )
                return
            except ApiError as e:
                if e.status == 404:
                    return
            except TimeoutError:
                pass
            await asyncio.sleep(1.0)

    async def finalize(self, name: str) -> None:
        """kopf's deletion: the handler (retried until it succeeds), then the finalizer off."""
        delay = 1.0
        while True:
            body = self.bodies.get(name)
            if body is None:
                return
            try:
                await repair_daemon.abort(
                    name=name,
                    spec=body["spec"],
                    status=dict(body.get("status") or {}),
                    body=body,
                    memo=self.memo_of(body),
                    logger=LOG,
                )
                await self.kube.request(
                    "PATCH", f"{REPAIRS}/{name}", {"metadata": {"finalizers": []}}, MERGE
                )
                return
            except ApiError as e:
                if e.status == 404:
                    return
            except (TimeoutError, OSError, kopf.TemporaryError):
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
