"""What the operator's log says of what it does: every Event it posts is also a
log line (INFO for Normal, WARNING for Warning), so `kubectl logs` tells the same
story as `kubectl get events`: a fault detected, a repair created, admitted,
cordoned, ... kopf's own posting of log lines as Events is off (handlers.py), so
nothing is told twice."""

from __future__ import annotations

import logging

logger = logging.getLogger("pitstop")


def event(kind: str, name: str, type_: str, reason: str, message: str) -> None:
    level = logging.WARNING if type_ == "Warning" else logging.INFO
    logger.log(level, f"{kind} {name}: {reason}: {message}")
