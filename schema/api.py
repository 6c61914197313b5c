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

Label syntax (placement's node selector and `spread_by`) is checked by
`controller.placement_rules`, a pure module, so the words here, the daemon's and the
database's CHECKs (whose agreement tests/integration/test_placement_schema.py holds) are one
rule, not three copies of it.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from controller import placement_rules
from schema import models
from schema.enums import DeploymentStatus, NodeStatus, ReplicaStatus
from schema.models import (
    CPU_CORES_MAX,
    CPU_CORES_MIN,
    ENV_NAME_MAX_LENGTH,
    GPU_UNITS_MAX,
    GPU_UNITS_MIN,
    IMAGE_MAX_LENGTH,
    LABEL_KEY_MAX_LENGTH,
    MEMORY_MB_MAX,
    MEMORY_MB_MIN,
    NAME_MAX_LENGTH,
    NETWORK_MODES,
    NODE_LABEL_KEY_MAX_LENGTH,
    PATH_MAX_LENGTH,
    PORT_MAX,
    PORT_MIN,
    PORT_PROTOCOLS,
    RESERVED_LABEL_PREFIX,
    SECRET_NAME_MAX_LENGTH,
    STOP_GRACE_MAX_SECONDS,
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
Reference = Annotated[
    str, Field(json_schema_extra={"maxLength": IMAGE_MAX_LENGTH}), _reference(IMAGE_MAX_LENGTH)
]
ContainerImage = Reference
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


# --- the container spec (issue 14) -------------------------------------------------------------

# Docker's HEALTHCHECK forms: a command as argv, a shell line, or "no check".
HEALTHCHECK_FORMS = ("CMD", "CMD-SHELL", "NONE")
# What `deployment_volumes.name_format` allows: Docker's own rule for volume names.
VOLUME_NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


def _at_least(low: float) -> AfterValidator:
    def check(value: float, info: ValidationInfo) -> float:
        if not low <= value:
            raise _error(
                "out_of_range",
                "{field} must be {low} or more, got {value}",
                field=info.field_name,
                low=_number(low),
                value=_number(value),
            )
        return value

    return AfterValidator(check)


def _one_of(values: Sequence[str]) -> AfterValidator:
    def check(value: str, info: ValidationInfo) -> str:
        if value not in values:
            raise _error(
                "one_of",
                "{field} must be one of {allowed}, got {value}",
                field=info.field_name,
                allowed=", ".join(values),
                value=repr(value),
            )
        return value

    return AfterValidator(check)


def _without_nul(value: str, info: ValidationInfo) -> str:
    # PostgreSQL text cannot hold a NUL character, and no argv or environment can carry one.
    if "\x00" in value:
        raise _error(
            "control_character",
            "{field} must not contain a NUL character, got {value}",
            field=info.field_name,
            value=repr(value),
        )
    return value


def _absolute_path(value: str, info: ValidationInfo) -> str:
    _check_length(value, info, PATH_MAX_LENGTH)
    if any(unicodedata.category(c) in _FORBIDDEN_CATEGORIES for c in value):
        raise _error(
            "control_character",
            "{field} must not contain control characters, got {value}",
            field=info.field_name,
            value=repr(value),
        )
    if not value.startswith("/"):
        raise _error(
            "not_absolute",
            "{field} must be an absolute path (starting with /), got {value}",
            field=info.field_name,
            value=repr(value),
        )
    return value


def _volume_name(value: str, info: ValidationInfo) -> str:
    _check_length(value, info, NAME_MAX_LENGTH)
    if not VOLUME_NAME_PATTERN.fullmatch(value):
        raise _error(
            "volume_name",
            "{field} must be a letter or digit followed by letters, digits, _, . or -, got {value}",
            field=info.field_name,
            value=repr(value),
        )
    return value


def _healthcheck_command(value: list[str], info: ValidationInfo) -> list[str]:
    if not value or value[0] not in HEALTHCHECK_FORMS:
        raise _error(
            "healthcheck_command",
            "{field} must start with one of {forms} (as Docker's HEALTHCHECK), got {value}",
            field=info.field_name,
            forms=", ".join(HEALTHCHECK_FORMS),
            value=repr(value),
        )
    return value


def _invalid(errors: list[InitErrorDetails], title: str) -> ValidationError:
    """Errors found across several items, each at its own location (`ports.1.host_port`):
    raised from a validator, pydantic-core prefixes the field's location to each."""
    return ValidationError.from_exception_data(title, errors)


def _detail(loc: tuple[str | int, ...], error: PydanticCustomError, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=error, loc=loc, input=value)


def _duplicates(
    items: Sequence[Any],
    where: str,
    field: str,
    key: Callable[[Any], Hashable | None],
    shown: Callable[[Any], str],
) -> list[InitErrorDetails]:
    """One error per item whose `key` an earlier item already has (None keys never clash)."""
    first: dict[Hashable, int] = {}
    errors = []
    for index, item in enumerate(items):
        k = key(item)
        if k is None:
            continue
        if k in first:
            error = _error(
                "duplicate",
                "{field} {value} is given twice in one deployment (also {where}.{first})",
                field=field,
                value=shown(item),
                where=where,
                first=first[k],
            )
            errors.append(_detail((index, field), error, getattr(item, field)))
        else:
            first[k] = index
    return errors


def _env(value: dict[str, str]) -> dict[str, str]:
    errors = []
    for name, text in value.items():
        problem = None
        if not 1 <= len(name) <= ENV_NAME_MAX_LENGTH:
            problem = f"must be 1 to {ENV_NAME_MAX_LENGTH} characters long, got {len(name)}"
        elif "=" in name:
            problem = f"must not contain '=', got {name!r}"
        elif "\x00" in name:
            problem = f"must not contain a NUL character, got {name!r}"
        elif "\x00" in text:
            problem = f"is fine but its value must not contain a NUL character, got {text!r}"
        if problem:
            error = _error("env_name", "env name {problem}", problem=problem)
            errors.append(_detail((name,), error, name))
    if errors:
        raise _invalid(errors, "env")
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    errors = []
    for key, text in value.items():
        problem = None
        if not 1 <= len(key) <= LABEL_KEY_MAX_LENGTH:
            problem = f"key must be 1 to {LABEL_KEY_MAX_LENGTH} characters long, got {len(key)}"
        elif key.startswith(RESERVED_LABEL_PREFIX):
            problem = (
                f"key must not start with {RESERVED_LABEL_PREFIX!r} "
                f"(the controller's own labels), got {key!r}"
            )
        elif len(text) > IMAGE_MAX_LENGTH:
            problem = f"value must be at most {IMAGE_MAX_LENGTH} characters long, got {len(text)}"
        elif "\x00" in key or "\x00" in text:
            problem = f"must not contain a NUL character, got {key!r}"
        if problem:
            error = _error("label", "label {problem}", problem=problem)
            errors.append(_detail((key,), error, key))
    if errors:
        raise _invalid(errors, "labels")
    return value


def _label_key(value: str, info: ValidationInfo) -> str:
    problem = placement_rules.label_key_problem(value)
    if problem is not None:
        raise _error(
            "label_key",
            "{field} must be a label key: {problem}",
            field=info.field_name,
            problem=problem,
        )
    return value


def _node_selector(value: dict[str, str]) -> dict[str, str]:
    # Keys under fog.io/ are allowed: they select what the engines report (fog.io/arch).
    errors = []
    for key, text in value.items():
        problem = placement_rules.label_key_problem(key)
        if problem is None:
            problem = placement_rules.label_value_problem(text)
            problem = None if problem is None else f"{key}: {problem}"
        if problem:
            error = _error("label", "node selector {problem}", problem=problem)
            errors.append(_detail((key,), error, key))
    if errors:
        raise _invalid(errors, "node_selector")
    return value


Port = Annotated[
    int, _bounds(PORT_MIN, PORT_MAX), BeforeValidator(_reject_bool), _range(PORT_MIN, PORT_MAX)
]
Argument = Annotated[str, AfterValidator(_without_nul)]
Argv = list[Argument]
AbsolutePath = Annotated[
    str, Field(json_schema_extra={"maxLength": PATH_MAX_LENGTH}), AfterValidator(_absolute_path)
]
VolumeName = Annotated[
    str, Field(json_schema_extra={"maxLength": NAME_MAX_LENGTH}), AfterValidator(_volume_name)
]
Network = Annotated[str, _one_of(NETWORK_MODES)]
Protocol = Annotated[str, _one_of(PORT_PROTOCOLS)]
StopGraceSeconds = Annotated[
    int,
    _bounds(0, STOP_GRACE_MAX_SECONDS),
    BeforeValidator(_reject_bool),
    _range(0, STOP_GRACE_MAX_SECONDS, "seconds"),
]
NonNegativeFloat = Annotated[float, BeforeValidator(_reject_bool), _at_least(0)]
Env = Annotated[dict[str, str], AfterValidator(_env)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]
SecretName = Annotated[
    str, Field(json_schema_extra={"maxLength": SECRET_NAME_MAX_LENGTH}), AfterValidator(_name)
]
LabelKey = Annotated[
    str,
    Field(json_schema_extra={"maxLength": NODE_LABEL_KEY_MAX_LENGTH}),
    AfterValidator(_label_key),
]
NodeSelector = Annotated[dict[str, str], AfterValidator(_node_selector)]


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


class PortCreate(_Request):
    """A port the containers serve; `host_port` publishes it on the node (bridge network)."""

    container_port: Port
    host_port: Port | None = None
    protocol: Protocol = "tcp"


class VolumeCreate(_Request):
    """A mount: a named volume on the node (`name`) or a directory of the node (`host_path`)."""

    name: VolumeName | None = None
    host_path: AbsolutePath | None = None
    mount_path: AbsolutePath
    read_only: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.name is None) == (self.host_path is None):
            raise _error(
                "volume_source",
                "a volume needs exactly one of name (a named volume) or host_path, got {got}",
                got="both" if self.name is not None else "neither",
            )
        return self


class HealthcheckCreate(_Request):
    """Docker's HEALTHCHECK; durations and retries left out keep the engine's defaults."""

    command: Annotated[Argv, AfterValidator(_healthcheck_command)]
    interval_seconds: PositiveFloat | None = None
    timeout_seconds: PositiveFloat | None = None
    retries: PositiveInt | None = None
    start_period_seconds: NonNegativeFloat | None = None


class PlacementSpec(_Request):
    """Where a deployment may run and how it spreads (issue 15; controller/placement_rules.py):
    only on nodes holding every `node_selector` pair among their labels, spread evenly over
    the values of the node label `spread_by`, at most `max_per_node` replicas on one node, and
    replicas moved when the spread is off unless `rebalance` is false."""

    node_selector: NodeSelector = Field(default_factory=dict)
    spread_by: LabelKey | None = None
    max_per_node: PositiveInt | None = None
    rebalance: bool = True


def _unique_ports(ports: list[PortCreate]) -> list[PortCreate]:
    errors = _duplicates(
        ports,
        "ports",
        "host_port",
        lambda p: None if p.host_port is None else (p.host_port, p.protocol),
        lambda p: f"{p.host_port}/{p.protocol}",
    ) + _duplicates(
        ports,
        "ports",
        "container_port",
        lambda p: (p.container_port, p.protocol),
        lambda p: f"{p.container_port}/{p.protocol}",
    )
    if errors:
        raise _invalid(errors, "ports")
    return ports


def _unique_volumes(volumes: list[VolumeCreate]) -> list[VolumeCreate]:
    errors = _duplicates(
        volumes, "volumes", "mount_path", lambda v: v.mount_path, lambda v: repr(v.mount_path)
    ) + _duplicates(volumes, "volumes", "name", lambda v: v.name, lambda v: repr(v.name))
    if errors:
        raise _invalid(errors, "volumes")
    return volumes


Ports = Annotated[list[PortCreate], AfterValidator(_unique_ports)]
Volumes = Annotated[list[VolumeCreate], AfterValidator(_unique_volumes)]


def _ports_need_a_network(network: str | None, ports: list[PortCreate] | None) -> None:
    # With no network the container has nothing to serve a port on: refused here as the
    # controller would refuse it, not silently dropped.
    if network == "none" and ports:
        error = _error(
            "ports_without_network",
            "ports cannot be served with network none, got {count} port(s)",
            count=len(ports),
        )
        raise _invalid([_detail(("ports",), error, len(ports))], "DeploymentCreate")


class DeploymentCreate(_Request):
    """A deployment as `fogctl apply` reads it. The spec fields after `resources` are optional;
    left out, the container runs as its image says (entrypoint, command, network...)."""

    name: Name
    container_image: ContainerImage
    target_replicas: ReplicaCount = 1
    resources: DeploymentResourceCreate
    entrypoint: Argv | None = None
    command: Argv | None = None
    env: Env = Field(default_factory=dict)
    network: Network | None = None
    ports: Ports = Field(default_factory=list)
    volumes: Volumes = Field(default_factory=list)
    labels: Labels = Field(default_factory=dict)
    stop_grace_seconds: StopGraceSeconds | None = None
    healthcheck: HealthcheckCreate | None = None
    image_pull_secret: SecretName | None = None
    placement: PlacementSpec = Field(default_factory=PlacementSpec)

    @model_validator(mode="after")
    def _ports_and_network(self) -> Self:
        _ports_need_a_network(self.network, self.ports)
        return self


# Fields of an update where an explicit null means "as the image says" (the column's NULL).
SPEC_NULLABLE_FIELDS = frozenset(
    {
        "entrypoint",
        "command",
        "network",
        "stop_grace_seconds",
        "healthcheck",
        "image_pull_secret",
        "placement",  # null: no rules (anywhere it fits, spread by node)
    }
)


class DeploymentUpdate(_Request):
    """Only the fields given change; `resources`, when given, replaces the whole allocation,
    and so do `env`, `labels`, `ports`, `volumes` and `placement` (an empty one clears them;
    a placement's fields left out are its defaults). A nullable
    spec field (SPEC_NULLABLE_FIELDS) set to null goes back to the image's own setting."""

    name: Name | None = None
    container_image: ContainerImage | None = None
    target_replicas: ReplicaCount | None = None
    resources: DeploymentResourceCreate | None = None
    entrypoint: Argv | None = None
    command: Argv | None = None
    env: Env | None = None
    network: Network | None = None
    ports: Ports | None = None
    volumes: Volumes | None = None
    labels: Labels | None = None
    stop_grace_seconds: StopGraceSeconds | None = None
    healthcheck: HealthcheckCreate | None = None
    image_pull_secret: SecretName | None = None
    placement: PlacementSpec | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _no_explicit_null(cls, value: Any, info: ValidationInfo) -> Any:
        # `None` is how an unset field looks; written out (`name: null`) it would ask the store
        # to clear a NOT NULL column. Validators do not run for defaults, only for given values.
        if value is None and info.field_name not in SPEC_NULLABLE_FIELDS:
            raise _error(
                "null", "{field} may be left out but not set to null", field=info.field_name
            )
        return value

    @model_validator(mode="after")
    def _ports_and_network(self) -> Self:
        # Only what this update names is known here; the stored network is the store's check.
        _ports_need_a_network(self.network, self.ports)
        return self


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


def _password(value: SecretStr, info: ValidationInfo) -> SecretStr:
    # The value itself is never put in an error: only its length.
    secret = value.get_secret_value()
    if not secret or "\x00" in secret:
        raise _error(
            "password",
            "{field} must be non-empty text without NUL characters, got {length} characters",
            field=info.field_name,
            length=len(secret),
        )
    return value


class RegistryCredentialCreate(_Request):
    """A login to a private registry, named for `image_pull_secret`. The password is a
    SecretStr, so neither a repr nor a validation error of this model shows it."""

    # Pydantic puts a failed field's input in its error text: not for this model.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, hide_input_in_errors=True)

    name: SecretName
    registry: Reference  # host[:port], as in an image reference: 127.0.0.1:5000
    username: Reference
    password: Annotated[SecretStr, AfterValidator(_password)]


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


class PortResponse(_Response):
    container_port: int
    host_port: int | None = None
    protocol: str = "tcp"


class VolumeResponse(_Response):
    name: str | None = None
    host_path: str | None = None
    mount_path: str
    read_only: bool = False


class HealthcheckResponse(_Response):
    command: list[str]
    interval_seconds: float | None = None
    timeout_seconds: float | None = None
    retries: int | None = None
    start_period_seconds: float | None = None


class PlacementResponse(_Response):
    node_selector: dict[str, str] = Field(default_factory=dict)
    spread_by: str | None = None
    max_per_node: int | None = None
    rebalance: bool = True


def spec_fields(
    spec: Any | None,
    env: Iterable[Any] = (),
    labels: Iterable[Any] = (),
    ports: Iterable[Any] = (),
    volumes: Iterable[Any] = (),
    node_selectors: Iterable[Any] = (),
) -> dict[str, Any]:
    """The spec rows of one deployment (a `deployment_specs` row or None, and its child rows;
    ORM objects or result rows alike) as the fields of `DeploymentSpecResponse`, which are the
    fields `fogctl apply` reads: what `get -o yaml` shows can be applied back unchanged."""
    selector = {row.key: row.value for row in sorted(node_selectors, key=lambda r: r.key)}
    fields: dict[str, Any] = {
        "placement": PlacementResponse(
            node_selector=selector,
            spread_by=spec.spread_by if spec is not None else None,
            max_per_node=spec.max_per_node if spec is not None else None,
            rebalance=bool(spec.rebalance) if spec is not None else True,
        ),
        "env": {row.name: row.value for row in sorted(env, key=lambda r: r.name)},
        "labels": {row.key: row.value for row in sorted(labels, key=lambda r: r.key)},
        "ports": sorted(
            (PortResponse.model_validate(row) for row in ports),
            key=lambda p: (
                p.container_port,
                -1 if p.host_port is None else p.host_port,
                p.protocol,
            ),
        ),
        "volumes": sorted(
            (VolumeResponse.model_validate(row) for row in volumes), key=lambda v: v.mount_path
        ),
    }
    if spec is None:
        return fields
    fields.update(
        entrypoint=spec.entrypoint,
        command=spec.command,
        network=spec.network,
        stop_grace_seconds=spec.stop_grace_seconds,
        image_pull_secret=spec.image_pull_secret,
    )
    if spec.healthcheck_command is not None:
        fields["healthcheck"] = HealthcheckResponse(
            command=spec.healthcheck_command,
            interval_seconds=spec.healthcheck_interval_seconds,
            timeout_seconds=spec.healthcheck_timeout_seconds,
            retries=spec.healthcheck_retries,
            start_period_seconds=spec.healthcheck_start_period_seconds,
        )
    return fields


class DeploymentSpecResponse(_Response):
    """How a deployment's containers run beyond image and resources, with the names of
    `DeploymentCreate`; the pull secret by name only (the credential is never shown).
    Build it from rows with `spec_fields`."""

    entrypoint: list[str] | None = None
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    network: str | None = None
    ports: list[PortResponse] = Field(default_factory=list)
    volumes: list[VolumeResponse] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    stop_grace_seconds: int | None = None
    healthcheck: HealthcheckResponse | None = None
    image_pull_secret: str | None = None
    placement: PlacementResponse = Field(default_factory=PlacementResponse)


class DeploymentResponse(DeploymentSpecResponse):
    """One deployment in full; load `resources`, `replicas` and the spec relationships
    (`spec`, `env`, `labels`, `ports`, `volumes`, `node_selectors`) eagerly before building it
    from an ORM row."""

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

    @model_validator(mode="before")
    @classmethod
    def _flatten_spec(cls, data: Any) -> Any:
        # An ORM Deployment keeps its spec in related rows; the response shows it flat.
        if not isinstance(data, models.Deployment):
            return data
        fields = {
            name: getattr(data, name) for name in (*DEPLOYMENT_COLUMNS, "resources", "replicas")
        }
        return fields | spec_fields(
            data.spec, data.env, data.labels, data.ports, data.volumes, data.node_selectors
        )


DEPLOYMENT_COLUMNS = (
    "id",
    "name",
    "user_id",
    "container_image",
    "status",
    "target_replicas",
    "created_at",
    "updated_at",
    "deleted_at",
)


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


class RegistryCredentialResponse(_Response):
    """A registry credential as shown to its user: never the password, in any form."""

    id: uuid.UUID
    name: str
    registry: str = Field(validation_alias=AliasChoices("registry", "registry_host"))
    username: str
    created_at: datetime
    updated_at: datetime


class UserResponse(_Response):
    id: uuid.UUID
    username: str
    created_at: datetime
