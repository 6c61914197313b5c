"""The shapes operators and tools exchange with the controller, checked before any SQL runs.

Request models reject what the database would reject (the same bounds, imported from
`schema.models`) but say so in words an operator can act on: the field, the allowed range and
the value given, instead of a constraint name in an IntegrityError. They also forbid unknown
fields, so a typo in a YAML file (`replicas:` for `target_replicas:`) is an error rather than a
silently ignored line. The database keeps its own CHECKs because operators may bypass this layer
with plain SQL.

Response models read ORM rows and result rows directly (`from_attributes`); relationships they
include (`resources`, `replicas`) must be loaded eagerly by the caller, as lazy loads cannot run
under asyncio.
"""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from schema.enums import DeploymentStatus, NodeStatus, ReplicaStatus
from schema.models import (
    CPU_CORES_MAX,
    CPU_CORES_MIN,
    GPU_UNITS_MAX,
    GPU_UNITS_MIN,
    IMAGE_MAX_LENGTH,
    MEMORY_MB_MAX,
    MEMORY_MB_MIN,
    NAME_MAX_LENGTH,
    STORAGE_GB_MAX,
    STORAGE_GB_MIN,
)

# The largest value a PostgreSQL INTEGER column holds; above it the INSERT itself would fail.
INTEGER_MAX = 2**31 - 1

# Characters that would break a log line or a table row when printed: C0/C1 controls (tab,
# newline, escape, NUL...) and the Unicode line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})

# Schemes the Docker SDK accepts for `base_url`.
DOCKER_URL_SCHEMES = ("unix://", "tcp://", "ssh://", "http://", "https://", "npipe://")


def _error(kind: str, message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, message, context)


def _number(value: float) -> str:
    # 32.0 reads as "32", 0.5 as "0.5", and 2147483647 in full (not as 2.14748e+09).
    return str(int(value)) if float(value).is_integer() else str(value)


def _reject_bool(value: Any, info: ValidationInfo) -> Any:
    # YAML turns `yes`, `on` and `true` into booleans, and Python counts True as 1: without
    # this, `gpu_units: yes` would quietly mean one GPU.
    if isinstance(value, bool):
        raise _error(
            "number_type",
            "{field} must be a number, got {value}",
            field=info.field_name,
            value=str(value),
        )
    return value


def _range(low: float, high: float, unit: str = "") -> AfterValidator:
    suffix = f" {unit}" if unit else ""

    def check(value: float, info: ValidationInfo) -> float:
        # Written as `not (low <= value <= high)` so that NaN, which compares false with
        # everything, is refused as well.
        if not low <= value <= high:
            raise _error(
                "out_of_range",
                "{field} must be between {low} and {high}{suffix}, got {value}",
                field=info.field_name,
                low=_number(low),
                high=_number(high),
                suffix=suffix,
                value=value,
            )
        return value

    return AfterValidator(check)


def _greater_than(low: float) -> AfterValidator:
    def check(value: float, info: ValidationInfo) -> float:
        if not low < value:
            raise _error(
                "out_of_range",
                "{field} must be greater than {low}, got {value}",
                field=info.field_name,
                low=_number(low),
                value=value,
            )
        return value

    return AfterValidator(check)


def _bounds(low: float, high: float) -> Any:
    return Field(json_schema_extra={"minimum": low, "maximum": high})


def _name(value: str, info: ValidationInfo) -> str:
    """Strip, then require 1 to NAME_MAX_LENGTH characters, none of them a control character."""
    value = value.strip()
    _check_length(value, info, NAME_MAX_LENGTH)
    bad = [c for c in value if unicodedata.category(c) in _FORBIDDEN_CATEGORIES]
    if bad:
        raise _error(
            "control_character",
            "{field} must not contain control characters, got {value}",
            field=info.field_name,
            value=repr(value),
        )
    return value


def _reference(max_length: int) -> AfterValidator:
    """A token such as an image reference or URL: no whitespace or control characters at all."""

    def check(value: str, info: ValidationInfo) -> str:
        _check_length(value, info, max_length)
        if any(c.isspace() or unicodedata.category(c) in _FORBIDDEN_CATEGORIES for c in value):
            raise _error(
                "whitespace",
                "{field} must not contain whitespace or control characters, got {value}",
                field=info.field_name,
                value=repr(value),
            )
        return value

    return AfterValidator(check)


def _check_length(value: str, info: ValidationInfo, max_length: int) -> None:
    if not 1 <= len(value) <= max_length:
        raise _error(
            "length",
            "{field} must be 1 to {max_length} characters long, got {length}",
            field=info.field_name,
            max_length=max_length,
            length=len(value),
        )


def _docker_url(value: str, info: ValidationInfo) -> str:
    if not value.startswith(DOCKER_URL_SCHEMES):
        raise _error(
            "docker_url_scheme",
            "{field} must start with one of {schemes}, got {value}",
            field=info.field_name,
            schemes=", ".join(DOCKER_URL_SCHEMES),
            value=repr(value),
        )
    return value


Name = Annotated[
    str, Field(json_schema_extra={"maxLength": NAME_MAX_LENGTH}), AfterValidator(_name)
]
ContainerImage = Annotated[
    str, Field(json_schema_extra={"maxLength": IMAGE_MAX_LENGTH}), _reference(IMAGE_MAX_LENGTH)
]
DockerUrl = Annotated[
    str,
    Field(json_schema_extra={"maxLength": IMAGE_MAX_LENGTH}),
    _reference(IMAGE_MAX_LENGTH),
    AfterValidator(_docker_url),
]
CpuCores = Annotated[
    float,
    _bounds(CPU_CORES_MIN, CPU_CORES_MAX),
    BeforeValidator(_reject_bool),
    _range(CPU_CORES_MIN, CPU_CORES_MAX, "cores"),
]
MemoryMb = Annotated[
    int,
    _bounds(MEMORY_MB_MIN, MEMORY_MB_MAX),
    BeforeValidator(_reject_bool),
    _range(MEMORY_MB_MIN, MEMORY_MB_MAX, "MB"),
]
GpuUnits = Annotated[
    int,
    _bounds(GPU_UNITS_MIN, GPU_UNITS_MAX),
    BeforeValidator(_reject_bool),
    _range(GPU_UNITS_MIN, GPU_UNITS_MAX, "units"),
]
StorageGb = Annotated[
    int,
    _bounds(STORAGE_GB_MIN, STORAGE_GB_MAX),
    BeforeValidator(_reject_bool),
    _range(STORAGE_GB_MIN, STORAGE_GB_MAX, "GB"),
]
ReplicaCount = Annotated[
    int, _bounds(0, INTEGER_MAX), BeforeValidator(_reject_bool), _range(0, INTEGER_MAX)
]
PositiveFloat = Annotated[float, BeforeValidator(_reject_bool), _greater_than(0)]
PositiveInt = Annotated[int, BeforeValidator(_reject_bool), _range(1, INTEGER_MAX)]
NonNegativeInt = Annotated[int, BeforeValidator(_reject_bool), _range(0, INTEGER_MAX)]


class _Request(BaseModel):
    # Unknown keys are errors: an operator's misspelt field must not vanish silently.
    # NaN and infinity are refused outright; no column can hold a meaningful one.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Response(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- requests ---------------------------------------------------------------------------------


class DeploymentResourceCreate(_Request):
    cpu_cores: CpuCores
    memory_mb: MemoryMb
    gpu_units: GpuUnits = 0
    storage_gb: StorageGb


class DeploymentCreate(_Request):
    name: Name
    container_image: ContainerImage
    target_replicas: ReplicaCount = 1
    resources: DeploymentResourceCreate


class DeploymentUpdate(_Request):
    """Only the fields given change; `resources`, when given, replaces the whole allocation."""

    name: Name | None = None
    container_image: ContainerImage | None = None
    target_replicas: ReplicaCount | None = None
    resources: DeploymentResourceCreate | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _no_explicit_null(cls, value: Any, info: ValidationInfo) -> Any:
        # `None` is how an unset field looks; written out (`name: null`) it would ask the store
        # to clear a NOT NULL column. Validators do not run for defaults, only for given values.
        if value is None:
            raise _error(
                "null", "{field} may be left out but not set to null", field=info.field_name
            )
        return value


class DeploymentScale(_Request):
    target_replicas: ReplicaCount


class NodeCreate(_Request):
    """Name and Docker URL are enough; capacity left out is detected from the engine."""

    name: Name
    docker_url: DockerUrl
    cpu_cores: PositiveFloat | None = None
    memory_mb: PositiveInt | None = None
    gpu_units: NonNegativeInt | None = None
    storage_gb: PositiveInt | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    unschedulable: bool = False


class UserCreate(_Request):
    username: Name


# --- responses --------------------------------------------------------------------------------


class DeploymentResourceResponse(_Response):
    id: uuid.UUID
    deployment_id: uuid.UUID
    cpu_cores: float
    memory_mb: int
    gpu_units: int
    storage_gb: int
    created_at: datetime
    updated_at: datetime


class DeploymentReplicaResponse(_Response):
    id: uuid.UUID
    deployment_id: uuid.UUID
    node_id: uuid.UUID | None
    status: ReplicaStatus
    container_id: str | None
    started_at: datetime | None
    stopped_at: datetime | None
    created_at: datetime


class DeploymentStatusHistoryResponse(_Response):
    id: uuid.UUID
    deployment_id: uuid.UUID
    old_status: str
    new_status: str
    changed_by: uuid.UUID | None
    changed_at: datetime
    reason: str | None


class DeploymentResponse(_Response):
    """One deployment in full; load `resources` and `replicas` eagerly before building it."""

    id: uuid.UUID
    name: str
    user_id: uuid.UUID
    container_image: str
    status: DeploymentStatus
    target_replicas: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    resources: DeploymentResourceResponse | None = None
    replicas: list[DeploymentReplicaResponse] = Field(default_factory=list)


class DeploymentListResponse(_Response):
    """One line of a listing; `running_replicas` comes from the query (a labelled count)."""

    id: uuid.UUID
    name: str
    container_image: str
    status: DeploymentStatus
    target_replicas: int
    running_replicas: int
    created_at: datetime
    updated_at: datetime


class _DeploymentResult(_Response):
    success: bool = True
    # Reads `id` from a Deployment row, `deployment_id` from a dict or a labelled result row.
    deployment_id: uuid.UUID = Field(validation_alias=AliasChoices("deployment_id", "id"))
    status: DeploymentStatus
    message: str = ""

    @classmethod
    def of(cls, deployment: object, message: str, *, success: bool = True) -> Self:
        """Build from a Deployment row plus the words for the operator."""
        return cls.model_validate(deployment).model_copy(
            update={"message": message, "success": success}
        )


class DeploymentCreateResponse(_DeploymentResult):
    name: str
    target_replicas: int


class DeploymentOperationResponse(_DeploymentResult):
    """The outcome of scale, stop or delete."""


class NodeResponse(_Response):
    id: uuid.UUID
    name: str
    docker_url: str
    status: NodeStatus
    cpu_cores: float | None
    memory_mb: int | None
    gpu_units: int | None
    storage_gb: int | None
    labels: dict[str, Any]
    unschedulable: bool
    draining: bool
    last_heartbeat_at: datetime | None
    created_at: datetime
    updated_at: datetime
    # What the controller read from the engine (NULL until its first probe).
    storage_driver: str | None = None
    storage_limits: str | None = None  # enforced | monitored
    engine_version: str | None = None


class UserResponse(_Response):
    id: uuid.UUID
    username: str
    created_at: datetime
