"""Rows the loads cannot read (SQLite, where a column holds whatever was written) or cannot
use (an argument list of the container spec that is JSON but not strings, on either backend).

A load that fails on such a row scans the tables the loads read, leaves the rows it finds out
of every later load until they are fixed, and holds the deployments they belong to: one bad
row costs its deployment, not every pass. Each row is reported once, in the operator's terms.
PostgreSQL's column types refuse most such values on write; there only the spec's JSON
argument lists are scanned.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import (
    Boolean,
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

from controller.placement_rules import label_key_problem, label_value_problem
from controller.readmodel import (
    DEPLOYMENTS,
    ENV,
    HISTORY,
    LABELS,
    NODES,
    PORTS,
    REPLICAS,
    RESOURCES,
    SELECTORS,
    SPECS,
    STATE,
    VOLUMES,
)

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
    "deployment_specs": (SPECS, "deployment_id"),
    "deployment_env": (ENV, "deployment_id"),
    "deployment_labels": (LABELS, "deployment_id"),
    "deployment_ports": (PORTS, "deployment_id"),
    "deployment_volumes": (VOLUMES, "deployment_id"),
    "deployment_node_selectors": (SELECTORS, "deployment_id"),
}
# Argument lists kept as JSON (migration 0007): the database checks "an array", the controller
# needs an array of strings, which PostgreSQL's json type does not guarantee either.
ARGV_COLUMNS = frozenset(
    ("deployment_specs", c) for c in ("entrypoint", "command", "healthcheck_command")
)
# Node label syntax (migration 0008): the database's CHECKs say the same as
# controller.placement_rules, but a SQLite file written with the checks off (or by a tool
# that ignores them) could still hold a key the scheduler would compare wrongly.
_LABEL_RULES = {
    ("deployment_specs", "spread_by"): ("key", label_key_problem),
    ("deployment_node_selectors", "key"): ("key", label_key_problem),
    ("deployment_node_selectors", "value"): ("value", label_value_problem),
}
# What PostgreSQL's types leave to check: only the argument lists (see `find`).
_PG_SCANNED = ("deployment_specs",)


def _row_id(table: Table, row: Any) -> str:
    """The row's key as stored, for the operator to find it: its id, or (deployment, name)."""
    return "/".join(str(getattr(row, c.name)) for c in table.primary_key.columns)


def argv_problem(value: Any) -> str | None:
    """Why a parsed argument list is none the controller can pass to the engine, or None."""
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        return "is not a JSON array of strings"
    return None


def label_problem(col: Any, value: Any) -> str | None:
    """Why `value` of a label column (a selector's key or value, `spread_by`) is none, or
    None (also for any other column)."""
    rule = _LABEL_RULES.get((col.table.name, col.name))
    if rule is None or value is None:
        return None
    what, problem_of = rule
    if not isinstance(value, str):
        return f"is not a label {what} (not text)"
    problem = problem_of(value)
    return None if problem is None else f"is not a label {what} ({problem})"


def check_numbers(row: Any, names: Sequence[tuple[str, Any]]) -> None:
    """Refuse a row whose number columns hold text: SQLite stores 'three' in an INTEGER column
    (and its CHECKs compare text as greater than any number). The load's tolerant path then
    finds the row and leaves it out (`UnusableRows.tolerant`)."""
    for name, kind in names:
        value = getattr(row, name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise TypeError(f"{name} = {value!r} is not a number")


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
    if isinstance(col.type, Boolean) and value not in (0, 1, True, False):
        # SQLAlchemy's SQLite boolean would read any text as True, 'false' included.
        return "is not a boolean (true or false)"
    if (col.table.name, col.name) in ARGV_COLUMNS:
        return argv_problem(parsed)
    return label_problem(col, parsed)


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
        if rowids and self._engine.dialect.name == "sqlite":
            conditions.append(literal_column(f"{table.name}.rowid").not_in(rowids))
        key = _SCANNED.get(table.name, (table, None))[1]
        if held and key is not None:
            conditions.append(table.c[key].not_in(held))
        return and_(true(), *conditions)

    async def find(self) -> list[Unusable]:
        """Scan the tables the loads read for values their types cannot hold (SQLite) and for
        spec argument lists that are no list of strings (both backends). Newly found rows are
        logged once as `row_unusable`, and the deployment each belongs to gets the reason in
        its history; fixed rows drop out of the set, so the loads take them again."""
        dialect = self._engine.dialect
        sqlite = dialect.name == "sqlite"
        scanned = _SCANNED if sqlite else {name: _SCANNED[name] for name in _PG_SCANNED}
        found: dict[tuple[str, int], Unusable] = {}
        async with self._engine.connect() as conn:
            for name, (table, key) in scanned.items():
                cols = list(table.columns)
                # PostgreSQL has no rowid: a stable number from the row's key stands in (the
                # held deployment, not the rowid, is what keeps such a row out of the loads).
                rowid: ColumnElement[Any] = literal_column("rowid" if sqlite else "0")
                rows: Sequence[Any] = (
                    await conn.execute(
                        select(
                            rowid, *(type_coerce(c, NullType()).label(c.name) for c in cols)
                        ).select_from(table)
                    )
                ).all()
                # asyncpg hands over typed values (json already parsed): nothing to convert.
                processors = [
                    c.type._cached_result_processor(dialect, None) if sqlite else None for c in cols
                ]
                for row in rows:
                    for col, processor, value in zip(cols, processors, row[1:], strict=True):
                        problem = _problem(col, value, processor)
                        if problem is None:
                            continue
                        owner: uuid.UUID | None = None
                        if key is not None:
                            raw_key = getattr(row, key)
                            key_processor = processors[cols.index(table.c[key])]
                            if _problem(table.c[key], raw_key, key_processor) is None:
                                owner = uuid.UUID(str(raw_key))
                        row_id = _row_id(table, row)
                        number = row[0] if sqlite else zlib.crc32(row_id.encode())
                        found[(name, number)] = Unusable(
                            name, number, row_id, col.name, repr(value), problem, owner
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
        """Run a load; a row it cannot read or use is found, reported and left out, and the
        load runs again without it, instead of failing every pass."""
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
