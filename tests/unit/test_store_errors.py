"""Which database errors the store retries as a lost connection: pure classification."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from controller.store.retry import transient


class DriverError(Exception):
    """What asyncpg's errors carry through SQLAlchemy's adapter: a SQLSTATE."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "message", "expected"),
    [
        ("57P03", "the database system is shutting down", True),
        ("57P01", "terminating connection due to administrator command", True),
        ("57P02", "terminating connection because of crash of another server process", True),
        ("08006", "connection failure", True),
        ("23503", "violates foreign key constraint", False),
        ("42601", "syntax error", False),
        (None, "something else", False),
    ],
)
def test_a_server_going_away_is_transient_and_a_bad_row_is_not(
    sqlstate: str | None, message: str, expected: bool
) -> None:
    error = DBAPIError("SELECT 1", {}, DriverError(message, sqlstate))
    assert transient(error) is expected


def test_connection_level_classes_are_transient_whatever_their_state() -> None:
    assert transient(OperationalError("SELECT 1", {}, DriverError("gone", None)))
    assert transient(ConnectionResetError())
    assert not transient(IntegrityError("INSERT", {}, DriverError("dup", "23505")))
