"""The one error of the task sources: a count that could not be read, and why (no
answer at all, or no count in it). Pure."""

from __future__ import annotations

UNREACHABLE = "Unreachable"
"""No answer: connection refused or reset, timeout, an HTTP error status."""
INVALID = "Invalid"
"""An answer without a usable count: not the expected format, metric absent, negative."""


class SourceError(Exception):
    """A count that could not be read; `kind` is UNREACHABLE or INVALID."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SourceError) and (self.kind, self.message) == (
            other.kind,
            other.message,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.message))

    def __repr__(self) -> str:
        return f"SourceError({self.kind!r}, {self.message!r})"
