"""The memory kopf's start-up gate holds, without a cluster (`python -m bench.gate_memory`).

N pods' first events go through kopf's own per-object worker and event processing
(kopf._core.reactor.queueing.worker, processing.process_resource_event), wrapped as
`pitstop run` wraps them (pitstop.kopf_memory.install), to a shut start-up gate:
kopf's `all` ToggleSet with a toggle per object and a blocker. Each pod is a
watched pod (pitstop.cluster.indexes.watched_pod) indexed by slim_pod, with one
async event handler. Once every pod is indexed, the RSS is read; the gate is
opened, every event processed, and the RSS and its peak (VmHWM) read again.

Each mode runs in a process of its own (RSS is per process): `kopf` waits at the
gate inside kopf's processing (pitstop before index_at_gate), `ahead` indexes
ahead and waits holding the event alone (pitstop now). What it leaves out: the
watch streams, the other kinds, pitstop's own handlers and memo (the operator's
figures are `python -m bench policy`'s)."""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

MODES = ("kopf", "ahead")


def pod(i: int) -> dict[str, Any]:
    """A Deployment's Running pod of 20 a node, as the API server sends it (its
    managedFields aside: the watch drops them before kopf sees the event)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": "bench",
            "name": f"fn-{i % 100}-5d4f8-{i:06d}",
            "uid": f"00000000-0000-0000-0000-{i:012d}",
            "resourceVersion": str(1000 + i),
            "creationTimestamp": "2026-12-07T10:00:00Z",
            "labels": {"app": f"fn-{i % 100}", "pod-template-hash": "5d4f8"},
            "annotations": {"pitstop.dev/inflight-tasks": "0"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"fn-{i % 100}-5d4f8"}
            ],
        },
        "spec": {
            "nodeName": f"node-{i // 20}",
            "containers": [
                {
                    "name": "fn",
                    "image": "registry.local/fn:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                }
            ],
            "terminationGracePeriodSeconds": 30,
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-07T10:00:01Z"}
            ],
        },
    }


def megabytes(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


async def held_at_gate(pods: int, mode: str) -> dict[str, float]:
    import kopf
    from kopf._cogs.aiokits import aiotoggles
    from kopf._cogs.structs.references import Resource
    from kopf._core.actions import lifecycles
    from kopf._core.engines import indexing
    from kopf._core.reactor import inventory, processing, queueing

    from pitstop import kopf_memory
    from pitstop.cluster.indexes import slim_pod, watched_pod

    kopf_memory.install()
    backlog: Any = getattr(queueing, "asyncio")  # noqa: B009  (kopf's, as install() left it)
    processing.process_resource_event = kopf_memory.forgetting(  # type: ignore[assignment]
        kopf_memory._ORIGINAL, at_gate=mode == "ahead"
    )
    resource = Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True)
    registry, handled, done = kopf.OperatorRegistry(), [0], asyncio.Event()

    @kopf.index("pods", id="pods_by_node", registry=registry)
    async def pods_by_node(body: kopf.Body, **_: Any) -> dict[str, Any]:
        return {body["spec"]["nodeName"]: slim_pod(body)}

    @kopf.on.event("pods", registry=registry)
    async def on_pod(**_: Any) -> None:
        handled[0] += 1
        if handled[0] == pods:
            done.set()

    indexers = indexing.OperatorIndexers()
    indexers.ensure(registry._indexing.get_all_handlers())
    memories, settings = inventory.ResourceMemories(), kopf.OperatorSettings()
    gate = aiotoggles.ToggleSet(all)
    blocker = await gate.make_toggle(name="blocker")
    processor: Any = functools.partial(
        processing.process_resource_event,
        lifecycle=lifecycles.all_at_once,
        indexers=indexers,
        registry=registry,
        settings=settings,
        memories=memories,
        memobase=cast(Any, kopf.Memo()),
        resource=resource,
        event_queue=asyncio.Queue(),
    )
    streams: dict[Any, Any] = {}
    signaller, workers = asyncio.Condition(), []
    base = megabytes("VmRSS")
    for i in range(pods):
        body = watched_pod(pod(i))
        event = {"type": None, "object": body}
        key = (resource, body["metadata"]["uid"])
        toggle = await gate.make_toggle(name=repr(key))
        streams[key] = queueing.Stream(backlog=backlog.Queue(), pressure=backlog.Event())
        await streams[key].backlog.put(event)
        worker = queueing.worker(
            signaller=signaller,
            resource_indexed=toggle,
            operator_indexed=gate,
            processor=processor,
            settings=settings,
            streams=streams,
            key=key,
        )
        workers.append(asyncio.create_task(worker))
        if i % 500 == 0:
            await asyncio.sleep(0)  # the watch's pace: the workers start as events come
    async with gate._condition:  # until every pod is indexed and its toggle dropped
        await gate._condition.wait_for(lambda: len(list(gate)) == 1)
    gc.collect()
    at_gate = megabytes("VmRSS")
    await gate.drop_toggle(blocker)
    await done.wait()
    while memories._items:  # noqa: ASYNC110  (kopf's private dict: nothing to wait on)
        await asyncio.sleep(0.05)
    gc.collect()
    after = megabytes("VmRSS")
    for w in workers:
        w.cancel()
    return {
        "base": base,
        "at_gate": at_gate - base,
        "after": after - base,
        "peak": megabytes("VmHWM") - base,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gate_memory", description=__doc__)
    p.add_argument("--pods", type=int, default=20000)
    p.add_argument("--mode", choices=MODES, help="one mode, in this process")
    args = p.parse_args(argv)
    if args.mode:
        r = asyncio.run(held_at_gate(args.pods, args.mode))
        print(" ".join(f"{k}={v:.1f}" for k, v in r.items()), flush=True)
        return 0
    print(f"{args.pods:,} pods at kopf's start-up gate: RSS over the process's base, MB")
    print(f"  {'':<28}{'base':>7}{'at gate':>9}{'after':>8}{'peak':>8}")
    for mode in MODES:
        out = subprocess.run(
            [sys.executable, "-m", "bench.gate_memory", "--pods", str(args.pods), "--mode", mode],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = {k: float(v) for k, v in (kv.split("=") for kv in out.split())}
        label = "waits in kopf's processing" if mode == "kopf" else "indexed ahead (pitstop)"
        figures = "".join(f"{r[k]:{w}.1f}" for k, w in (("base", 7), ("at_gate", 9)))
        figures += "".join(f"{r[k]:8.1f}" for k in ("after", "peak"))
        print(f"  {label:<28}{figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
