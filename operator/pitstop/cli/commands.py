"""The user-facing `pitstop` commands that talk to the cluster: repair, status,
plan, done, abort. Synchronous (official client); each failure is a CLIError with
one line for the user."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from pitstop import constants
from pitstop.cli.errors import CLIError, refused
from pitstop.cluster.kubeconfig import load_configuration, resolve_source
from pitstop.instances import contract
from pitstop.instances.sources import addressing, matching, trust, watchdog
from pitstop.instances.sources.errors import SourceError
from pitstop.instances.sources.poller import Target, TaskPoller
from pitstop.instances.sources.profiles import ANNOTATION, Profile, parse_profile
from pitstop.models import FINAL_PHASES, Phase
from pitstop.repair import drain

C = constants
G, V, P = C.GROUP, C.VERSION, C.NODEREPAIR_PLURAL


def api(kubeconfig: str | None, context: str | None = None) -> client.ApiClient:
    return client.ApiClient(load_configuration(resolve_source(kubeconfig, os.environ, context)))


def _explain(e: ApiException, what: str) -> CLIError:
    return refused(e, what)


# --- repair ---


def repair_body(
    node: str,
    name: str,
    reason: str | None,
    strategy: str,
    job_file: str | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    dry_run: bool = False,
    require_room: bool = True,
) -> dict[str, Any]:
    repair: dict[str, Any] = {"strategy": strategy}
    if strategy == "Job":
        if not job_file:
            raise CLIError("--strategy Job needs --job-file (a batch/v1 Job or JobTemplateSpec)")
        repair["job"] = {"template": _job_template(job_file)}
    if strategy == "Webhook":
        if not webhook_url:
            raise CLIError("--strategy Webhook needs --webhook-url")
        repair["webhook"] = {"url": webhook_url}
        if webhook_secret:
            secret, _, key = webhook_secret.partition("/")
            if not secret or not key:
                raise CLIError("--webhook-secret must be NAME/KEY (a Secret in pitstop-system)")
            repair["webhook"]["secretRef"] = {"name": secret, "key": key}
    spec: dict[str, Any] = {"nodeName": node, "repair": repair, "dryRun": dry_run}
    if reason:
        spec["reason"] = reason
    if not require_room:
        spec["requireRoom"] = False
    return {
        "apiVersion": C.API_VERSION,
        "kind": "NodeRepair",
        "metadata": {"name": name},
        "spec": spec,
    }


def _job_template(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise CLIError(f"{path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise CLIError(f"{path}: not valid YAML") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("spec"), dict):
        raise CLIError(f"{path}: expected a Job or a JobTemplateSpec with a spec")
    template: dict[str, Any] = {"spec": doc["spec"]}
    meta = doc.get("metadata")
    kept = {k: v for k, v in (meta or {}).items() if k in ("labels", "annotations")}
    if kept:  # a Job's name and namespace are pitstop's to choose
        template["metadata"] = kept
    return template


def default_name(node: str, now: datetime) -> str:
    return f"{node}-{now:%Y%m%d-%H%M%S}"[:253]


def create_repair(api_client: client.ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api_client)
    try:
        created: dict[str, Any] = custom.create_cluster_custom_object(G, V, P, body)
    except ApiException as e:
        raise _explain(e, f"cannot create NodeRepair {body['metadata']['name']}") from e
    return created


def follow(
    api_client: client.ApiClient, name: str, out: TextIO = sys.stdout, timeout: float = 3600
) -> str:
    """Prints one line per change of phase or counts until the repair ends (or, for
    a dry run, shows its plan); returns the final phase."""
    custom = client.CustomObjectsApi(api_client)
    deadline = time.monotonic() + timeout
    shown: tuple[Any, ...] = ()
    while time.monotonic() < deadline:
        stream = _resumable(
            watch.Watch().stream(
                custom.list_cluster_custom_object,
                G,
                V,
                P,
                field_selector=f"metadata.name={name}",
                timeout_seconds=max(1, min(60, int(deadline - time.monotonic()))),
            )
        )
        for event in stream:
            if event["type"] == "DELETED":
                raise CLIError(f"NodeRepair {name} was deleted")
            obj = event["object"]
            status = obj.get("status") or {}
            line = progress_line(status)
            if line and (status.get("phase"), line) != shown:
                shown = (status.get("phase"), line)
                print(f"{datetime.now():%H:%M:%S}  {line}", file=out, flush=True)
            phase = status.get("phase")
            if phase in FINAL_PHASES or (
                (obj.get("spec") or {}).get("dryRun") and status.get("plan")
            ):
                return str(phase)
    raise CLIError(
        f"NodeRepair {name} still {shown[0] if shown else 'pending'} after {timeout:.0f}s"
    )


def _resumable(stream: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The events of one watch, ended quietly where the connection broke or the
    API server expired it (410 Gone): the caller lists and watches again, as
    kubectl does. Any other error (Forbidden, ...) is the caller's to report."""
    try:
        for event in stream:
            if event.get("type") == "ERROR":
                code = (event.get("object") or {}).get("code")
                if code == 410:
                    return
                raise CLIError(f"watch failed: {(event.get('object') or {}).get('message')}")
            yield event
    except ApiException as e:
        if e.status == 410:
            return
        raise _explain(e, "watch failed") from e
    except (ProtocolError, ReadTimeoutError):
        return


def progress_line(status: Mapping[str, Any]) -> str:
    phase = status.get("phase")
    if not phase:
        return ""
    counts = status.get("instances") or {}
    left, tasks = counts.get("remaining", 0), counts.get("inflightTasks", 0)
    detail = f"instances left {left}, tasks in flight {tasks}"
    return f"{phase:<16} {detail:<40} {status.get('message') or ''}".rstrip()


# --- status ---


HEADER = ("NAME", "NODE", "PHASE", "INSTANCES", "TASKS", "AGE")
WIDE = ("REASON", "STRATEGY", "POLICY", "STEP")


def ladder_of(spec: Mapping[str, Any]) -> list[str]:
    """The strategies of a repair's ladder, in order (a strategy is a ladder of one)."""
    repair = spec.get("repair") or {}
    steps = repair.get("steps") or [{"strategy": repair.get("strategy") or "Manual"}]
    return [str(s.get("strategy") or "Manual") for s in steps]


def step_cell(r: Mapping[str, Any]) -> str:
    """The ladder step that runs, with its attempt: "2/3:Webhook#1" (empty before
    Repairing; a one-step ladder shows its attempt alone: "#2")."""
    rs = (r.get("status") or {}).get("repair") or {}
    if not rs.get("attempts"):
        return ""
    strategies = ladder_of(r.get("spec") or {})
    if len(strategies) == 1:
        return f"#{rs['attempts']}"
    n = min(int(rs.get("step") or 1), len(strategies))
    return f"{n}/{len(strategies)}:{strategies[n - 1]}#{rs['attempts']}"


def status_row(r: Mapping[str, Any], now: datetime, wide: bool = False) -> tuple[str, ...]:
    st = r.get("status") or {}
    spec = r.get("spec") or {}
    counts = st.get("instances") or {}
    row: tuple[str, ...] = (
        r["metadata"]["name"],
        spec.get("nodeName", ""),
        st.get("phase") or "Pending",
        str(counts.get("remaining", "")),
        str(counts.get("inflightTasks", "")),
        age(r["metadata"].get("creationTimestamp"), now),
    )
    if wide:
        row += (
            spec.get("reason") or "",
            ">".join(ladder_of(spec)),
            (r["metadata"].get("labels") or {}).get(C.LABEL_POLICY, ""),
            step_cell(r),
        )
    return (*row, st.get("message") or "")


def status_table(repairs: Sequence[Mapping[str, Any]], now: datetime, wide: bool = False) -> str:
    head = (*HEADER, *(WIDE if wide else ()), "MESSAGE")
    ordered = sorted(repairs, key=lambda r: r["metadata"].get("creationTimestamp", ""))
    return _columns([head, *(status_row(r, now, wide) for r in ordered)])


def _columns(rows: Sequence[tuple[str, ...]]) -> str:
    """Aligned like kubectl's tables; the last column (the message) runs free."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        (
            "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
            + "   "
            + row[-1]
        ).rstrip()
        for row in rows
    )


def render(repairs: Sequence[Mapping[str, Any]], output: str | None, one: bool = False) -> str:
    """The repairs as `-o` asks: a table (wide: more columns), or the objects as JSON or
    YAML (one object when one was named, else a v1 List, as kubectl prints them)."""
    if output in ("json", "yaml"):
        doc: Any = (
            repairs[0]
            if one and len(repairs) == 1
            else {"apiVersion": "v1", "kind": "List", "items": list(repairs)}
        )
        if output == "json":
            return json.dumps(doc, indent=2)
        return yaml.safe_dump(doc, sort_keys=False).rstrip()
    if not repairs:
        return "No NodeRepairs."
    return status_table(repairs, datetime.now(UTC), wide=output == "wide")


def age(created: str | None, now: datetime) -> str:
    if not created:
        return "?"
    seconds = int((now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def list_repairs(api_client: client.ApiClient) -> list[dict[str, Any]]:
    return list_repairs_at(api_client)[0]


def list_repairs_at(
    api_client: client.ApiClient, names: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], str]:
    """The repairs (only `names`, when given: each must exist) and the list's
    resourceVersion, to watch from."""
    try:
        answer = client.CustomObjectsApi(api_client).list_cluster_custom_object(G, V, P)
    except ApiException as e:
        raise _explain(e, "cannot list NodeRepairs") from e
    items = list(answer.get("items") or [])
    if names:
        found = {r["metadata"]["name"]: r for r in items}
        missing = [n for n in names if n not in found]
        if missing:
            raise CLIError(f"NodeRepair {', '.join(missing)} not found")
        items = [found[n] for n in dict.fromkeys(names)]
    return items, str((answer.get("metadata") or {}).get("resourceVersion") or "")


def watch_rows(
    api_client: client.ApiClient,
    version: str,
    names: Sequence[str] = (),
    wide: bool = False,
    out: TextIO = sys.stdout,
) -> None:
    """Print a repair's row each time it changes, until interrupted; a broken or
    expired watch is resumed from a new list (whose changed rows are printed)."""
    custom = client.CustomObjectsApi(api_client)
    shown: dict[str, tuple[str, ...]] = {}
    while True:
        stream = _resumable(
            watch.Watch().stream(
                custom.list_cluster_custom_object,
                G,
                V,
                P,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=300,
            )
        )
        for event in stream:
            obj = event["object"]
            meta = obj.get("metadata") or {}
            version = meta.get("resourceVersion") or version
            name = meta.get("name", "")
            if event["type"] == "BOOKMARK" or (names and name not in names):
                continue
            row = status_row(obj, datetime.now(UTC), wide)
            if event["type"] == "DELETED":
                row = (*row[:2], "Deleted", *row[3:])
            same = row[:5] + row[6:]  # a change of age alone is no change
            if shown.get(name) != same:
                shown[name] = same
                print(_columns([row]), file=out, flush=True)
        _, version = list_repairs_at(api_client)


# --- plan ---


def plan(api_client: client.ApiClient, node: str) -> tuple[dict[str, Any], list[contract.Instance]]:
    """What a repair of `node` would do now, computed here from the cluster's
    state with the operator's own rules (no NodeRepair is created)."""
    core = client.CoreV1Api(api_client)
    try:
        core.read_node(node)
    except ApiException as e:
        if e.status == 404:
            raise CLIError(f"node {node} does not exist") from e
        raise _explain(e, f"cannot read node {node}") from e

    def raw(obj: Any) -> dict[str, Any]:
        body: dict[str, Any] = api_client.sanitize_for_serialization(obj)
        return body

    pods = [
        raw(p)
        for p in core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
    ]
    pods = [p for p in pods if contract.is_instance(p)]
    namespaces = sorted({p["metadata"]["namespace"] for p in pods})
    discovery, policy = client.DiscoveryV1Api(api_client), client.PolicyV1Api(api_client)
    ready: dict[str, list[bool]] = {}
    pdbs: list[dict[str, Any]] = []
    for ns in namespaces:
        for s in discovery.list_namespaced_endpoint_slice(ns).items:
            for ep in s.endpoints or []:
                if ep.target_ref and ep.target_ref.kind == "Pod":
                    flag = not (ep.conditions and ep.conditions.ready is False)
                    ready.setdefault(f"{ns}/{ep.target_ref.name}", []).append(flag)
        pdbs.extend(raw(b) for b in policy.list_namespaced_pod_disruption_budget(ns).items)
    profiles = _profiles(api_client)
    ns_labels = {ns: _namespace_labels(core, ns) for ns in namespaces} if profiles else {}
    matches = {
        contract.key(p): matching.match(
            profiles, p["metadata"].get("labels") or {}, ns_labels.get(p["metadata"]["namespace"])
        )
        for p in pods
    }
    readings = _read_sources(pods, matches)
    found = []
    warnings = []
    for p in pods:
        k = contract.key(p)
        m = matches[k]
        polled = None
        if k in readings:
            r = readings[k]
            polled = trust.Polled(count=r.count or 0, error=r.error)
        found.append(contract.observe(p, ready.get(k), m, polled))
        if m.others and m.profile is not None:
            winner = m.profile.name
            warnings.append(
                f"{C.REASON_CONFLICTING_PROFILES}: {k} is matched by {winner} and"
                f" {', '.join(m.others)}; the oldest, {winner}, describes it"
            )
        grace = watchdog.watchdog_grace(p, m.profile)
        if grace is not None:
            needed, configured = grace
            warnings.append(
                f"{C.REASON_GRACE_PERIOD_TOO_SHORT}: {k} has terminationGracePeriodSeconds"
                f" {configured}, of-watchdog needs more than {needed:g} s on SIGTERM"
                " (healthcheck_interval + write_timeout): requests in flight would be cut"
            )
    result = drain.make_plan(found, contract.blocking_pdbs(pdbs, pods)).wire()
    if warnings:
        result["warnings"] = warnings
    return result, found


def _profiles(api_client: client.ApiClient) -> list[Profile]:
    """The usable InstanceProfiles (none when the CRD is not installed)."""
    try:
        listed = client.CustomObjectsApi(api_client).list_cluster_custom_object(
            G, V, C.INSTANCEPROFILE_PLURAL
        )
    except ApiException as e:
        if e.status == 404:
            return []
        raise _explain(e, "cannot list InstanceProfiles") from e
    found = [parse_profile(item) for item in listed.get("items") or []]
    return [p for p in found if isinstance(p, Profile)]


def _namespace_labels(core: client.CoreV1Api, name: str) -> dict[str, str] | None:
    try:
        return dict(core.read_namespace(name).metadata.labels or {})
    except ApiException:
        return None  # unknown: a profile with a namespaceSelector cannot be decided


def _read_sources(
    pods: list[dict[str, Any]], matches: Mapping[str, matching.Match]
) -> dict[str, trust.Reading]:
    """One read of each polled source (the pods' own addresses: run where they are
    reachable, as the operator does); nothing is signalled."""
    targets = []
    for p in pods:
        m = matches[contract.key(p)]
        if m.profile is None or m.profile.spec.tasks.type == ANNOTATION:
            continue
        try:
            request = addressing.poll_request(m.profile, p)
            targets.append(Target(contract.key(p), "", m.profile, poll=request))
        except SourceError as e:
            targets.append(Target(contract.key(p), "", m.profile, error=e))
    if not targets:
        return {}

    async def read() -> dict[str, trust.Reading]:
        poller = TaskPoller()
        try:
            return await poller.read_once(targets)
        finally:
            await poller.close()

    return asyncio.run(read())


def plan_text(node: str, the_plan: Mapping[str, Any], found: list[contract.Instance]) -> str:
    lines = [f"A repair of {node} would now:"]
    sync, async_ = the_plan.get("sync", []), the_plan.get("async", [])
    lines.append(f"  cordon {node} and taint it {C.TAINT_MAINTENANCE}:NoSchedule")
    lines.append(f"  deregister {len(sync)} sync instances: {', '.join(sync) or '-'}")
    if the_plan.get("noServingGate"):
        lines.append(
            f"    without the {C.CONDITION_SERVING} gate (leave routing only when evicted): "
            + ", ".join(the_plan["noServingGate"])
        )
    busy = [
        f"{i.key}={i.tasks.invalid or i.tasks.error or i.tasks.count}"
        + (
            f" ({i.tasks.source} of {i.profile})"
            if i.profile and i.tasks.source != "annotation"
            else ""
        )
        for i in found
        if i.tasks.busy
    ]
    lines.append(
        f"  wait for {the_plan.get('inflightTasks', 0)} tasks in flight"
        + (f": {', '.join(busy)}" if busy else "")
    )
    deadlines = the_plan.get("taskDeadlines") or []
    if deadlines:
        lines.append(
            "  task deadlines its instances declare: "
            + ", ".join(f"{d['instance']}={d['seconds']:g}s ({d['source']})" for d in deadlines)
        )
    auto = the_plan.get("autoTaskTimeout")
    if auto:
        lines.append(f"  with drain.taskTimeoutSeconds: {auto['message']}")
    evicted = len(sync) + len(async_)
    lines.append(f"  evict {evicted} instances ({len(async_)} async: {', '.join(async_) or '-'})")
    blocking = the_plan.get("blockingPDBs") or []
    lines.append(
        f"  blocked now by PodDisruptionBudgets: {', '.join(blocking) if blocking else 'none'}"
    )
    described = sorted({i.profile for i in found if i.profile})
    if described:
        lines.append(f"  InstanceProfiles describing its instances: {', '.join(described)}")
    lines.extend(f"  warning {w}" for w in the_plan.get("warnings") or [])
    return "\n".join(lines)


# --- abort ---


def abort(api_client: client.ApiClient, name: str) -> str:
    """Delete the repair; its finalizer (the operator) gives the node back."""
    custom = client.CustomObjectsApi(api_client)
    try:
        obj: dict[str, Any] = custom.get_cluster_custom_object(G, V, P, name)
        custom.delete_cluster_custom_object(G, V, P, name)
    except ApiException as e:
        if e.status == 404:
            raise CLIError(f"NodeRepair {name} does not exist") from e
        raise _explain(e, f"cannot delete NodeRepair {name}") from e
    node = (obj.get("spec") or {}).get("nodeName", "its node")
    phase = (obj.get("status") or {}).get("phase") or "Pending"
    if phase in FINAL_PHASES:
        return f"noderepair/{name} deleted (it had ended: {phase})"
    return f"noderepair/{name} deleted while {phase}: the operator gives {node} back"


def wait_gone(api_client: client.ApiClient, name: str, timeout: float) -> None:
    """Until the repair is gone: its finalizer ran, so the node is given back."""
    custom = client.CustomObjectsApi(api_client)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            custom.get_cluster_custom_object(G, V, P, name)
        except ApiException as e:
            if e.status == 404:
                return
            raise _explain(e, f"cannot read NodeRepair {name}") from e
        time.sleep(0.5)
    raise CLIError(
        f"NodeRepair {name} still there after {timeout:.0f}s: is the operator running?"
        " (its finalizer gives the node back)"
    )


# --- done ---


def mark_done(api_client: client.ApiClient, name: str, failed: bool) -> str:
    custom = client.CustomObjectsApi(api_client)
    try:
        obj: dict[str, Any] = custom.get_cluster_custom_object(G, V, P, name)
    except ApiException as e:
        if e.status == 404:
            raise CLIError(f"NodeRepair {name} does not exist") from e
        raise _explain(e, f"cannot read NodeRepair {name}") from e
    phase = (obj.get("status") or {}).get("phase")
    strategies = ladder_of(obj.get("spec") or {})
    step = int(((obj.get("status") or {}).get("repair") or {}).get("step") or 1)
    strategy = strategies[min(step, len(strategies)) - 1]
    if "Manual" not in strategies:
        raise CLIError(
            f"NodeRepair {name} uses strategy {strategy}; only Manual repairs wait for done"
        )
    if strategy != "Manual" and phase == Phase.REPAIRING:
        raise CLIError(
            f"NodeRepair {name} runs step {step} ({strategy}); the mark counts in a Manual step"
        )
    if phase in FINAL_PHASES:
        raise CLIError(f"NodeRepair {name} is already {phase}")
    value = "false" if failed else "true"
    patch = {"metadata": {"annotations": {C.ANNOTATION_REPAIRED: value}}}
    try:
        custom.patch_cluster_custom_object(G, V, P, name, patch)
    except ApiException as e:
        raise _explain(e, f"cannot annotate NodeRepair {name}") from e
    said = f"NodeRepair {name} marked {'failed' if failed else 'repaired'}"
    if phase != Phase.REPAIRING:
        return f"{said}; it is {phase or 'Pending'}: the mark counts once it is Repairing"
    return said
