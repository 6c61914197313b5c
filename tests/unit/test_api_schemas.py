"""Request validation speaks in the operator's terms: the field, the allowed range, the value.

These models stand between a hand-written YAML file and the database; a value the database
would refuse must be refused here first, with a message that names what to fix.
"""

from __future__ import annotations

import math
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from schema import api, models

RESOURCES = {"cpu_cores": 1.0, "memory_mb": 1024, "gpu_units": 0, "storage_gb": 10}
DEPLOYMENT = {"name": "web", "container_image": "nginx:1.27", "resources": RESOURCES}

# (field, low, high, a step that lands just outside)
RESOURCE_BOUNDS = [
    ("cpu_cores", models.CPU_CORES_MIN, models.CPU_CORES_MAX, 0.01),
    ("memory_mb", models.MEMORY_MB_MIN, models.MEMORY_MB_MAX, 1),
    ("gpu_units", models.GPU_UNITS_MIN, models.GPU_UNITS_MAX, 1),
    ("storage_gb", models.STORAGE_GB_MIN, models.STORAGE_GB_MAX, 1),
]


def _errors(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {".".join(map(str, e["loc"])): e["msg"] for e in exc.value.errors()}


def _resources(**changes: Any) -> api.DeploymentResourceCreate:
    return api.DeploymentResourceCreate(**{**RESOURCES, **changes})


# --- resources ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param(field, value, id=f"{field}={value:g}")
        for field, low, high, _ in RESOURCE_BOUNDS
        for value in (low, high)
    ],
)
def test_resource_bounds_are_accepted(field: str, value: float) -> None:
    assert getattr(_resources(**{field: value}), field) == value


@pytest.mark.parametrize(
    ("field", "value", "low", "high"),
    [
        pytest.param(field, value, low, high, id=f"{field}={value:g}")
        for field, low, high, step in RESOURCE_BOUNDS
        for value in (low - step, high + step)
    ],
)
def test_resource_just_outside_its_range_names_field_range_and_value(
    field: str, value: float, low: float, high: float
) -> None:
    with pytest.raises(ValidationError) as raised:
        _resources(**{field: value})
    message = _errors(raised)[field]
    assert message.startswith(f"{field} must be between {low:g} and {high:g}")
    assert f"got {value:g}" in message


def test_gpu_units_default_to_zero() -> None:
    resources = api.DeploymentResourceCreate(cpu_cores=0.5, memory_mb=512, storage_gb=1)
    assert resources.gpu_units == 0


@pytest.mark.parametrize("field", ["cpu_cores", "memory_mb", "gpu_units", "storage_gb"])
def test_a_yaml_boolean_is_not_a_number(field: str) -> None:
    # `gpu_units: yes` parses as True, and True == 1 in Python.
    with pytest.raises(ValidationError) as raised:
        _resources(**{field: True})
    assert _errors(raised)[field] == f"{field} must be a number, got True"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_cpu_cores_must_be_finite(value: float) -> None:
    with pytest.raises(ValidationError) as raised:
        _resources(cpu_cores=value)
    assert "cpu_cores" in _errors(raised)


@given(
    st.floats(
        min_value=models.CPU_CORES_MIN,
        max_value=models.CPU_CORES_MAX,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_any_cpu_value_in_range_is_kept(value: float) -> None:
    assert _resources(cpu_cores=value).cpu_cores == value


@given(
    st.floats(allow_nan=False, allow_infinity=False).filter(
        lambda v: not models.CPU_CORES_MIN <= v <= models.CPU_CORES_MAX
    )
)
def test_any_cpu_value_out_of_range_is_refused(value: float) -> None:
    with pytest.raises(ValidationError) as raised:
        _resources(cpu_cores=value)
    assert _errors(raised)["cpu_cores"].startswith("cpu_cores must be between 0.5 and 32 cores")


@pytest.mark.parametrize(
    ("field", "low", "high"), [(f, lo, hi) for f, lo, hi, _ in RESOURCE_BOUNDS[1:]]
)
@given(data=st.data())
def test_integer_resources_accept_exactly_their_range(
    field: str, low: int, high: int, data: st.DataObject
) -> None:
    value = data.draw(st.integers(min_value=low - 10_000, max_value=high + 10_000))
    if low <= value <= high:
        assert getattr(_resources(**{field: value}), field) == value
    else:
        with pytest.raises(ValidationError) as raised:
            _resources(**{field: value})
        assert f"got {value}" in _errors(raised)[field]


# --- deployments -------------------------------------------------------------------------------


def test_a_minimal_deployment_gets_one_replica() -> None:
    created = api.DeploymentCreate.model_validate(DEPLOYMENT)
    assert created.target_replicas == 1
    assert created.resources.gpu_units == 0


def test_unknown_fields_are_errors_not_silence() -> None:
    with pytest.raises(ValidationError) as raised:
        api.DeploymentCreate.model_validate({**DEPLOYMENT, "replicas": 3})
    assert _errors(raised) == {"replicas": "Extra inputs are not permitted"}


def test_unknown_nested_fields_are_errors_too() -> None:
    with pytest.raises(ValidationError) as raised:
        api.DeploymentCreate.model_validate({**DEPLOYMENT, "resources": {**RESOURCES, "gpu": 1}})
    assert _errors(raised) == {"resources.gpu": "Extra inputs are not permitted"}


@pytest.mark.parametrize(
    ("given_name", "kept"),
    [
        ("w", "w"),
        ("  web  ", "web"),
        ("x" * models.NAME_MAX_LENGTH, "x" * models.NAME_MAX_LENGTH),
        ("web server", "web server"),
        ("café-ünïcode", "café-ünïcode"),
    ],
)
def test_names_are_stripped_and_kept(given_name: str, kept: str) -> None:
    assert api.DeploymentCreate.model_validate({**DEPLOYMENT, "name": given_name}).name == kept


@pytest.mark.parametrize(
    ("bad_name", "expected"),
    [
        pytest.param("", "name must be 1 to 100 characters long, got 0", id="empty"),
        pytest.param("   ", "name must be 1 to 100 characters long, got 0", id="blank"),
        pytest.param("x" * 101, "name must be 1 to 100 characters long, got 101", id="101"),
        pytest.param("a\nb", "name must not contain control characters, got 'a\\nb'", id="lf"),
        pytest.param("a\x00b", "name must not contain control characters", id="nul"),
        pytest.param("a\x1b[31mb", "name must not contain control characters", id="escape"),
        pytest.param("a\u2028b", "name must not contain control characters", id="line-sep"),
    ],
)
def test_bad_names_are_refused(bad_name: str, expected: str) -> None:
    with pytest.raises(ValidationError) as raised:
        api.DeploymentCreate.model_validate({**DEPLOYMENT, "name": bad_name})
    assert _errors(raised)["name"].startswith(expected)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        pytest.param("", "container_image must be 1 to 500 characters long, got 0", id="empty"),
        pytest.param("x" * 501, "container_image must be 1 to 500 characters long", id="501"),
        pytest.param("nginx latest", "container_image must not contain whitespace", id="space"),
        pytest.param(" nginx", "container_image must not contain whitespace", id="leading"),
        pytest.param("nginx\t", "container_image must not contain whitespace", id="tab"),
    ],
)
def test_bad_images_are_refused(image: str, expected: str) -> None:
    with pytest.raises(ValidationError) as raised:
        api.DeploymentCreate.model_validate({**DEPLOYMENT, "container_image": image})
    assert _errors(raised)["container_image"].startswith(expected)


def test_longest_image_is_accepted() -> None:
    image = "r/" + "x" * (models.IMAGE_MAX_LENGTH - 2)
    assert api.DeploymentCreate.model_validate({**DEPLOYMENT, "container_image": image})


@pytest.mark.parametrize("model", [api.DeploymentCreate, api.DeploymentScale])
def test_target_replicas_zero_is_allowed_and_minus_one_is_not(model: type[Any]) -> None:
    base = DEPLOYMENT if model is api.DeploymentCreate else {}
    assert model.model_validate({**base, "target_replicas": 0}).target_replicas == 0
    with pytest.raises(ValidationError) as raised:
        model.model_validate({**base, "target_replicas": -1})
    assert _errors(raised)["target_replicas"] == (
        f"target_replicas must be between 0 and {api.INTEGER_MAX}, got -1"
    )


@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_scale_accepts_exactly_what_an_integer_column_holds(value: int) -> None:
    if 0 <= value <= api.INTEGER_MAX:
        assert api.DeploymentScale(target_replicas=value).target_replicas == value
    else:
        with pytest.raises(ValidationError):
            api.DeploymentScale(target_replicas=value)


def test_scale_needs_a_target() -> None:
    with pytest.raises(ValidationError) as raised:
        api.DeploymentScale.model_validate({})
    assert "target_replicas" in _errors(raised)


def test_an_update_changes_only_what_it_names() -> None:
    update = api.DeploymentUpdate.model_validate({"target_replicas": 3})
    assert update.model_dump(exclude_unset=True) == {"target_replicas": 3}
    assert api.DeploymentUpdate().model_dump(exclude_unset=True) == {}


def test_an_update_validates_like_a_create() -> None:
    with pytest.raises(ValidationError) as raised:
        api.DeploymentUpdate.model_validate(
            {"name": " ", "resources": {**RESOURCES, "memory_mb": 100}, "colour": "red"}
        )
    errors = _errors(raised)
    assert set(errors) == {"name", "resources.memory_mb", "colour"}


def test_an_update_refuses_an_explicit_null() -> None:
    with pytest.raises(ValidationError) as raised:
        api.DeploymentUpdate.model_validate({"container_image": None})
    assert _errors(raised) == {
        "container_image": "container_image may be left out but not set to null"
    }


# --- nodes and users ---------------------------------------------------------------------------


def test_a_node_needs_only_a_name_and_a_docker_url() -> None:
    node = api.NodeCreate.model_validate({"name": "edge-1", "docker_url": "tcp://10.0.0.1:2375"})
    assert node.cpu_cores is None
    assert node.labels == {}
    assert node.unschedulable is False


@pytest.mark.parametrize(
    ("changes", "field", "expected"),
    [
        ({"docker_url": "10.0.0.1:2375"}, "docker_url", "docker_url must start with one of"),
        ({"docker_url": "tcp://a b"}, "docker_url", "docker_url must not contain whitespace"),
        ({"cpu_cores": 0}, "cpu_cores", "cpu_cores must be greater than 0, got 0"),
        ({"memory_mb": 0}, "memory_mb", "memory_mb must be between 1 and"),
        ({"gpu_units": -1}, "gpu_units", "gpu_units must be between 0 and"),
        ({"storage_gb": 0}, "storage_gb", "storage_gb must be between 1 and"),
        ({"draining": True}, "draining", "Extra inputs are not permitted"),
    ],
)
def test_bad_node_fields_are_named(changes: dict[str, Any], field: str, expected: str) -> None:
    with pytest.raises(ValidationError) as raised:
        api.NodeCreate.model_validate({"name": "edge-1", "docker_url": "unix:///d.sock", **changes})
    assert _errors(raised)[field].startswith(expected)


def test_usernames_follow_the_name_rules() -> None:
    assert api.UserCreate(username=" ops ").username == "ops"
    with pytest.raises(ValidationError) as raised:
        api.UserCreate(username="")
    assert _errors(raised)["username"].startswith("username must be 1 to 100 characters")


# --- responses ---------------------------------------------------------------------------------


def test_request_schemas_publish_their_bounds() -> None:
    schema = api.DeploymentResourceCreate.model_json_schema()["properties"]
    assert schema["cpu_cores"]["minimum"] == models.CPU_CORES_MIN
    assert schema["memory_mb"]["maximum"] == models.MEMORY_MB_MAX


def test_operation_responses_accept_a_plain_mapping() -> None:
    deployment_id = uuid4()
    response = api.DeploymentOperationResponse.model_validate(
        {"deployment_id": deployment_id, "status": "stopped", "message": "stopped"}
    )
    assert response.deployment_id == deployment_id
    assert response.success is True
