"""Which InstanceProfile describes a pod, and of which kind the pod is. Pure.

- **Precedence.** Several profiles may match one pod. The oldest profile wins
  (metadata.creationTimestamp, then the name): installing a new profile never
  takes over pods an existing one already describes, in the middle of a drain or
  otherwise. Every profile involved gets `Conflict=True` naming the others, and a
  repair that meets such a pod posts a Warning Event.
- **Kind.** The pod's own `pitstop.dev/instance-type` label wins; then the
  profile's `kind` unless it is `auto`; then the EndpointSlice rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pitstop import constants, selectors
from pitstop.instances.sources.profiles import Profile
from pitstop.models import InstanceKind

C = constants


@dataclass(frozen=True)
class Match:
    """The profile that describes a pod, if any, and the others that also match."""

    profile: Profile | None
    others: tuple[str, ...] = ()
    """Names of the other matching profiles, which lost on precedence."""
    uncertain: bool = False
    """A profile's namespaceSelector could not be evaluated (the namespace is not
    known yet): the pod's source is unknown and it counts as busy."""

    @property
    def conflict(self) -> bool:
        return bool(self.others)


def matches(
    profile: Profile, pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str] | None
) -> bool | None:
    """True or False; None when the namespace's labels are needed but unknown."""
    if not selectors.matches(profile.pod_selector, pod_labels):
        return False
    if profile.namespace_selector is None:
        return True
    if namespace_labels is None:
        return None
    return selectors.matches(profile.namespace_selector, namespace_labels)


def match(
    profiles: Iterable[Profile],
    pod_labels: Mapping[str, str],
    namespace_labels: Mapping[str, str] | None,
) -> Match:
    """The winning profile for one pod (see the module's precedence rule)."""
    found, uncertain = [], False
    for p in profiles:
        m = matches(p, pod_labels, namespace_labels)
        if m is None:
            uncertain = True
        elif m:
            found.append(p)
    if not found:
        return Match(None, uncertain=uncertain)
    found.sort(key=lambda p: p.precedence)
    return Match(found[0], tuple(p.name for p in found[1:]), uncertain=uncertain)


def kind(
    profile: Profile | None, label: str | None, backs_endpoint: bool, gated: bool = False
) -> str:
    """sync or async: the pod's label, then the profile's kind, then the pod itself:
    one that declares the serving gate, or backs an EndpointSlice endpoint, is sync.
    The gate counts on its own because the EndpointSlices are seen late: a pod just
    made Ready may be routed before the operator's view lists it, and taken for
    async it would be evicted still routed (invariant 2). Its declaration says
    routing follows its readiness; closing it costs a pod no Service routes nothing."""
    if label in (C.INSTANCE_SYNC, C.INSTANCE_ASYNC):
        return label
    if profile is not None and profile.spec.kind is not InstanceKind.AUTO:
        return str(profile.spec.kind.value)
    return C.INSTANCE_SYNC if backs_endpoint or gated else C.INSTANCE_ASYNC


def winners(profiles: Iterable[Profile]) -> dict[tuple[str, str], str]:
    """For each pair of profiles (names sorted), the one that wins a pod both match."""
    ordered = sorted(profiles, key=lambda p: p.precedence)
    found: dict[tuple[str, str], str] = {}
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            found[pair(a.name, b.name)] = a.name
    return found


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)
