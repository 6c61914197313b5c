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

from controller import placement_rules
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


# --- the container spec (issue 14) ----------------------------------------------------------

FULL_SPEC: dict[str, Any] = {
    "entrypoint": ["/bin/sh", "-c"],
    "command": ["exec httpd -f -p 8080"],
    "env": {"LOG_LEVEL": "debug", "SITE": "north"},
    "network": "bridge",
    "ports": [{"container_port": 8080, "host_port": 18080, "protocol": "tcp"}],
    "volumes": [
        {"name": "data", "mount_path": "/data"},
        {"host_path": "/srv/fog/cfg", "mount_path": "/cfg", "read_only": True},
    ],
    "labels": {"team": "edge"},
    "stop_grace_seconds": 10,
    "healthcheck": {
        "command": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/ || exit 1"],
        "interval_seconds": 5,
        "timeout_seconds": 2,
        "retries": 3,
        "start_period_seconds": 10,
    },
    "image_pull_secret": "company-registry",
    # The issue's placement block, as written there.
    "placement": {
        "node_selector": {"zone": "a", "fog.io/arch": "arm64"},
        "spread_by": "zone",
        "max_per_node": 1,
        "rebalance": True,
    },
}


def _spec_errors(**spec: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as raised:
        api.DeploymentCreate.model_validate({**DEPLOYMENT, **spec})
    return _errors(raised)


def test_the_issues_example_is_accepted_whole() -> None:
    created = api.DeploymentCreate.model_validate({**DEPLOYMENT, **FULL_SPEC})
    assert created.model_dump(include=set(FULL_SPEC), exclude_none=True) == {
        **FULL_SPEC,
        "volumes": [
            {"name": "data", "mount_path": "/data", "read_only": False},
            {"host_path": "/srv/fog/cfg", "mount_path": "/cfg", "read_only": True},
        ],
    }


def test_a_deployment_without_spec_fields_runs_as_its_image_says() -> None:
    created = api.DeploymentCreate.model_validate(DEPLOYMENT)
    assert (created.entrypoint, created.command, created.network) == (None, None, None)
    assert (created.env, created.labels, created.ports, created.volumes) == ({}, {}, [], [])
    assert created.healthcheck is None
    assert created.image_pull_secret is None


def test_a_port_defaults_to_tcp_and_no_host_port() -> None:
    created = api.DeploymentCreate.model_validate({**DEPLOYMENT, "ports": [{"container_port": 53}]})
    assert created.ports[0].model_dump() == {
        "container_port": 53,
        "host_port": None,
        "protocol": "tcp",
    }


@pytest.mark.parametrize(
    ("spec", "loc", "expected"),
    [
        pytest.param(
            {"ports": [{"container_port": 0}]},
            "ports.0.container_port",
            f"container_port must be between {models.PORT_MIN} and {models.PORT_MAX}, got 0",
            id="container-port-0",
        ),
        pytest.param(
            {"ports": [{"container_port": 80}, {"container_port": 81, "host_port": 65536}]},
            "ports.1.host_port",
            "host_port must be between 1 and 65535, got 65536",
            id="host-port-65536",
        ),
        pytest.param(
            {"ports": [{"container_port": True}]},
            "ports.0.container_port",
            "container_port must be a number, got True",
            id="port-yes",
        ),
        pytest.param(
            {"ports": [{"container_port": 80, "protocol": "sctp"}]},
            "ports.0.protocol",
            "protocol must be one of tcp, udp, got 'sctp'",
            id="protocol",
        ),
        pytest.param(
            {"network": "overlay"},
            "network",
            "network must be one of host, bridge, none, got 'overlay'",
            id="network",
        ),
        pytest.param(
            {"stop_grace_seconds": models.STOP_GRACE_MAX_SECONDS + 1},
            "stop_grace_seconds",
            "stop_grace_seconds must be between 0 and 3600 seconds, got 3601",
            id="grace-3601",
        ),
        pytest.param(
            {"stop_grace_seconds": -1},
            "stop_grace_seconds",
            "stop_grace_seconds must be between 0 and 3600 seconds, got -1",
            id="grace-minus-1",
        ),
        pytest.param(
            {"volumes": [{"name": "data", "mount_path": "data"}]},
            "volumes.0.mount_path",
            "mount_path must be an absolute path (starting with /), got 'data'",
            id="relative-mount",
        ),
        pytest.param(
            {"volumes": [{"host_path": "srv/cfg", "mount_path": "/cfg"}]},
            "volumes.0.host_path",
            "host_path must be an absolute path (starting with /), got 'srv/cfg'",
            id="relative-host-path",
        ),
        pytest.param(
            {"volumes": [{"name": "data", "host_path": "/srv", "mount_path": "/d"}]},
            "volumes.0",
            "a volume needs exactly one of name (a named volume) or host_path, got both",
            id="name-and-host-path",
        ),
        pytest.param(
            {"volumes": [{"mount_path": "/d"}]},
            "volumes.0",
            "a volume needs exactly one of name (a named volume) or host_path, got neither",
            id="neither",
        ),
        pytest.param(
            {"volumes": [{"name": "-data", "mount_path": "/d"}]},
            "volumes.0.name",
            "name must be a letter or digit followed by letters, digits, _, . or -, got '-data'",
            id="volume-name-leading-dash",
        ),
        pytest.param(
            {"volumes": [{"name": "da/ta", "mount_path": "/d"}]},
            "volumes.0.name",
            "name must be a letter or digit followed by letters, digits, _, . or -, got 'da/ta'",
            id="volume-name-slash",
        ),
        pytest.param(
            {"labels": {"fog.deployment": "x"}},
            "labels.fog.deployment",
            "label key must not start with 'fog.' (the controller's own labels), "
            "got 'fog.deployment'",
            id="reserved-label",
        ),
        pytest.param(
            {"labels": {"": "x"}},
            "labels.",
            f"label key must be 1 to {models.LABEL_KEY_MAX_LENGTH} characters long, got 0",
            id="empty-label-key",
        ),
        pytest.param(
            {"env": {"A=B": "x"}},
            "env.A=B",
            "env name must not contain '=', got 'A=B'",
            id="env-equals",
        ),
        pytest.param(
            {"env": {"": "x"}},
            "env.",
            f"env name must be 1 to {models.ENV_NAME_MAX_LENGTH} characters long, got 0",
            id="env-empty",
        ),
        pytest.param(
            {"env": {"A": "a\x00b"}},
            "env.A",
            "env name is fine but its value must not contain a NUL character, got 'a\\x00b'",
            id="env-value-nul",
        ),
        pytest.param(
            {"env": {"A\x00": "a"}},
            "env.A\x00",
            "env name must not contain a NUL character, got 'A\\x00'",
            id="env-name-nul",
        ),
        pytest.param(
            {"entrypoint": ["/bin/sh", "a\x00"]},
            "entrypoint.1",
            "entrypoint must not contain a NUL character, got 'a\\x00'",
            id="argv-nul",
        ),
        pytest.param(
            {"healthcheck": {"command": ["wget", "-q"]}},
            "healthcheck.command",
            "command must start with one of CMD, CMD-SHELL, NONE (as Docker's HEALTHCHECK), "
            "got ['wget', '-q']",
            id="healthcheck-form",
        ),
        pytest.param(
            {"healthcheck": {"command": ["CMD", "true"], "retries": 0}},
            "healthcheck.retries",
            f"retries must be between 1 and {api.INTEGER_MAX}, got 0",
            id="healthcheck-retries",
        ),
        pytest.param(
            {"healthcheck": {"command": ["CMD", "true"], "interval_seconds": 0}},
            "healthcheck.interval_seconds",
            "interval_seconds must be greater than 0, got 0.0",
            id="healthcheck-interval",
        ),
        pytest.param(
            {"healthcheck": {"command": ["CMD", "true"], "start_period_seconds": -1}},
            "healthcheck.start_period_seconds",
            "start_period_seconds must be 0 or more, got -1",
            id="healthcheck-start-period",
        ),
        pytest.param(
            {"image_pull_secret": ""},
            "image_pull_secret",
            "image_pull_secret must be 1 to 100 characters long, got 0",
            id="empty-secret-name",
        ),
    ],
)
def test_bad_spec_fields_name_field_rule_and_value(
    spec: dict[str, Any], loc: str, expected: str
) -> None:
    assert _spec_errors(**spec)[loc] == expected


@pytest.mark.parametrize(
    ("spec", "loc", "expected"),
    [
        pytest.param(
            {
                "ports": [
                    {"container_port": 80, "host_port": 18080},
                    {"container_port": 81, "host_port": 18080},
                ]
            },
            "ports.1.host_port",
            "host_port 18080/tcp is given twice in one deployment (also ports.0)",
            id="host-port",
        ),
        pytest.param(
            {"ports": [{"container_port": 80}, {"container_port": 53}, {"container_port": 80}]},
            "ports.2.container_port",
            "container_port 80/tcp is given twice in one deployment (also ports.0)",
            id="container-port",
        ),
        pytest.param(
            {
                "volumes": [
                    {"name": "a", "mount_path": "/data"},
                    {"host_path": "/srv", "mount_path": "/data"},
                ]
            },
            "volumes.1.mount_path",
            "mount_path '/data' is given twice in one deployment (also volumes.0)",
            id="mount-path",
        ),
        pytest.param(
            {
                "volumes": [
                    {"name": "a", "mount_path": "/one"},
                    {"name": "a", "mount_path": "/two"},
                ]
            },
            "volumes.1.name",
            "name 'a' is given twice in one deployment (also volumes.0)",
            id="volume-name",
        ),
    ],
)
def test_duplicates_in_one_deployment_are_refused_where_they_repeat(
    spec: dict[str, Any], loc: str, expected: str
) -> None:
    assert _spec_errors(**spec) == {loc: expected}


def test_the_same_port_number_over_tcp_and_udp_is_two_ports() -> None:
    ports = [
        {"container_port": 53, "host_port": 5353, "protocol": "tcp"},
        {"container_port": 53, "host_port": 5353, "protocol": "udp"},
    ]
    assert len(api.DeploymentCreate.model_validate({**DEPLOYMENT, "ports": ports}).ports) == 2


def test_ports_without_a_network_are_refused() -> None:
    assert _spec_errors(network="none", ports=[{"container_port": 80}]) == {
        "ports": "ports cannot be served with network none, got 1 port(s)"
    }
    update = {"network": "none", "ports": [{"container_port": 80}]}
    with pytest.raises(ValidationError) as raised:
        api.DeploymentUpdate.model_validate(update)
    assert set(_errors(raised)) == {"ports"}
    assert api.DeploymentCreate.model_validate({**DEPLOYMENT, "network": "none"}).ports == []


@given(st.integers(min_value=-(2**20), max_value=2**20))
def test_ports_accept_exactly_1_to_65535(value: int) -> None:
    spec = {**DEPLOYMENT, "ports": [{"container_port": value}]}
    if models.PORT_MIN <= value <= models.PORT_MAX:
        assert api.DeploymentCreate.model_validate(spec).ports[0].container_port == value
    else:
        with pytest.raises(ValidationError) as raised:
            api.DeploymentCreate.model_validate(spec)
        assert f"got {value}" in _errors(raised)["ports.0.container_port"]


@given(st.text(alphabet="aZ09_.-/ ", min_size=1, max_size=12))
def test_volume_names_follow_the_databases_pattern(name: str) -> None:
    spec = {**DEPLOYMENT, "volumes": [{"name": name, "mount_path": "/data"}]}
    fits = name[0].isalnum() and all(c.isalnum() or c in "_.-" for c in name)
    if fits:
        assert api.DeploymentCreate.model_validate(spec).volumes[0].name == name
    else:
        with pytest.raises(ValidationError):
            api.DeploymentCreate.model_validate(spec)


def test_an_update_may_reset_a_spec_field_to_the_images_own() -> None:
    update = api.DeploymentUpdate.model_validate({"entrypoint": None, "network": None})
    assert update.model_dump(exclude_unset=True) == {"entrypoint": None, "network": None}


@pytest.mark.parametrize("field", ["env", "labels", "ports", "volumes"])
def test_an_update_clears_a_collection_with_an_empty_one_not_null(field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        api.DeploymentUpdate.model_validate({field: None})
    assert _errors(raised) == {field: f"{field} may be left out but not set to null"}


def test_an_update_validates_spec_fields_like_a_create() -> None:
    with pytest.raises(ValidationError) as raised:
        api.DeploymentUpdate.model_validate(
            {"ports": [{"container_port": 70000}], "labels": {"fog.x": "1"}}
        )
    assert set(_errors(raised)) == {"ports.0.container_port", "labels.fog.x"}


# --- registry credentials --------------------------------------------------------------------

CREDENTIAL = {
    "name": "company-registry",
    "registry": "127.0.0.1:5000",
    "username": "fog",
    "password": "s3cret-Passw0rd",
}


def test_a_credentials_password_is_never_shown() -> None:
    credential = api.RegistryCredentialCreate.model_validate(CREDENTIAL)
    assert credential.password.get_secret_value() == CREDENTIAL["password"]
    assert CREDENTIAL["password"] not in repr(credential)
    assert CREDENTIAL["password"] not in credential.model_dump_json()
    with pytest.raises(ValidationError) as raised:
        api.RegistryCredentialCreate.model_validate({**CREDENTIAL, "name": "", "extra": 1})
    assert CREDENTIAL["password"] not in str(raised.value)


@pytest.mark.parametrize(
    ("changes", "loc", "expected"),
    [
        ({"password": ""}, "password", "password must be non-empty text"),
        ({"registry": "a b"}, "registry", "registry must not contain whitespace"),
        ({"username": ""}, "username", "username must be 1 to 500 characters long, got 0"),
        ({"name": ""}, "name", "name must be 1 to 100 characters long, got 0"),
    ],
)
def test_bad_credentials_are_named(changes: dict[str, str], loc: str, expected: str) -> None:
    with pytest.raises(ValidationError) as raised:
        api.RegistryCredentialCreate.model_validate({**CREDENTIAL, **changes})
    assert _errors(raised)[loc].startswith(expected)


def test_a_credential_response_has_no_password_field() -> None:
    row = {
        "id": uuid4(),
        "name": "company-registry",
        "registry_host": "127.0.0.1:5000",
        "username": "fog",
        "password_encrypted": "gAAAA-ciphertext",
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    shown = api.RegistryCredentialResponse.model_validate(row).model_dump()
    assert shown["registry"] == "127.0.0.1:5000"
    assert not {"password", "password_encrypted"} & set(shown)
    assert "gAAAA" not in repr(shown)


# --- the spec in responses -------------------------------------------------------------------


class _Row:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def test_spec_fields_turn_rows_into_what_apply_reads() -> None:
    spec = _Row(
        entrypoint=["/bin/sh", "-c"],
        command=["exec httpd -f -p 8080"],
        network="bridge",
        stop_grace_seconds=10,
        image_pull_secret="company-registry",
        healthcheck_command=FULL_SPEC["healthcheck"]["command"],
        healthcheck_interval_seconds=5.0,
        healthcheck_timeout_seconds=2.0,
        healthcheck_retries=3,
        healthcheck_start_period_seconds=10.0,
        spread_by="zone",
        max_per_node=1,
        rebalance=True,
    )
    fields = api.spec_fields(
        spec,
        env=[_Row(name="SITE", value="north"), _Row(name="LOG_LEVEL", value="debug")],
        labels=[_Row(key="team", value="edge")],
        ports=[_Row(container_port=8080, host_port=18080, protocol="tcp")],
        volumes=[
            _Row(name="data", host_path=None, mount_path="/data", read_only=False),
            _Row(name=None, host_path="/srv/fog/cfg", mount_path="/cfg", read_only=True),
        ],
        node_selectors=[_Row(key="zone", value="a"), _Row(key="fog.io/arch", value="arm64")],
    )
    shown = api.DeploymentSpecResponse.model_validate(fields).model_dump(exclude_none=True)
    applied = api.DeploymentCreate.model_validate({**DEPLOYMENT, **FULL_SPEC})
    assert shown == applied.model_dump(include=set(FULL_SPEC), exclude_none=True) | {
        # Sorted by mount path, as the controller sorts them.
        "volumes": [
            {"host_path": "/srv/fog/cfg", "mount_path": "/cfg", "read_only": True},
            {"name": "data", "mount_path": "/data", "read_only": False},
        ]
    }
    assert list(shown["env"]) == ["LOG_LEVEL", "SITE"]


def test_a_deployment_without_a_spec_row_shows_an_empty_spec() -> None:
    shown = api.DeploymentSpecResponse.model_validate(api.spec_fields(None))
    assert shown == api.DeploymentSpecResponse()
    assert shown.healthcheck is None
    assert shown.env == {}
    assert shown.placement == api.PlacementResponse(rebalance=True)


def test_selectors_without_a_spec_row_show_with_the_default_rebalance() -> None:
    fields = api.spec_fields(None, node_selectors=[_Row(key="gpu", value="")])
    shown = api.DeploymentSpecResponse.model_validate(fields).placement
    assert shown.model_dump() == {
        "node_selector": {"gpu": ""},
        "spread_by": None,
        "max_per_node": None,
        "rebalance": True,
    }


# --- placement (issue 15) ----------------------------------------------------------------------


def test_a_deployment_without_placement_may_run_anywhere() -> None:
    created = api.DeploymentCreate.model_validate(DEPLOYMENT)
    assert created.placement == api.PlacementSpec()
    assert created.placement.model_dump() == {
        "node_selector": {},
        "spread_by": None,
        "max_per_node": None,
        "rebalance": True,
    }


def test_a_selector_may_name_the_engines_own_labels_and_an_empty_value() -> None:
    placement = {"node_selector": {"fog.io/arch": "arm64", "fog.io/engine": "podman", "gpu": ""}}
    created = api.DeploymentCreate.model_validate({**DEPLOYMENT, "placement": placement})
    assert created.placement.node_selector == placement["node_selector"]


@pytest.mark.parametrize(
    ("placement", "loc", "expected"),
    [
        pytest.param(
            {"max_per_node": 0},
            "placement.max_per_node",
            f"max_per_node must be between 1 and {api.INTEGER_MAX}, got 0",
            id="max-per-node-zero",
        ),
        pytest.param(
            {"max_per_node": True},
            "placement.max_per_node",
            "max_per_node must be a number, got True",
            id="max-per-node-yaml-yes",
        ),
        pytest.param(
            {"spread_by": "-zone"},
            "placement.spread_by",
            "spread_by must be a label key: key '-zone': name '-zone' must consist of letters, "
            "digits, '-', '_' or '.', and start and end with a letter or digit",
            id="spread-by",
        ),
        pytest.param(
            {"spread_by": "Fog.IO/zone"},
            "placement.spread_by",
            "spread_by must be a label key: key 'Fog.IO/zone': the prefix must be a DNS "
            "subdomain (lower-case, dots between)",
            id="spread-by-prefix",
        ),
        pytest.param(
            {"node_selector": {"zone a": "x"}},
            "placement.node_selector.zone a",
            "node selector key 'zone a': name 'zone a' must consist of letters, digits, '-', "
            "'_' or '.', and start and end with a letter or digit",
            id="selector-key",
        ),
        pytest.param(
            {"node_selector": {"zone": "a" * 64}},
            "placement.node_selector.zone",
            "node selector zone: value must be at most 63 characters, got 64",
            id="selector-value",
        ),
        pytest.param(
            {"node_selector": {"zone": 1}},
            "placement.node_selector.zone",
            "Input should be a valid string",
            id="selector-value-number",
        ),
        pytest.param(
            {"spread": "zone"},
            "placement.spread",
            "Extra inputs are not permitted",
            id="unknown-field",
        ),
    ],
)
def test_bad_placement_is_named_under_placement(
    placement: dict[str, Any], loc: str, expected: str
) -> None:
    assert _spec_errors(placement=placement) == {loc: expected}
    with pytest.raises(ValidationError) as raised:
        api.DeploymentUpdate.model_validate({"placement": placement})
    assert _errors(raised) == {loc: expected}


@given(
    st.dictionaries(
        st.text(alphabet="aZ09-_./é ", max_size=12), st.text(alphabet="aZ09-_. ", max_size=8)
    )
)
def test_a_selector_is_accepted_exactly_when_placement_rules_accept_every_pair(
    selector: dict[str, str],
) -> None:
    fits = all(
        placement_rules.label_key_problem(k) is None
        and placement_rules.label_value_problem(v) is None
        for k, v in selector.items()
    )
    spec = {**DEPLOYMENT, "placement": {"node_selector": selector}}
    if fits:
        assert api.DeploymentCreate.model_validate(spec).placement.node_selector == selector
    else:
        with pytest.raises(ValidationError) as raised:
            api.DeploymentCreate.model_validate(spec)
        bad = {
            k
            for k, v in selector.items()
            if placement_rules.label_key_problem(k) or placement_rules.label_value_problem(v)
        }
        assert set(_errors(raised)) == {f"placement.node_selector.{k}" for k in bad}


def test_an_update_replaces_placement_whole_or_clears_it_with_null() -> None:
    update = api.DeploymentUpdate.model_validate({"placement": {"spread_by": "zone"}})
    assert update.placement == api.PlacementSpec(spread_by="zone")
    cleared = api.DeploymentUpdate.model_validate({"placement": None})
    assert cleared.model_dump(exclude_unset=True) == {"placement": None}
