"""Retrying a store call on connection-level failures, and which failures those are.

A lost connection or a restarting server is worth a few jittered tries; anything else (a
constraint, a bad value) is not, and a call that keeps failing surfaces as
`errors.StoreUnavailable` so the caller never sees a driver exception.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from controller import errors

P = ParamSpec("P")
T = TypeVar("T")

DB_RETRY_ATTEMPTS = 5

# SQLSTATEs that mean "this connection or server is going or gone", whatever exception class
# the driver maps them to: connection exceptions (class 08), and the server shutting down or
# starting up (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, seen as
# a plain DBAPIError from asyncpg when a connect meets a stopping server).
_GONE_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def transient(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return bool(exc.connection_invalidated) or sqlstate.startswith(_GONE_SQLSTATES)
    return isinstance(exc, OSError | ConnectionError)


def retrying(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Retry one store call on connection-level failures: 5 tries, jittered, then give up."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(transient),
                stop=stop_after_attempt(DB_RETRY_ATTEMPTS),
                wait=wait_exponential_jitter(multiplier=0.05, max=2.0),
                reraise=False,
            ):
                with attempt:
                    return await fn(*args, **kwargs)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise errors.StoreUnavailable(f"database unavailable: {cause}") from cause
        raise AssertionError("unreachable: tenacity either returns or raises")

    return wrapper
