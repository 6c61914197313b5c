"""What fogctl says when something is wrong, and the exit code that goes with it.

Operators and scripts act on two things: the exit code (2 = fix your input, 1 = the command
could not do its job: not found, database down, rollout failed) and one line naming what to fix.
Two sources of "your input is wrong" must read alike: Pydantic's validation errors (checked
before any SQL runs) and the database's own constraint violations (an operator's hand-written
SQL, a race between two fogctl runs, or a rule the Pydantic layer does not know). Both become
`field: rule, got value`; a traceback never reaches the terminal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from controller.placement_rules import LABEL_NAME_MAX
from schema import models
from schema.api import INTEGER_MAX
from schema.enums import DeploymentStatus, NodeStatus, ReplicaStatus

EXIT_FAILURE = 1  # the command could not do its job (not found, unreachable, rollout failed)
EXIT_USAGE = 2  # the input is wrong; the same exit code click gives a bad option


class FogctlError(Exception):
    """An error with the one line the operator reads and the exit code scripts see."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(FogctlError):
    """Bad input: a file, an option or a name that cannot be used as given."""

    exit_code = EXIT_USAGE


class NotFound(FogctlError):
    """The named object does not exist (for this user)."""


class Unavailable(FogctlError):
    """The database could not be reached, or holds no fog-controller schema."""


# --- allowed values, in the operator's words ---------------------------------------------------


def _n(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _choices(values: Sequence[str]) -> str:
    return "one of " + ", ".join(values)


_RESOURCE_RANGES = {
    "cpu_cores": f"{_n(models.CPU_CORES_MIN)} to {_n(models.CPU_CORES_MAX)} cores",
    "memory_mb": f"{models.MEMORY_MB_MIN} to {models.MEMORY_MB_MAX} MB",
    "gpu_units": f"{models.GPU_UNITS_MIN} to {models.GPU_UNITS_MAX} units",
    "storage_gb": f"{models.STORAGE_GB_MIN} to {models.STORAGE_GB_MAX} GB",
}
_NAME_RANGE = f"1 to {models.NAME_MAX_LENGTH} characters, no control characters"
_IMAGE_RANGE = f"1 to {models.IMAGE_MAX_LENGTH} characters, no whitespace"

# Allowed values per model and field path, added to Pydantic's built-in messages (type errors,
# missing fields) which, unlike our own validators' messages, name neither range nor value.
ALLOWED: dict[str, dict[str, str]] = {
    "DeploymentCreate": {
        "name": _NAME_RANGE,
        "container_image": _IMAGE_RANGE,
        "target_replicas": f"an integer from 0 to {INTEGER_MAX}",
        **{f"resources.{k}": v for k, v in _RESOURCE_RANGES.items()},
        "resources": "a mapping with cpu_cores, memory_mb, gpu_units (optional) and storage_gb",
    },
    "DeploymentScale": {"target_replicas": f"an integer from 0 to {INTEGER_MAX}"},
    "NodeCreate": {
        "name": _NAME_RANGE,
        "docker_url": "a URL such as unix:///var/run/docker.sock or tcp://10.0.0.5:2376",
        "cpu_cores": "a number greater than 0",
        "memory_mb": f"an integer from 1 to {INTEGER_MAX}",
        "gpu_units": f"an integer from 0 to {INTEGER_MAX}",
        "storage_gb": f"an integer from 1 to {INTEGER_MAX}",
    },
    "UserCreate": {"username": _NAME_RANGE},
}

# Rules worded here in place of the schema's message (whatever the error's kind: a number too
# small, too large, or not a number at all), as the database constraint words the same rule.
_MAX_PER_NODE = "must be at least 1 (or left out: no cap)"
OWN_WORDS: dict[str, dict[str, str]] = {
    "DeploymentCreate": {"placement.max_per_node": _MAX_PER_NODE},
}

# Errors raised by schema/api.py's own validators: their text already names field and value.
_SELF_EXPLAINED = frozenset(
    {
        "out_of_range",
        "number_type",
        "length",
        "whitespace",
        "control_character",
        "docker_url_scheme",
        "null",
        # The container spec's (issue 14).
        "one_of",
        "not_absolute",
        "volume_name",
        "volume_source",
        "healthcheck_command",
        "duplicate",
        "env_name",
        "label",
        "label_key",  # placement.spread_by (issue 15)
        "ports_without_network",
        "password",
    }
)


def _path(loc: Sequence[str | int]) -> str:
    """Pydantic's own dotted location, list indexes included: `ports.0.host_port`."""
    return ".".join(str(part) for part in loc)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validation_messages(
    exc: ValidationError,
    model: type[BaseModel],
    *,
    options: Mapping[str, str] | None = None,
) -> list[str]:
    """One `field: what is wrong` line per error; `options` renames fields given as CLI flags
    (`cpu_cores` -> `--cpu`), so the message names what the operator typed."""
    allowed = ALLOWED.get(model.__name__, {})
    own_words = OWN_WORDS.get(model.__name__, {})
    fields = list(model.model_fields)
    lines = []
    for error in exc.errors():
        path = _path(error["loc"])
        kind = error["type"]
        label = options.get(path, path) if options else path
        if path in own_words and kind not in ("missing", "extra_forbidden"):
            text = f"{own_words[path]}, got {_shown(error['input'])}"
        elif kind in _SELF_EXPLAINED:
            text = error["msg"]
        elif kind == "extra_forbidden":
            parent = error["loc"][:-1]
            known = fields if not parent else _nested_fields(model, parent)
            text = f"unknown field (allowed: {', '.join(known)})"
        elif kind == "missing":
            text = "required field is missing"
            if path in allowed:
                text += f" (allowed: {allowed[path]})"
        elif kind == "model_type" or kind == "dict_type":
            text = f"expected a mapping of fields, got {_shown(error['input'])}"
        else:
            text = error["msg"][0].lower() + error["msg"][1:]
            if path in allowed:
                text += f" (allowed: {allowed[path]})"
            if error["loc"][-1:] != ("password",):  # a secret is never echoed
                text += f", got {_shown(error['input'])}"
        lines.append(f"{label}: {text}" if label else text)
    return lines


def _nested_fields(model: type[BaseModel], parent: Sequence[str | int]) -> list[str]:
    current: Any = model
    for part in parent:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = field.annotation
        # `X | None` and friends: take the model out of the union.
        for arg in getattr(current, "__args__", ()):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
    return list(getattr(current, "model_fields", {}))


# --- database constraint violations --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """What a named database constraint protects: the field and the rule, in words."""

    field: str
    rule: str


def _status_rule(values: Sequence[str]) -> str:
    return f"must be {_choices(values)}"


_PORT_RANGE = f"must be {models.PORT_MIN} to {models.PORT_MAX}"
_LABEL_NAME = (
    f"1 to {LABEL_NAME_MAX} letters, digits, '-', '_' or '.', starting and ending with a "
    "letter or digit"
)
_LABEL_KEY = f"a label key: [DNS-subdomain prefix/]name, the name {_LABEL_NAME}"
_LABEL_VALUE = f"a label value: empty, or {_LABEL_NAME}"
_GONE = "does not exist (deleted meanwhile?)"
# The container spec's tables (migration 0007), named by the fields of `fogctl apply`.
_SPEC_CONSTRAINTS: dict[str, Rule] = {
    "ck_deployment_specs_entrypoint_array": Rule("entrypoint", "must be a JSON array of strings"),
    "ck_deployment_specs_command_array": Rule("command", "must be a JSON array of strings"),
    "ck_deployment_specs_healthcheck_command_array": Rule(
        "healthcheck.command", "must be a JSON array of strings"
    ),
    "ck_deployment_specs_network_known": Rule(
        "network", f"must be {_choices(models.NETWORK_MODES)} (or left out)"
    ),
    "ck_deployment_specs_stop_grace_seconds_range": Rule(
        "stop_grace_seconds", f"must be 0 to {models.STOP_GRACE_MAX_SECONDS} seconds"
    ),
    "ck_deployment_specs_healthcheck_interval_positive": Rule(
        "healthcheck.interval_seconds", "must be greater than 0"
    ),
    "ck_deployment_specs_healthcheck_timeout_positive": Rule(
        "healthcheck.timeout_seconds", "must be greater than 0"
    ),
    "ck_deployment_specs_healthcheck_retries_positive": Rule(
        "healthcheck.retries", "must be 1 or more"
    ),
    "ck_deployment_specs_healthcheck_start_period_non_negative": Rule(
        "healthcheck.start_period_seconds", "must be 0 or more"
    ),
    "ck_deployment_specs_healthcheck_needs_command": Rule(
        "healthcheck.command", "is required when any other healthcheck field is set"
    ),
    "ck_deployment_specs_image_pull_secret_not_empty": Rule(
        "image_pull_secret", "must not be empty (leave it out for a public image)"
    ),
    "uq_deployment_specs_deployment_id": Rule(
        "spec", "is already set for this deployment (one deployment_specs row per deployment)"
    ),
    "ck_deployment_env_name_not_empty": Rule("env", "names must not be empty"),
    "ck_deployment_env_name_without_equals": Rule("env", "names must not contain '='"),
    "pk_deployment_env": Rule("env", "names must be unique in one deployment"),
    "ck_deployment_labels_key_not_empty": Rule("labels", "keys must not be empty"),
    "ck_deployment_labels_key_not_reserved": Rule(
        "labels",
        f"keys must not start with {models.RESERVED_LABEL_PREFIX!r} (the controller's own)",
    ),
    "pk_deployment_labels": Rule("labels", "keys must be unique in one deployment"),
    "ck_deployment_ports_container_port_range": Rule("ports.container_port", _PORT_RANGE),
    "ck_deployment_ports_host_port_range": Rule("ports.host_port", _PORT_RANGE),
    "ck_deployment_ports_protocol_known": Rule(
        "ports.protocol", f"must be {_choices(models.PORT_PROTOCOLS)}"
    ),
    "uq_deployment_ports_deployment_id_host_port_protocol": Rule(
        "ports.host_port", "is given twice in one deployment (per protocol)"
    ),
    "uq_deployment_ports_deployment_id_container_port_protocol": Rule(
        "ports.container_port", "is given twice in one deployment (per protocol)"
    ),
    "ck_deployment_volumes_name_or_host_path": Rule(
        "volumes", "each needs exactly one of name (a named volume) or host_path"
    ),
    "ck_deployment_volumes_mount_path_absolute": Rule(
        "volumes.mount_path", "must be an absolute path (starting with /)"
    ),
    "ck_deployment_volumes_host_path_absolute": Rule(
        "volumes.host_path", "must be an absolute path (starting with /)"
    ),
    "ck_deployment_volumes_name_format": Rule(
        "volumes.name", "must be a letter or digit followed by letters, digits, _, . or -"
    ),
    "uq_deployment_volumes_deployment_id_mount_path": Rule(
        "volumes.mount_path", "is given twice in one deployment"
    ),
    "uq_deployment_volumes_deployment_id_name": Rule(
        "volumes.name", "is given twice in one deployment"
    ),
    # Placement (migration 0008): label syntax is Kubernetes' (controller/placement_rules.py).
    "ck_deployment_specs_spread_by_syntax": Rule("placement.spread_by", f"must be {_LABEL_KEY}"),
    "ck_deployment_specs_max_per_node_positive": Rule("placement.max_per_node", _MAX_PER_NODE),
    "ck_deployment_node_selectors_key_syntax": Rule(
        "placement.node_selector", f"keys must be {_LABEL_KEY}"
    ),
    "ck_deployment_node_selectors_value_syntax": Rule(
        "placement.node_selector", f"values must be {_LABEL_VALUE}"
    ),
    "pk_deployment_node_selectors": Rule(
        "placement.node_selector", "keys must be unique in one deployment"
    ),
    "ck_registry_credentials_name_not_empty": Rule("name", "must not be empty"),
    "ck_registry_credentials_registry_host_not_empty": Rule("registry", "must not be empty"),
    "ck_registry_credentials_username_not_empty": Rule("username", "must not be empty"),
    "uq_registry_credentials_user_id_name": Rule(
        "name", "is taken: this user already has a registry secret with this name"
    ),
    "fk_registry_credentials_user_id_users": Rule("user", _GONE),
    **{
        f"fk_{table}_deployment_id_deployments": Rule("deployment", _GONE)
        for table in models.SPEC_TABLES
    },
}

CONSTRAINTS: dict[str, Rule] = {
    **{
        f"ck_deployment_resources_{k}_range": Rule(f"resources.{k}", f"must be {v}")
        for k, v in _RESOURCE_RANGES.items()
    },
    "ck_deployments_target_replicas_non_negative": Rule("target_replicas", "must be 0 or more"),
    "ck_deployments_name_not_empty": Rule("name", "must not be empty"),
    "ck_deployments_container_image_not_empty": Rule("container_image", "must not be empty"),
    "ck_deployments_deployment_status": Rule(
        "status", _status_rule([s.value for s in DeploymentStatus])
    ),
    "ck_deployment_replicas_replica_status": Rule(
        "status", _status_rule([s.value for s in ReplicaStatus])
    ),
    "ck_nodes_node_status": Rule("status", _status_rule([s.value for s in NodeStatus])),
    "ck_nodes_name_not_empty": Rule("name", "must not be empty"),
    "ck_nodes_docker_url_not_empty": Rule("docker_url", "must not be empty"),
    "ck_nodes_cpu_cores_positive": Rule("cpu_cores", "must be greater than 0"),
    "ck_nodes_memory_mb_positive": Rule("memory_mb", "must be greater than 0"),
    "ck_nodes_gpu_units_non_negative": Rule("gpu_units", "must be 0 or more"),
    "ck_nodes_storage_gb_positive": Rule("storage_gb", "must be greater than 0"),
    "ck_nodes_storage_limits_known": Rule(
        "storage_limits", "must be enforced or monitored (the controller writes it)"
    ),
    "ck_deployment_controller_state_generation_positive": Rule(
        "generation", "must be 1 or more (the database counts it)"
    ),
    "ck_deployment_controller_state_observed_generation_range": Rule(
        "observed_generation",
        "must be between 0 and generation (the controller writes it)",
    ),
    "ck_deployment_controller_state_crash_failures_non_negative": Rule(
        "crash_failures", "must be 0 or more (the controller writes it)"
    ),
    "ck_users_username_not_empty": Rule("username", "must not be empty"),
    "ck_control_plane_single_row": Rule(
        "control_plane.id", "must be 1 (one row, the controller's fencing epoch)"
    ),
    # SQLite's canonical-text CHECK on every uuid column (schema.models.UUIDType).
    **{
        f"ck_{table.name}_{c.name}_uuid": Rule(
            c.name if table.name != "deployment_resources" else f"resources.{c.name}",
            "must be a UUID in canonical text (8-4-4-4-12 hex digits)",
        )
        for table in models.Base.metadata.sorted_tables
        for c in table.columns
        if isinstance(c.type, models.UUIDType)
    },
    "uq_users_username": Rule("username", "is taken: a user with this name already exists"),
    "uq_nodes_name": Rule("name", "is taken: a node with this name already exists"),
    "idx_deployments_user_name_unique": Rule(
        "name", "is taken: this user already has a deployment with this name"
    ),
    "uq_deployment_resources_deployment_id": Rule(
        "resources", "is already set for this deployment (one resources row per deployment)"
    ),
    "fk_deployments_user_id_users": Rule("user", "does not exist (deleted meanwhile?)"),
    **_SPEC_CONSTRAINTS,
    "fk_deployment_resources_deployment_id_deployments": Rule(
        "deployment", "does not exist (deleted meanwhile?)"
    ),
}

# SQLite names only the columns of a violated UNIQUE constraint, not the constraint.
_SQLITE_UNIQUE = {
    "users.username": "uq_users_username",
    "nodes.name": "uq_nodes_name",
    "deployments.user_id, deployments.name": "idx_deployments_user_name_unique",
    "deployment_resources.deployment_id": "uq_deployment_resources_deployment_id",
    "deployment_specs.deployment_id": "uq_deployment_specs_deployment_id",
    "deployment_env.deployment_id, deployment_env.name": "pk_deployment_env",
    "deployment_labels.deployment_id, deployment_labels.key": "pk_deployment_labels",
    "deployment_node_selectors.deployment_id, deployment_node_selectors.key": (
        "pk_deployment_node_selectors"
    ),
    "deployment_ports.deployment_id, deployment_ports.host_port, deployment_ports.protocol": (
        "uq_deployment_ports_deployment_id_host_port_protocol"
    ),
    "deployment_ports.deployment_id, deployment_ports.container_port, "
    "deployment_ports.protocol": "uq_deployment_ports_deployment_id_container_port_protocol",
    "deployment_volumes.deployment_id, deployment_volumes.mount_path": (
        "uq_deployment_volumes_deployment_id_mount_path"
    ),
    "deployment_volumes.deployment_id, deployment_volumes.name": (
        "uq_deployment_volumes_deployment_id_name"
    ),
    "registry_credentials.user_id, registry_credentials.name": (
        "uq_registry_credentials_user_id_name"
    ),
}
_PG_NAME = re.compile(r'constraint "([^"]+)"')
_SQLITE_CHECK = re.compile(r"CHECK constraint failed: (\w+)")
_SQLITE_UNIQUE_COLUMNS = re.compile(r"UNIQUE constraint failed: (.+)$", re.MULTILINE)
_NOT_NULL = re.compile(r'NOT NULL constraint failed: \w+\.(\w+)|column "(\w+)".*not-null')


def constraint_name(exc: DBAPIError) -> str | None:
    """The violated constraint's name, from asyncpg's attribute or either backend's message."""
    orig = exc.orig
    for candidate in (orig, getattr(orig, "__cause__", None)):
        name = getattr(candidate, "constraint_name", None)
        if isinstance(name, str) and name:
            return name
    text = str(orig)
    if found := _PG_NAME.search(text):
        return found.group(1)
    if found := _SQLITE_CHECK.search(text):
        return found.group(1)
    if found := _SQLITE_UNIQUE_COLUMNS.search(text):
        return _SQLITE_UNIQUE.get(found.group(1).strip())
    return None


def constraint_message(exc: DBAPIError, values: Mapping[str, object] | None = None) -> str:
    """`resources.cpu_cores must be 0.5 to 32 cores, got 64 (database constraint ck_...)`.

    `values` maps field paths to what the command tried to write, so the message can show the
    offending value; the database itself reports it in a different shape on each backend.
    """
    values = values or {}
    name = constraint_name(exc)
    rule = CONSTRAINTS.get(name or "")
    if rule is not None:
        got = f", got {_shown(values[rule.field])}" if rule.field in values else ""
        return f"{rule.field}: {rule.rule}{got} (database constraint {name})"
    if found := _NOT_NULL.search(str(exc.orig)):
        field = found.group(1) or found.group(2)
        return f"{field}: a value is required (the database refused NULL)"
    detail = first_line(str(exc.orig))
    suffix = f" (database constraint {name})" if name else ""
    return f"the database refused the change: {detail}{suffix}"


# --- unreachable databases ---------------------------------------------------------------------


def first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        # asyncpg and the SQLAlchemy wrapper prefix the driver's class: keep the words only.
        line = re.sub(r"^<class '[\w.]+'>: ", "", line)
        if line:
            return line
    return text.strip() or "unknown error"


def scrub(text: str, url: str) -> str:
    """`text` with the URL's password removed wherever a driver may have echoed it."""
    try:
        password = make_url(url).password
    except Exception:  # an unparsable URL has no password we could find either
        return text
    if password:
        text = text.replace(str(password), "***")
    return text


def reason_of(exc: BaseException) -> str:
    """The driver's words for a failure, without SQLAlchemy's wrapping and links."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return first_line(str(exc.orig))
    if isinstance(exc, TimeoutError):
        return "timed out"
    return first_line(str(exc)) if str(exc) else type(exc).__name__
