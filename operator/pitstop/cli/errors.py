"""The one error type of the `pitstop` command, shared by the parser (pitstop.cli.main)
and the cluster commands (pitstop.cli.commands), so neither imports the other's
module at load time; and `explain`, which turns what the client raises into one line."""

from __future__ import annotations

import contextlib
import json
import re


class CLIError(Exception):
    """A failure to report as one line on stderr, with a non-zero exit code."""


def refused(error: BaseException, what: str) -> CLIError:
    """An API error the command foresaw, as one line: `what` failed, and the API
    server's own message."""
    message = getattr(error, "reason", None)
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        message = json.loads(getattr(error, "body", None) or "").get("message") or message
    return CLIError(f"{what}: {message}")


def explain(error: BaseException) -> str:
    """One line for a failure the commands did not foresee: the API server out of
    reach (urllib3's errors, which the official client lets through), an API error
    (Forbidden, NotFound, ...), or anything else. Judged by the error's module, so
    the parser never imports the client to report a usage error."""
    module = type(error).__module__
    if module.startswith("urllib3"):
        where = _server(error)
        reason = getattr(error, "reason", None) or error
        return f"cannot reach the API server{where}: {_clean(reason)}"
    if module.startswith("kubernetes") and hasattr(error, "status"):
        return _api_error(error)
    return f"{type(error).__name__}: {_clean(error)}"


def _server(error: BaseException) -> str:
    pool = getattr(error, "pool", None)
    host, port = getattr(pool, "host", None), getattr(pool, "port", None)
    if not host:
        return ""
    scheme = getattr(pool, "scheme", "https")
    return f" at {scheme}://{host}:{port}" if port else f" at {scheme}://{host}"


def _api_error(error: BaseException) -> str:
    status, reason = getattr(error, "status", None), getattr(error, "reason", None)
    message = None
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        message = json.loads(getattr(error, "body", None) or "").get("message")
    return (
        f"the API server answered {status} {reason}: {message}"
        if message
        else (f"the API server answered {status} {reason}")
    )


def _clean(error: object) -> str:
    """urllib3 prefixes its messages with the connection object's repr: drop it."""
    text = re.sub(r"<[^<>]*object at 0x[0-9a-f]+>:?\s*", "", str(error))
    return " ".join(text.split()) or type(error).__name__
