"""The two kinds of failure the controller tells apart.

A `TransientError` (engine unreachable, connection reset, 5xx, timeout) is worth retrying
soon; a `PermanentError` (image does not exist, invalid reference, bad config) will fail the
same way again, so its reason is recorded and the retry waits for the crash backoff instead of
hot-looping. Library exceptions are translated into these at the adapter boundary.
"""

from __future__ import annotations


class ControllerError(Exception):
    """Base of the controller's own errors; `reason` is what operators read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientError(ControllerError):
    """Retry with backoff: the same call may well succeed later."""


class PermanentError(ControllerError):
    """Record and stop retrying this attempt: the same call would fail the same way."""


class ConflictError(PermanentError):
    """A container holds our name but not our labels: never adopted silently."""


class StoreUnavailable(TransientError):
    """The database could not be reached or lost the connection."""


class Deposed(ControllerError):
    """This controller's fencing epoch is no longer current: another leader has taken over.
    Nothing it writes is accepted; it must stop acting and stand by."""
