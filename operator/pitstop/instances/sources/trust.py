"""The trust rule, and the progress of httpPost drain signals. Pure: no clocks (the
caller passes the times).

A count is only trusted if the poll that read it *started* after the drain signal
took effect: acknowledged (`httpPost`), or seen by pitstop on the pod's own version
(`annotation`, and `none`, whose mark pitstop still writes). Until then the
instance counts as busy. So there is always one more poll after the signal, and
with a runtime that refuses (or counts) new work from the moment it acknowledges,
a 0 can no longer go up before the eviction.

A source whose answer describes a moment before the poll (Knative's queue-proxy
serves the stats of its last whole 1-second window) has a `lag`: its reading
counts as taken that much earlier, so the window it describes ended after the
drain signal took effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pitstop.instances.sources.errors import SourceError
from pitstop.instances.sources.profiles import HTTP_POST, Profile

KNATIVE_STAT_LAG = timedelta(seconds=2)
"""How old a Knative queue-proxy's Stat can be when it is read: its window is 1 s
(reportingPeriod), reported on a ticker; 1 s more for a late tick."""


@dataclass(frozen=True)
class Reading:
    """One poll of an instance: when it started and what it found."""

    started: datetime
    count: int | None = None
    error: SourceError | None = None
    lag: timedelta = timedelta(0)
    """How long before `started` the moment the answer describes may lie."""


def answer_lag(profile: Profile) -> timedelta:
    """The lag of a profile's polled source: Knative's stats window, else none."""
    return KNATIVE_STAT_LAG if profile.spec.tasks.knative is not None else timedelta(0)


@dataclass(frozen=True)
class Polled:
    """What a polled source says about an instance now, for the state machine."""

    count: int = 0
    error: SourceError | None = None
    """The last poll failed: busy, and reported."""
    pending: str | None = None
    """No trusted reading yet (why): busy, not an error."""

    @property
    def busy(self) -> bool:
        return self.count > 0 or self.error is not None or self.pending is not None


def polled(reading: Reading | None, signal_at: datetime | None) -> Polled:
    """The trust rule: a count counts only if its poll started after the drain
    signal took effect (`signal_at`); before that the instance is busy."""
    if signal_at is None:
        return Polled(pending="waiting for the drain signal to take effect")
    if reading is None:
        return Polled(pending="not read yet")
    if reading.started - reading.lag <= signal_at:
        return Polled(pending="last read predates the drain signal")
    if reading.error is not None:
        return Polled(error=reading.error)
    return Polled(count=reading.count or 0)


@dataclass
class SignalState:
    """Progress of one instance's httpPost drain signal."""

    attempts: int = 0
    acked_at: datetime | None = None
    last_error: str | None = None
    next_at: datetime | None = None
    reported_at: datetime | None = None
    """When the missing acknowledgement was reported (Warning Event)."""
    history: list[str] = field(default_factory=list)


SIGNAL_REPORT_AFTER = 5
"""Failed drain-signal attempts before the instance is reported (about 8 s)."""


def signal_backoff(attempts: int) -> timedelta:
    """Delay after the n-th failed drain signal: 0.25 s doubling to 5 s."""
    return timedelta(seconds=min(0.25 * 2 ** max(attempts - 1, 0), 5.0))


def signal_failed(state: SignalState, now: datetime, error: str) -> bool:
    """Records a failed attempt; True when it is time to report the instance."""
    state.attempts += 1
    state.last_error = error
    state.next_at = now + signal_backoff(state.attempts)
    if state.reported_at is None and state.attempts >= SIGNAL_REPORT_AFTER:
        state.reported_at = now
        return True
    return False


def signal_time(
    signal: str, *, marked_at: datetime | None, state: SignalState | None
) -> datetime | None:
    """When the drain signal took effect for the trust rule.

    `marked_at`: when pitstop first saw its pitstop.dev/draining mark on the pod's
    own version. httpPost: when the POST was acknowledged; a runtime that never
    acknowledges is reported, and from then on its count is used as with `none`
    (the race with a new task is then open for it: documented)."""
    if signal == HTTP_POST:
        if state is None:
            return None
        return state.acked_at or state.reported_at
    return marked_at
