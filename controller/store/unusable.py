"""Rows the loads cannot read (SQLite, where a column holds whatever was written).

A load that fails on such a row scans the tables the loads read, leaves the rows it finds out
of every later load until they are fixed, and holds the deployments they belong to: one bad
row costs its deployment, not every pass. Each row is reported once, in the operator's terms.
PostgreSQL's column types refuse such values on write, so there this is a pass-through.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Table,
    and_,
    literal_column,
    select,
    true,
    type_coerce,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import NullType

from controller.readmodel import DEPLOYMENTS, HISTORY, NODES, REPLICAS, RESOURCES, STATE

log = structlog.get_logger("controller.store")

T = TypeVar("T")

# While rows are unusable (SQLite), a scan this often sees whether they were fixed.
_RESCAN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Unusable:
    """A row the controller cannot read: which, where, and why, in the operator's terms."""

    table: str
    rowid: int
    row_id: str  # the row's id as stored (text, perhaps malformed itself)
    column: str
    value: str
    problem: str
    deployment_id: uuid.UUID | None  # the deployment it belongs to, when that is readable

    @property
    def reason(self) -> str:
        return (
            f"unusable row: {self.table}.{self.column} = {self.value} {self.problem} "
            f"(row {self.row_id}); deployment held until the row is fixed"
        )


# What `UnusableRows.find` reads per table: the columns the loads read.
_SCANNED: dict[str, tuple[Table, str | None]] = {
    "deployments": (DEPLOYMENTS, "id"),
    "deployment_resources": (RESOURCES, "deployment_id"),
    "deployment_replicas": (REPLICAS, "deployment_id"),
    "deployment_status_history": (HISTORY, "deployment_id"),
    "deployment_controller_state": (STATE, "deployment_id"),
    "nodes": (NODES, None),
}


def _problem(col: Any, value: Any, processor: Any) -> str | None:
    """Why `value`, as the driver returned it, is no value of `col`'s type; None if it is."""
    if value is None:
        return None
    if isinstance(col.type, Integer) and not isinstance(value, int):
        return "is not an integer"
    if isinstance(col.type, Float) and not isinstance(value, int | float):
        return "is not a number"
    try:
        parsed = processor(value) if processor is not None else value
    except (ValueError, TypeError) as exc:
        return f"cannot be read ({type(exc).__name__}: {exc})"
    if col.name == "labels" and not isinstance(parsed, dict):
        return "is not a JSON object"
    return None


class UnusableRows:
    """The unusable rows found so far, and the loads' way around them."""

    def __init__(
        self, engine: AsyncEngine, note: Callable[[uuid.UUID, str], Awaitable[None]]
    ) -> None:
        self._engine = engine
        # Gives a held deployment the reason in its history (a reason-only status row).
        self._note = note
        self._unusable: dict[tuple[str, int], Unusable] = {}
        self._reported: set[tuple[str, int, str, str]] = set()
        self._scanned_at = 0.0

    @property
    def held(self) -> frozenset[uuid.UUID]:
        """Deployments left out of every load because one of their rows is unusable: their
        containers are theirs all the same (not strays), and nothing is changed for them."""
        return frozenset(u.deployment_id for u in self._unusable.values() if u.deployment_id)

    def skip(self, table: Table) -> ColumnElement[bool]:
        """Leave out `table`'s unusable rows, and every row of a held deployment."""
        if not self._unusable:
            return true()
        rowids = [u.rowid for u in self._unusable.values() if u.table == table.name]
        held = list(self.held)
        conditions: list[ColumnElement[bool]] = []
        if rowids:
            conditions.append(literal_column(f"{table.name}.rowid").not_in(rowids))
        key = _SCANNED.get(table.name, (table, None))[1]
        if held and key is not None:
            conditions.append(table.c[key].not_in(held))
        return and_(true(), *conditions)

    async def find(self) -> list[Unusable]:
        """Scan the tables the loads read for values their types cannot hold (SQLite only:
        PostgreSQL's types refuse them on write). Newly found rows are logged once as
        `row_unusable`, and the deployment each belongs to gets the reason in its history;
        fixed rows drop out of the set, so the loads take them again."""
        if self._engine.dialect.name != "sqlite":
            return []
        found: dict[tuple[str, int], Unusable] = {}
        dialect = self._engine.dialect
        async with self._engine.connect() as conn:
            for name, (table, key) in _SCANNED.items():
                cols = list(table.columns)
                rows: Sequence[Any] = (
                    await conn.execute(
                        select(
                            literal_column("rowid"),
                            *(type_coerce(c, NullType()).label(c.name) for c in cols),
                        ).select_from(table)
                    )
                ).all()
                processors = [c.type._cached_result_processor(dialect, None) for c in cols]
                id_processor = processors[cols.index(table.c.id)]
                for row in rows:
                    for col, processor, value in zip(cols, processors, row[1:], strict=True):
                        problem = _problem(col, value, processor)
                        if problem is None:
                            continue
                        owner: uuid.UUID | None = None
                        if key is not None:
                            raw_key = getattr(row, key)
                            if _problem(table.c[key], raw_key, id_processor) is None:
                                owner = uuid.UUID(str(raw_key))
                        found[(name, row[0])] = Unusable(
                            name, row[0], str(row.id), col.name, repr(value), problem, owner
                        )
                        break
        self._unusable = found
        self._scanned_at = time.monotonic()
        await self._report(list(found.values()))
        return list(found.values())

    async def _report(self, rows: list[Unusable]) -> None:
        keys = {(u.table, u.rowid, u.column, u.value) for u in rows}
        self._reported &= keys  # a fixed row that breaks again is reported again
        for u in rows:
            key = (u.table, u.rowid, u.column, u.value)
            if key in self._reported:
                continue
            self._reported.add(key)
            log.warning(
                "row_unusable",
                table=u.table,
                rowid=u.rowid,
                id=u.row_id,
                column=u.column,
                value=u.value,
                problem=u.problem,
                deployment_id=str(u.deployment_id) if u.deployment_id else None,
            )
            if u.deployment_id is not None:
                await self._note(u.deployment_id, u.reason)

    async def tolerant(self, load: Callable[[], Awaitable[T]]) -> T:
        """Run a load; on SQLite, a row it cannot read is found, reported and left out, and the
        load runs again without it, instead of failing every pass."""
        if self._engine.dialect.name != "sqlite":
            return await load()
        if self._unusable and time.monotonic() - self._scanned_at >= _RESCAN_SECONDS:
            await self.find()  # fixed rows come back
        # What this load leaves out: a concurrent load may find a bad row between here and
        # our failure, and then our own scan finds nothing new, yet our load did not skip it.
        before = set(self._unusable)
        try:
            return await load()
        except (ValueError, TypeError):
            await self.find()
            if set(self._unusable) <= before:
                raise
            return await load()
