"""fogctl's messages: database refusals named like validation errors, passwords never shown,
durations read the way operators write them. Plain values only; the real databases' refusals
are exercised in tests/integration/test_fogctl_cluster.py.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from controller.fogctl.errors import (
    CONSTRAINTS,
    InputError,
    constraint_message,
    constraint_name,
    first_line,
    scrub,
    validation_messages,
)
from controller.fogctl.options import parse_duration
from schema import models
from schema.api import NodeCreate


class _AsyncpgLike(Exception):
    """What asyncpg raises: the constraint name is an attribute."""

    def __init__(self, message: str, constraint: str) -> None:
        super().__init__(message)
        self.constraint_name = constraint


def _integrity(orig: Exception) -> IntegrityError:
    return IntegrityError("INSERT ...", {}, orig)


@pytest.mark.parametrize(
    ("orig", "name"),
    [
        pytest.param(
            _AsyncpgLike("new row violates check constraint", "ck_nodes_cpu_cores_positive"),
            "ck_nodes_cpu_cores_positive",
            id="asyncpg-attribute",
        ),
        pytest.param(
            Exception(
                'new row for relation "deployment_resources" violates check constraint '
                '"ck_deployment_resources_memory_mb_range"'
            ),
            "ck_deployment_resources_memory_mb_range",
            id="postgresql-text",
        ),
        pytest.param(
            Exception("CHECK constraint failed: ck_deployment_resources_cpu_cores_range"),
            "ck_deployment_resources_cpu_cores_range",
            id="sqlite-check",
        ),
        pytest.param(
            Exception("UNIQUE constraint failed: deployments.user_id, deployments.name"),
            "idx_deployments_user_name_unique",
            id="sqlite-unique-index",
        ),
        pytest.param(
            Exception("UNIQUE constraint failed: users.username"),
            "uq_users_username",
            id="sqlite-unique",
        ),
        pytest.param(Exception("FOREIGN KEY constraint failed"), None, id="sqlite-fk"),
    ],
)
def test_constraint_names_are_found_on_both_backends(orig: Exception, name: str | None) -> None:
    assert constraint_name(_integrity(orig)) == name


def test_a_check_violation_reads_like_a_validation_error() -> None:
    exc = _integrity(Exception("CHECK constraint failed: ck_deployment_resources_cpu_cores_range"))
    assert constraint_message(exc, {"resources.cpu_cores": 64.0}) == (
        "resources.cpu_cores: must be 0.5 to 32 cores, got 64.0 "
        "(database constraint ck_deployment_resources_cpu_cores_range)"
    )


@pytest.mark.parametrize(
    ("orig", "values", "message"),
    [
        pytest.param(
            _AsyncpgLike("violates check constraint", "ck_deployment_specs_max_per_node_positive"),
            {"placement.max_per_node": 0},
            "placement.max_per_node: must be at least 1 (or left out: no cap), got 0 "
            "(database constraint ck_deployment_specs_max_per_node_positive)",
            id="max-per-node-postgresql",
        ),
        pytest.param(
            Exception("CHECK constraint failed: ck_deployment_specs_max_per_node_positive"),
            {},
            "placement.max_per_node: must be at least 1 (or left out: no cap) "
            "(database constraint ck_deployment_specs_max_per_node_positive)",
            id="max-per-node-sqlite",
        ),
        pytest.param(
            Exception("CHECK constraint failed: ck_deployment_specs_spread_by_syntax"),
            {"placement.spread_by": "Zone!"},
            "placement.spread_by: must be a label key: [DNS-subdomain prefix/]name, the name 1 "
            "to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, "
            "got 'Zone!' (database constraint ck_deployment_specs_spread_by_syntax)",
            id="spread-by",
        ),
        pytest.param(
            Exception("CHECK constraint failed: ck_deployment_node_selectors_value_syntax"),
            {},
            "placement.node_selector: values must be a label value: empty, or 1 to 63 letters, "
            "digits, '-', '_' or '.', starting and ending with a letter or digit "
            "(database constraint ck_deployment_node_selectors_value_syntax)",
            id="selector-value",
        ),
        pytest.param(
            Exception(
                "UNIQUE constraint failed: deployment_node_selectors.deployment_id, "
                "deployment_node_selectors.key"
            ),
            {},
            "placement.node_selector: keys must be unique in one deployment "
            "(database constraint pk_deployment_node_selectors)",
            id="selector-key-twice-sqlite",
        ),
    ],
)
def test_placement_refusals_name_the_apply_files_fields(
    orig: Exception, values: dict[str, object], message: str
) -> None:
    assert constraint_message(_integrity(orig), values) == message


def test_every_check_in_the_models_has_words() -> None:
    """A CHECK added to schema/models.py without a message here would print a raw name."""
    named = {
        str(c.name)
        for table in models.Base.metadata.tables.values()
        for c in table.constraints
        if type(c).__name__ == "CheckConstraint"
        and not str(c.name).endswith("_status")  # enum CHECKs, listed under their own name
    }
    assert named - set(CONSTRAINTS) == set()


def test_unknown_refusals_still_make_one_readable_line() -> None:
    exc = _integrity(Exception("FOREIGN KEY constraint failed\nDETAIL: more"))
    assert constraint_message(exc) == (
        "the database refused the change: FOREIGN KEY constraint failed"
    )
    null = _integrity(Exception("NOT NULL constraint failed: deployments.container_image"))
    assert constraint_message(null) == (
        "container_image: a value is required (the database refused NULL)"
    )


def test_passwords_are_scrubbed_from_driver_messages() -> None:
    url = "postgresql+asyncpg://fog:s3cr%40t@db/fog"
    assert scrub("auth failed for fog:s3cr@t", url) == "auth failed for fog:***"
    assert scrub("no password here", "sqlite+aiosqlite:///x.db") == "no password here"
    assert first_line("\n  <class 'asyncpg.exceptions.X'>: boom\nmore") == "boom"


def test_cli_flags_replace_field_names() -> None:
    with pytest.raises(ValidationError) as caught:
        NodeCreate(name="n1", docker_url="tcp://h", cpu_cores=0, memory_mb="lots")  # type: ignore[arg-type]
    lines = validation_messages(
        caught.value, NodeCreate, options={"cpu_cores": "--cpu", "memory_mb": "--memory-mb"}
    )
    assert lines == [
        "--cpu: cpu_cores must be greater than 0, got 0.0",
        "--memory-mb: input should be a valid integer, unable to parse string as an integer "
        "(allowed: an integer from 1 to 2147483647), got 'lots'",
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("500ms", 0.5), ("0", 0.0),
     ("1.5s", 1.5), (" 2M ", 120.0)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration("--timeout", text) == seconds


@pytest.mark.parametrize("text", ["soon", "5 m", "m", "-1", "1d", "nan", "inf", "5m5"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_duration("--timeout", text)
    assert caught.value.message.startswith("--timeout: must be ")
    assert repr(text) in caught.value.message
