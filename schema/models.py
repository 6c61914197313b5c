"""SQLAlchemy tables: the seed's four deployment tables plus the `users` and `nodes` it leaves out.

Operators edit these tables by hand, so every rule that protects the controller lives in the
database itself (CHECK constraints, enum checks, triggers installed by the migrations), not
only in the Pydantic layer. The migrations in `schema/migrations` are the source of truth for
the live schema; a test asserts that autogenerate finds no drift between them and this file.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from schema.enums import DeploymentStatus, NodeStatus, ReplicaStatus

# Resource ranges from the seed's validation rules; shared with the Pydantic schemas.
CPU_CORES_MIN, CPU_CORES_MAX = 0.5, 32.0
MEMORY_MB_MIN, MEMORY_MB_MAX = 512, 65536
GPU_UNITS_MIN, GPU_UNITS_MAX = 0, 8
STORAGE_GB_MIN, STORAGE_GB_MAX = 1, 1024
# SQLite has no timestamp type: SQLAlchemy stores 'YYYY-MM-DD HH:MM:SS.ffffff' text, so any SQL
# that stamps a time itself must write that form (see `utc_now`).
SQLITE_NOW_SQL = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
NAME_MAX_LENGTH = 100
IMAGE_MAX_LENGTH = 500
REASON_MAX_LENGTH = 500

# Constraint names are stable so migrations, tests and error messages can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp stored in UTC on every backend.

    SQLite keeps no zone: SQLAlchemy would write an aware value's wall-clock digits and read
    back a naive value. Converting on the way in and tagging UTC on the way out makes both
    backends return the same aware `datetime`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; fog-controller stores aware UTC timestamps")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        # asyncpg already returns timestamptz as aware UTC datetimes: no call per value (a
        # resync or a load of thousands of replica rows reads hundreds of thousands).
        if dialect.name == "postgresql" and dialect.driver == "asyncpg":
            return None
        return super().result_processor(dialect, coltype)


class utc_now(FunctionElement[datetime]):
    """The database's current UTC time, written in the same text form SQLAlchemy writes.

    SQLite's CURRENT_TIMESTAMP yields 'YYYY-MM-DD HH:MM:SS': whole seconds, and a string that
    sorts before SQLAlchemy's 'YYYY-MM-DD HH:MM:SS.ffffff' for the same instant, so a row
    stamped by the database and one stamped by Python would compare wrongly. strftime('%f')
    gives milliseconds; three zeros pad them to the six digits SQLAlchemy writes and parses.
    The migration and the SQLite update triggers write exactly this expression too.
    """

    type = UTCDateTime()
    inherit_cache = True


@compiles(utc_now)
def _utc_now_default(element: utc_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(utc_now, "postgresql")
def _utc_now_postgresql(element: utc_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


@compiles(utc_now, "sqlite")
def _utc_now_sqlite(element: utc_now, compiler: SQLCompiler, **kw: Any) -> str:
    return SQLITE_NOW_SQL


# On SQLite an id is canonical UUID text ('8f0c2b1e-4a5d-4e6f-9a1b-2c3d4e5f6a7b'), what an
# operator types; the hex digits may be of either case, as PostgreSQL accepts (the column's
# NOCASE collation makes 'ABC…' and 'abc…' the same key). The pattern is spelled for GLOB.
_HEX = "[0-9a-fA-F]"
SQLITE_UUID_GLOB = "-".join(_HEX * n for n in (8, 4, 4, 4, 12))
# A random (version 4) UUID in canonical form, for SQLite's column defaults: 16 random bytes
# as hex, with the version nibble set to 4 and the variant nibble to one of 8, 9, a, b.
SQLITE_NEW_UUID_SQL = (
    "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (random() & 3), 1) || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))"
)


def sqlite_uuid_check(column: str) -> str:
    """The CHECK that keeps a SQLite uuid column canonical text (NULL passes, as in any CHECK).

    Operators write these tables with the sqlite3 shell, where foreign keys are off by
    default: this check, not a foreign key, is what refuses a malformed id there."""
    return (
        f"typeof({column}) IN ('text', 'null') AND length({column}) = 36 "
        f"AND {column} GLOB '{SQLITE_UUID_GLOB}'"
    )


class UUIDType(TypeDecorator[uuid.UUID]):
    """A UUID: native `uuid` on PostgreSQL, canonical 36-character text on SQLite.

    SQLAlchemy's own `Uuid` stores 32 hex digits on SQLite, so an id an operator writes in the
    usual form matched none of the controller's lookups. Here both backends hold the text an
    operator types and the controller always gets `uuid.UUID` back.
    """

    impl = Uuid(as_uuid=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(36, collation="NOCASE"))
        return dialect.type_descriptor(Uuid(as_uuid=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))

    def process_result_value(self, value: Any, dialect: Dialect) -> uuid.UUID | None:
        if value is None or isinstance(value, uuid.UUID):
            return value
        return uuid.UUID(str(value))

    # The processors below are what runs per value (a load reads hundreds of thousands):
    # plain functions, without TypeDecorator's wrapping; process_*_param serve literals.
    def bind_processor(self, dialect: Dialect) -> Any:
        # PostgreSQL: the driver's own uuid handling.
        if dialect.name != "sqlite":
            return self.impl_instance.bind_processor(dialect)
        return _uuid_to_text

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return self.impl_instance.result_processor(dialect, coltype)
        return _text_to_uuid


def _uuid_to_text(value: Any) -> str | None:
    if value.__class__ is uuid.UUID:
        return str(value)
    return None if value is None else str(uuid.UUID(str(value)))


def _text_to_uuid(value: Any) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(value)


class new_uuid(FunctionElement[uuid.UUID]):
    """A random UUID made by the database: the id default, so plain SQL may leave ids out."""

    type = UUIDType()
    inherit_cache = True


@compiles(new_uuid)
def _new_uuid_default(element: new_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    return "gen_random_uuid()"


@compiles(new_uuid, "sqlite")
def _new_uuid_sqlite(element: new_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({SQLITE_NEW_UUID_SQL})"


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # Values, not member names, go to the database: operators type 'running', not 'RUNNING'.
    # create_constraint gives SQLite (no native enums) a CHECK, so a typo is refused there too.
    return Enum(
        cls,
        name=name,
        values_callable=lambda members: [m.value for m in members],
        create_constraint=True,
        validate_strings=True,
    )


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        uuid.UUID: UUIDType(),
    }

    def to_dict(self) -> dict[str, Any]:
        """Column values as JSON-friendly primitives (UUIDs and timestamps as strings)."""
        out: dict[str, Any] = {}
        for column in self.__table__.columns:
            value = getattr(self, column.key)
            if isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, enum.Enum):
                value = value.value
            out[column.key] = value
        return out


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("length(username) > 0", name="username_not_empty"),)

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=new_uuid()
    )
    username: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=utc_now())

    deployments: Mapped[list[Deployment]] = relationship(
        back_populates="user", cascade="all, delete-orphan", passive_deletes=True
    )


class Node(Base):
    """A fog node: one Docker engine. `(id, name, docker_url)` alone is enough to add one."""

    __tablename__ = "nodes"
    __table_args__ = (
        CheckConstraint("length(name) > 0", name="name_not_empty"),
        CheckConstraint("length(docker_url) > 0", name="docker_url_not_empty"),
        CheckConstraint("cpu_cores IS NULL OR cpu_cores > 0", name="cpu_cores_positive"),
        CheckConstraint("memory_mb IS NULL OR memory_mb > 0", name="memory_mb_positive"),
        CheckConstraint("gpu_units IS NULL OR gpu_units >= 0", name="gpu_units_non_negative"),
        CheckConstraint("storage_gb IS NULL OR storage_gb > 0", name="storage_gb_positive"),
        CheckConstraint("storage_limits IN ('enforced', 'monitored')", name="storage_limits_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=new_uuid()
    )
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), unique=True)
    docker_url: Mapped[str] = mapped_column(String(IMAGE_MAX_LENGTH))
    status: Mapped[NodeStatus] = mapped_column(
        _enum(NodeStatus, "node_status"),
        default=NodeStatus.UNKNOWN,
        server_default=NodeStatus.UNKNOWN.value,
        index=True,
    )
    # Capacity; NULL means "detect from the engine" (docker info) for CPU and memory,
    # zero for GPUs, and unconstrained for storage (an engine does not report disk size).
    cpu_cores: Mapped[float | None] = mapped_column(Float)
    memory_mb: Mapped[int | None] = mapped_column(Integer)
    gpu_units: Mapped[int | None] = mapped_column(Integer)
    storage_gb: Mapped[int | None] = mapped_column(Integer)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    # Operator intent, kept apart from health as Kubernetes keeps spec.unschedulable apart
    # from node conditions: cordon stops new placements, drain also moves replicas away.
    unschedulable: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    draining: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    last_heartbeat_at: Mapped[datetime | None]
    # Controller-owned engine facts from the last probe (migration 0005; controller/storage.py):
    # how the node holds replicas to storage_gb, `enforced` or `monitored`.
    storage_driver: Mapped[str | None] = mapped_column(String(64))
    engine_version: Mapped[str | None] = mapped_column(String(64))
    storage_limits: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=utc_now())
    updated_at: Mapped[datetime] = mapped_column(
        default=_now, server_default=utc_now(), onupdate=_now
    )

    replicas: Mapped[list[DeploymentReplica]] = relationship(
        back_populates="node", passive_deletes=True
    )


class Deployment(Base):
    __tablename__ = "deployments"
    __table_args__ = (
        Index("idx_deployments_user_active", "user_id", "deleted_at"),
        Index(
            "idx_deployments_user_name_unique",
            "user_id",
            "name",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
            sqlite_where=text("deleted_at IS NULL"),
        ),
        CheckConstraint("length(name) > 0", name="name_not_empty"),
        CheckConstraint("length(container_image) > 0", name="container_image_not_empty"),
        CheckConstraint("target_replicas >= 0", name="target_replicas_non_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=new_uuid()
    )
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH))
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    container_image: Mapped[str] = mapped_column(String(IMAGE_MAX_LENGTH))
    status: Mapped[DeploymentStatus] = mapped_column(
        _enum(DeploymentStatus, "deployment_status"),
        default=DeploymentStatus.PENDING,
        server_default=DeploymentStatus.PENDING.value,
        index=True,
    )
    target_replicas: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=utc_now())
    updated_at: Mapped[datetime] = mapped_column(
        default=_now, server_default=utc_now(), onupdate=_now, index=True
    )
    deleted_at: Mapped[datetime | None] = mapped_column(index=True)

    user: Mapped[User] = relationship(back_populates="deployments")
    replicas: Mapped[list[DeploymentReplica]] = relationship(
        back_populates="deployment", cascade="all, delete-orphan", passive_deletes=True
    )
    resources: Mapped[DeploymentResource | None] = relationship(
        back_populates="deployment",
        cascade="all, delete-orphan",
        passive_deletes=True,
        uselist=False,
    )
    status_history: Mapped[list[DeploymentStatusHistory]] = relationship(
        back_populates="deployment",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="DeploymentStatusHistory.changed_at",
    )
    # The container spec (issue 14); the controller reads these with Core queries, the ORM
    # relationships serve `schema.api.DeploymentResponse` and tests.
    spec: Mapped[DeploymentSpec | None] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, uselist=False
    )
    env: Mapped[list[DeploymentEnv]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    labels: Mapped[list[DeploymentLabel]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    ports: Mapped[list[DeploymentPort]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    volumes: Mapped[list[DeploymentVolume]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )
    node_selectors: Mapped[list[DeploymentNodeSelector]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True
    )


class DeploymentReplica(Base):
    __tablename__ = "deployment_replicas"
    __table_args__ = (Index("idx_replicas_deployment_status", "deployment_id", "status"),)

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=new_uuid()
    )
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    node_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("nodes.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[ReplicaStatus] = mapped_column(
        _enum(ReplicaStatus, "replica_status"),
        default=ReplicaStatus.PENDING,
        server_default=ReplicaStatus.PENDING.value,
        index=True,
    )
    container_id: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]
    # Beyond the seed (migration 0003): the spec the replica runs, and the engine's crash
    # reports for its container (restarts happen in place; the controller records them).
    spec_hash: Mapped[str | None] = mapped_column(String(64))
    restart_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_exit_code: Mapped[int | None] = mapped_column(Integer)
    oom_killed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=utc_now())

    deployment: Mapped[Deployment] = relationship(back_populates="replicas")
    node: Mapped[Node | None] = relationship(back_populates="replicas")


class DeploymentResource(Base):
    __tablename__ = "deployment_resources"
    __table_args__ = (
        CheckConstraint(
            f"cpu_cores >= {CPU_CORES_MIN} AND cpu_cores <= {CPU_CORES_MAX}", name="cpu_cores_range"
        ),
        CheckConstraint(
            f"memory_mb >= {MEMORY_MB_MIN} AND memory_mb <= {MEMORY_MB_MAX}", name="memory_mb_range"
        ),
        CheckConstraint(
            f"gpu_units >= {GPU_UNITS_MIN} AND gpu_units <= {GPU_UNITS_MAX}", name="gpu_units_range"
        ),
        CheckConstraint(
            f"storage_gb >= {STORAGE_GB_MIN} AND storage_gb <= {STORAGE_GB_MAX}",
            name="storage_gb_range",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=new_uuid()
    )
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), unique=True
    )
    cpu_cores: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[int] = mapped_column(Integer)
    gpu_units: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    storage_gb: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=utc_now())
    updated_at: Mapped[datetime] = mapped_column(
        default=_now, server_default=utc_now(), onupdate=_now, index=True
    )

    deployment: Mapped[Deployment] = relationship(back_populates="resources")


class DeploymentStatusHistory(Base):
    __tablename__ = "deployment_status_history"
    __table_args__ = (Index("idx_status_history_deployment_time", "deployment_id", "changed_at"),)

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=new_uuid()
    )
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    old_status: Mapped[str] = mapped_column(String(50))
    new_status: Mapped[str] = mapped_column(String(50))
    changed_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    changed_at: Mapped[datetime] = mapped_column(default=_now, server_default=utc_now(), index=True)
    reason: Mapped[str | None] = mapped_column(String(REASON_MAX_LENGTH))

    deployment: Mapped[Deployment] = relationship(back_populates="status_history")


# Bounds of the container spec (issue 14), shared with the Pydantic schemas.
PORT_MIN, PORT_MAX = 1, 65535
STOP_GRACE_MAX_SECONDS = 3600
PATH_MAX_LENGTH = 4096
LABEL_KEY_MAX_LENGTH = 253
ENV_NAME_MAX_LENGTH = NAME_MAX_LENGTH * 2
SECRET_NAME_MAX_LENGTH = NAME_MAX_LENGTH
NETWORK_MODES = ("host", "bridge", "none")
PORT_PROTOCOLS = ("tcp", "udp")
RESERVED_LABEL_PREFIX = "fog."


def _json_array_check(column: str, name: str) -> list[CheckConstraint]:
    """`column` NULL or a JSON array, per backend (json_typeof / json_type)."""
    return [
        CheckConstraint(f"{column} IS NULL OR json_typeof({column}) = 'array'", name=name).ddl_if(
            dialect="postgresql"
        ),
        CheckConstraint(f"{column} IS NULL OR json_type({column}) = 'array'", name=name).ddl_if(
            dialect="sqlite"
        ),
    ]


# Node label syntax (issue 15), Kubernetes' rules as controller/placement_rules.py checks them:
# a key is an optional DNS-subdomain prefix and '/', then a name of 1-63 characters of
# [A-Za-z0-9-_.] starting and ending alphanumeric; a value is empty or such a name. The database
# checks it too, so a selector written in plain SQL is refused with a named constraint.
# PostgreSQL says it with one regular expression; SQLite has no REGEXP, so GLOB patterns over
# the parts that `instr`/`substr` cut out say the same (a valid key holds at most one '/').
LABEL_NAME_MAX_LENGTH = 63
LABEL_PREFIX_MAX_LENGTH = 253
NODE_LABEL_KEY_MAX_LENGTH = LABEL_PREFIX_MAX_LENGTH + 1 + LABEL_NAME_MAX_LENGTH
NODE_LABEL_VALUE_MAX_LENGTH = LABEL_NAME_MAX_LENGTH
_PG_LABEL_NAME = f"[A-Za-z0-9]([A-Za-z0-9_.-]{{0,{LABEL_NAME_MAX_LENGTH - 2}}}[A-Za-z0-9])?"
_PG_DNS_LABEL = "[a-z0-9]([a-z0-9-]*[a-z0-9])?"


def _sqlite_label_name(part: str) -> str:
    return (
        f"length({part}) BETWEEN 1 AND {LABEL_NAME_MAX_LENGTH} AND {part} GLOB '[A-Za-z0-9]*' "
        f"AND {part} GLOB '*[A-Za-z0-9]' AND {part} NOT GLOB '*[^A-Za-z0-9_.-]*'"
    )


def _sqlite_dns_subdomain(part: str) -> str:
    # Dot-separated labels of [a-z0-9-], each starting and ending alphanumeric: no empty label
    # ('..', a leading or trailing dot) and no '-' beside a dot.
    return (
        f"length({part}) <= {LABEL_PREFIX_MAX_LENGTH} AND {part} GLOB '[a-z0-9]*' "
        f"AND {part} GLOB '*[a-z0-9]' AND {part} NOT GLOB '*[^a-z0-9.-]*' "
        f"AND {part} NOT GLOB '*..*' AND {part} NOT GLOB '*.-*' AND {part} NOT GLOB '*-.*'"
    )


def label_key_sql(column: str, dialect: str) -> str:
    """SQL true when `column` is a label key (NULL stays NULL: a CHECK lets it pass)."""
    if dialect == "postgresql":
        return (
            f"{column} ~ '^({_PG_DNS_LABEL}(\\.{_PG_DNS_LABEL})*/)?{_PG_LABEL_NAME}$' "
            f"AND strpos({column}, '/') <= {LABEL_PREFIX_MAX_LENGTH + 1}"
        )
    slash = f"instr({column}, '/')"
    # Text only, and ASCII only (as bytes as characters): SQLite's length() and GLOB stop at
    # a NUL, which would hide what follows it.
    return (
        f"typeof({column}) = 'text' AND length(CAST({column} AS BLOB)) = length({column}) "
        f"AND CASE WHEN {slash} = 0 THEN {_sqlite_label_name(column)} "
        f"ELSE {_sqlite_dns_subdomain(f'substr({column}, 1, {slash} - 1)')} "
        f"AND {_sqlite_label_name(f'substr({column}, {slash} + 1)')} END"
    )


def label_value_sql(column: str, dialect: str) -> str:
    """SQL true when `column` is a label value: empty, or a label name."""
    if dialect == "postgresql":
        return f"{column} ~ '^({_PG_LABEL_NAME})?$'"
    return (
        f"typeof({column}) = 'text' AND length(CAST({column} AS BLOB)) = length({column}) "
        f"AND ({column} = '' OR {_sqlite_label_name(column)})"
    )


def _label_checks(
    sql: Callable[[str, str], str], column: str, name: str, *, nullable: bool = False
) -> list[CheckConstraint]:
    """The same named CHECK per backend (`ddl_if`), from `sql(column, dialect)`."""
    checks: list[CheckConstraint] = []
    for dialect in ("postgresql", "sqlite"):
        rule = sql(column, dialect)
        if nullable:
            rule = f"{column} IS NULL OR ({rule})"
        checks.append(CheckConstraint(rule, name=name).ddl_if(dialect=dialect))
    return checks


class DeploymentSpec(Base):
    """Beyond the seed (migration 0007), 1:1 with `deployments`, optional: how its containers
    run when not as the image says. No row, or NULL columns, mean the image's own settings.

    The lists and maps that SQL can check element by element live in child tables
    (`deployment_env`, `deployment_labels`, `deployment_ports`, `deployment_volumes`), so the
    database refuses a duplicate host port or mount path, a port out of range or a relative
    path with a named constraint; `entrypoint` and `command` are ordered argument lists, kept
    as JSON arrays. Every change here or in the child tables is a new generation (triggers).
    """

    __tablename__ = "deployment_specs"
    __table_args__ = (
        *_json_array_check("entrypoint", "entrypoint_array"),
        *_json_array_check("command", "command_array"),
        *_json_array_check("healthcheck_command", "healthcheck_command_array"),
        CheckConstraint(
            "network IS NULL OR network IN ('host', 'bridge', 'none')", name="network_known"
        ),
        CheckConstraint(
            f"stop_grace_seconds IS NULL OR "
            f"(stop_grace_seconds >= 0 AND stop_grace_seconds <= {STOP_GRACE_MAX_SECONDS})",
            name="stop_grace_seconds_range",
        ),
        CheckConstraint(
            "healthcheck_interval_seconds IS NULL OR healthcheck_interval_seconds > 0",
            name="healthcheck_interval_positive",
        ),
        CheckConstraint(
            "healthcheck_timeout_seconds IS NULL OR healthcheck_timeout_seconds > 0",
            name="healthcheck_timeout_positive",
        ),
        CheckConstraint(
            "healthcheck_retries IS NULL OR healthcheck_retries >= 1",
            name="healthcheck_retries_positive",
        ),
        CheckConstraint(
            "healthcheck_start_period_seconds IS NULL OR healthcheck_start_period_seconds >= 0",
            name="healthcheck_start_period_non_negative",
        ),
        CheckConstraint(
            "healthcheck_command IS NOT NULL OR (healthcheck_interval_seconds IS NULL AND "
            "healthcheck_timeout_seconds IS NULL AND healthcheck_retries IS NULL AND "
            "healthcheck_start_period_seconds IS NULL)",
            name="healthcheck_needs_command",
        ),
        CheckConstraint(
            "image_pull_secret IS NULL OR length(image_pull_secret) > 0",
            name="image_pull_secret_not_empty",
        ),
        # Placement (migration 0008).
        *_label_checks(label_key_sql, "spread_by", "spread_by_syntax", nullable=True),
        CheckConstraint("max_per_node IS NULL OR max_per_node >= 1", name="max_per_node_positive"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=new_uuid()
    )
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), unique=True
    )
    entrypoint: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    command: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    network: Mapped[str | None] = mapped_column(String(16))
    stop_grace_seconds: Mapped[int | None] = mapped_column(Integer)
    healthcheck_command: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    healthcheck_interval_seconds: Mapped[float | None] = mapped_column(Float)
    healthcheck_timeout_seconds: Mapped[float | None] = mapped_column(Float)
    healthcheck_retries: Mapped[int | None] = mapped_column(Integer)
    healthcheck_start_period_seconds: Mapped[float | None] = mapped_column(Float)
    # The name of a `registry_credentials` row of the deployment's user.
    image_pull_secret: Mapped[str | None] = mapped_column(String(SECRET_NAME_MAX_LENGTH))
    # Not spec: set by `fogctl delete --purge-volumes`; the controller then removes the
    # deployment's named volumes from every node once it is deleted.
    purge_volumes: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=text("false")
    )
    # Placement (migration 0008; controller/placement_rules.py): spread over the values of this
    # node label, at most this many replicas on one node, move replicas when the spread is off.
    # The node selector is `deployment_node_selectors`.
    spread_by: Mapped[str | None] = mapped_column(String(NODE_LABEL_KEY_MAX_LENGTH))
    max_per_node: Mapped[int | None] = mapped_column(Integer)
    rebalance: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=utc_now())
    updated_at: Mapped[datetime] = mapped_column(
        default=_now, server_default=utc_now(), onupdate=_now
    )


class DeploymentEnv(Base):
    """One environment variable of a deployment's containers."""

    __tablename__ = "deployment_env"
    __table_args__ = (
        CheckConstraint("length(name) > 0", name="name_not_empty"),
        CheckConstraint("name NOT LIKE '%=%'", name="name_without_equals"),
    )

    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(ENV_NAME_MAX_LENGTH), primary_key=True)
    value: Mapped[str] = mapped_column(String, default="", server_default=text("''"))


class DeploymentLabel(Base):
    """One label of a deployment's containers; keys under `fog.` are the controller's."""

    __tablename__ = "deployment_labels"
    __table_args__ = (
        CheckConstraint("length(key) > 0", name="key_not_empty"),
        CheckConstraint(f"substr(key, 1, 4) <> '{RESERVED_LABEL_PREFIX}'", name="key_not_reserved"),
    )

    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(LABEL_KEY_MAX_LENGTH), primary_key=True)
    value: Mapped[str] = mapped_column(
        String(IMAGE_MAX_LENGTH), default="", server_default=text("''")
    )


class DeploymentNodeSelector(Base):
    """One pair of a deployment's node selector (migration 0008): the deployment runs only on
    nodes whose `labels` hold every pair. Keys under `fog.io/` are allowed: they select what
    the engines report (`fog.io/arch`)."""

    __tablename__ = "deployment_node_selectors"
    __table_args__ = (
        *_label_checks(label_key_sql, "key", "key_syntax"),
        *_label_checks(label_value_sql, "value", "value_syntax"),
    )

    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(NODE_LABEL_KEY_MAX_LENGTH), primary_key=True)
    value: Mapped[str] = mapped_column(
        String(NODE_LABEL_VALUE_MAX_LENGTH), default="", server_default=text("''")
    )


class DeploymentPort(Base):
    """A port a deployment's containers serve (published on `host_port` on a bridge network)."""

    __tablename__ = "deployment_ports"
    __table_args__ = (
        UniqueConstraint("deployment_id", "host_port", "protocol"),
        UniqueConstraint("deployment_id", "container_port", "protocol"),
        CheckConstraint(
            f"container_port >= {PORT_MIN} AND container_port <= {PORT_MAX}",
            name="container_port_range",
        ),
        CheckConstraint(
            f"host_port IS NULL OR (host_port >= {PORT_MIN} AND host_port <= {PORT_MAX})",
            name="host_port_range",
        ),
        CheckConstraint("protocol IN ('tcp', 'udp')", name="protocol_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=new_uuid()
    )
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    container_port: Mapped[int] = mapped_column(Integer)
    host_port: Mapped[int | None] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(3), default="tcp", server_default=text("'tcp'"))


class DeploymentVolume(Base):
    """A mount: a named volume on the node (`name`) or a node directory (`host_path`)."""

    __tablename__ = "deployment_volumes"
    __table_args__ = (
        UniqueConstraint("deployment_id", "mount_path"),
        UniqueConstraint("deployment_id", "name"),
        CheckConstraint("(name IS NULL) <> (host_path IS NULL)", name="name_or_host_path"),
        CheckConstraint("substr(mount_path, 1, 1) = '/'", name="mount_path_absolute"),
        CheckConstraint(
            "host_path IS NULL OR substr(host_path, 1, 1) = '/'", name="host_path_absolute"
        ),
        CheckConstraint(
            "name IS NULL OR name GLOB '[a-zA-Z0-9]*' AND name NOT GLOB '*[^a-zA-Z0-9_.-]*'",
            name="name_format",
        ).ddl_if(dialect="sqlite"),
        CheckConstraint(
            "name IS NULL OR name ~ '^[a-zA-Z0-9][a-zA-Z0-9_.-]*$'", name="name_format"
        ).ddl_if(dialect="postgresql"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=new_uuid()
    )
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH))
    host_path: Mapped[str | None] = mapped_column(String(PATH_MAX_LENGTH))
    mount_path: Mapped[str] = mapped_column(String(PATH_MAX_LENGTH))
    read_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class RegistryCredential(Base):
    """A user's login to a private registry, named for `deployment_specs.image_pull_secret`.

    The password is stored encrypted (Fernet, key in FOG_SECRET_KEY_FILE; controller/secrets.py)
    and is written by `fogctl secret add`, never by hand."""

    __tablename__ = "registry_credentials"
    __table_args__ = (
        UniqueConstraint("user_id", "name"),
        CheckConstraint("length(name) > 0", name="name_not_empty"),
        CheckConstraint("length(registry_host) > 0", name="registry_host_not_empty"),
        CheckConstraint("length(username) > 0", name="username_not_empty"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=new_uuid()
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(SECRET_NAME_MAX_LENGTH))
    registry_host: Mapped[str] = mapped_column(String(IMAGE_MAX_LENGTH))
    username: Mapped[str] = mapped_column(String(IMAGE_MAX_LENGTH))
    password_encrypted: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = mapped_column(default=_now, server_default=utc_now())
    updated_at: Mapped[datetime] = mapped_column(
        default=_now, server_default=utc_now(), onupdate=_now
    )


class DeploymentControllerState(Base):
    """Beyond the seed (migration 0006), 1:1 with `deployments`: the spec's generation and
    what the controller needs to resume after a failover. Never written by operators.

    `generation` is counted by database triggers: a deployment's insert makes the row, and
    every change of its spec (`container_image`, `target_replicas`, `deleted_at`, its
    `deployment_resources` row) adds one, plain SQL included. The other columns are the
    controller's, written in the transaction of the status they belong to:
    `observed_generation` is the generation that status describes.
    """

    __tablename__ = "deployment_controller_state"
    __table_args__ = (
        CheckConstraint("generation >= 1", name="generation_positive"),
        CheckConstraint(
            "observed_generation >= 0 AND observed_generation <= generation",
            name="observed_generation_range",
        ),
        CheckConstraint("crash_failures >= 0", name="crash_failures_non_negative"),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=new_uuid()
    )
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), unique=True
    )
    generation: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))
    observed_generation: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    crash_failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    retry_at: Mapped[datetime | None]  # the next start attempt (crash backoff)
    progress_since: Mapped[datetime | None]  # the progress deadline runs from here
    stable_since: Mapped[datetime | None]  # converged without a break since
    last_error: Mapped[str | None] = mapped_column(String(REASON_MAX_LENGTH))


# Triggers that count `DeploymentControllerState.generation` (migrations 0006, 0007 and 0008),
# per backend; 0007's and 0008's also move the deployment's `updated_at` (the SQLite poll's marker).
SPEC_TABLES = (
    "deployment_specs",
    "deployment_env",
    "deployment_labels",
    "deployment_ports",
    "deployment_volumes",
    "deployment_node_selectors",
)
GENERATION_TRIGGERS: dict[str, tuple[str, ...]] = {
    "postgresql": (
        "trg_deployments_generation",
        "trg_deployment_resources_generation",
        *(f"trg_{table}_generation" for table in SPEC_TABLES),
        # Migration 0009: each spec-table write locks its deployment row first.
        *(f"trg_{table}_lock_deployment" for table in SPEC_TABLES),
    ),
    "sqlite": (
        "trg_deployments_generation_insert",
        "trg_deployments_generation",
        "trg_deployment_resources_generation_insert",
        "trg_deployment_resources_generation",
        "trg_deployment_resources_generation_delete",
        *(
            f"trg_{table}_generation{suffix}"
            for table in SPEC_TABLES
            for suffix in ("_insert", "", "_delete")
        ),
    ),
}
GENERATION_FUNCTIONS = (
    "fog_lock_deployment_first",
    "fog_generation_deployments",
    "fog_generation_deployment_resources",
    "fog_generation_deployment_specs",
    "fog_generation_spec_rows",
)


# Tables whose `updated_at` a trigger keeps moving on every UPDATE, raw SQL included.
TABLES_WITH_UPDATED_AT = (
    "deployments",
    "deployment_resources",
    "nodes",
    "deployment_specs",
    "registry_credentials",
)


class ControlPlane(Base):
    """One row: the leader's fencing epoch. Controller-owned; operators never write it.

    A controller that wins the election bumps `epoch` and stamps it on everything it does;
    every write it makes first checks, under a share lock, that the epoch is still its own, so
    a deposed leader (paused, partitioned) can write nothing once a successor has taken over.
    """

    __tablename__ = "control_plane"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    holder: Mapped[str | None] = mapped_column(String(255))
    acquired_at: Mapped[datetime | None]


# Tables whose changes wake the controller at once on PostgreSQL (NOTIFY on channel
# `fog_changes`), each with the columns an operator owns: a change to any other column (the
# controller's status writes, heartbeats) sends nothing.
NOTIFY_CHANNEL = "fog_changes"
NOTIFY_TABLES: dict[str, tuple[str, ...]] = {
    "deployments": ("name", "container_image", "target_replicas", "deleted_at", "user_id"),
    "deployment_resources": ("cpu_cores", "memory_mb", "gpu_units", "storage_gb"),
    "nodes": (
        "name",
        "docker_url",
        "cpu_cores",
        "memory_mb",
        "gpu_units",
        "storage_gb",
        "labels",
        "unschedulable",
        "draining",
    ),
    # Migration 0007: every spec table; `purge_volumes` only when set (false to true).
    "deployment_specs": (
        "entrypoint",
        "command",
        "network",
        "stop_grace_seconds",
        "healthcheck_command",
        "healthcheck_interval_seconds",
        "healthcheck_timeout_seconds",
        "healthcheck_retries",
        "healthcheck_start_period_seconds",
        "image_pull_secret",
        "deployment_id",
        "spread_by",
        "max_per_node",
        "rebalance",
        "purge_volumes",
    ),
    "deployment_env": ("deployment_id", "name", "value"),
    "deployment_labels": ("deployment_id", "key", "value"),
    "deployment_ports": ("id", "deployment_id", "container_port", "host_port", "protocol"),
    "deployment_volumes": (
        "id",
        "deployment_id",
        "name",
        "host_path",
        "mount_path",
        "read_only",
    ),
    # Migration 0008.
    "deployment_node_selectors": ("deployment_id", "key", "value"),
}


def _add_sqlite_uuid_checks() -> None:
    """A named CHECK (`ck_<table>_<column>_uuid`) on every uuid column, emitted on SQLite
    only: PostgreSQL's uuid type already refuses malformed text."""
    for table in Base.metadata.tables.values():
        for col in table.columns:
            if isinstance(col.type, UUIDType):
                check = CheckConstraint(sqlite_uuid_check(col.name), name=f"{col.name}_uuid")
                table.append_constraint(check.ddl_if(dialect="sqlite"))


_add_sqlite_uuid_checks()
