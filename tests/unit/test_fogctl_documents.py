"""Reading `fogctl apply -f` input: YAML streams, JSON lists, and every way a file can be wrong.

Strings in, `Document`s or an `InputError` out: no files, no database.
"""

from __future__ import annotations

import json

import pytest

from controller.fogctl import documents
from controller.fogctl.errors import EXIT_USAGE, InputError

WEB = """\
name: web
container_image: nginx:1.27
target_replicas: 3
resources: {cpu_cores: 0.5, memory_mb: 512, gpu_units: 0, storage_gb: 1}
"""
API = {
    "name": "api",
    "container_image": "example/api:2",
    "resources": {"cpu_cores": 1, "memory_mb": 1024, "storage_gb": 2},
}


def load(text: str, label: str = "in.yaml") -> list[documents.Document]:
    return documents.validate(documents.parse(label, text))


def refusal(text: str, label: str = "in.yaml") -> str:
    with pytest.raises(InputError) as caught:
        load(text, label)
    assert caught.value.exit_code == EXIT_USAGE
    return caught.value.message


def test_one_yaml_document() -> None:
    (doc,) = load(WEB)
    assert doc.source == "in.yaml"
    assert (doc.spec.name, doc.spec.target_replicas, doc.spec.resources.cpu_cores) == (
        "web",
        3,
        0.5,
    )


def test_a_yaml_stream_and_empty_documents() -> None:
    docs = load("---\n" + WEB + "---\n---\n" + json.dumps(API) + "\n")
    assert [(d.source, d.spec.name) for d in docs] == [
        ("in.yaml, document 1", "web"),
        ("in.yaml, document 2", "api"),
    ]
    # Left out of the document: the DeploymentCreate defaults, and the field is not "set".
    assert docs[1].spec.target_replicas == 1
    assert "target_replicas" not in docs[1].spec.model_fields_set


@pytest.mark.parametrize(
    ("label", "text"),
    [
        pytest.param("in.json", json.dumps([API, {**API, "name": "api2"}]), id="json-list"),
        pytest.param("<stdin>", json.dumps([API, {**API, "name": "api2"}]), id="json-on-stdin"),
        pytest.param("in.yaml", f"- {json.dumps(API)}\n- {json.dumps({**API, 'name': 'api2'})}\n",
                     id="yaml-list"),
    ],
)  # fmt: skip
def test_lists_hold_several_deployments(label: str, text: str) -> None:
    assert [(d.source, d.spec.name) for d in load(text, label)] == [
        (f"{label}, item 1", "api"),
        (f"{label}, item 2", "api2"),
    ]


def test_a_yaml_flow_mapping_is_not_mistaken_for_json() -> None:
    (doc,) = load(
        "{name: web, container_image: x, resources: {cpu_cores: 1, memory_mb: 512, storage_gb: 1}}"
    )
    assert doc.spec.name == "web"


@pytest.mark.parametrize(
    ("text", "label", "message"),
    [
        pytest.param(
            "name: web\n  image: [x\n",
            "in.yaml",
            "in.yaml: invalid YAML at line 2, column 8: mapping values are not allowed here",
            id="bad-indent",
        ),
        pytest.param(
            "name: [web\n",
            "in.yaml",
            "in.yaml: invalid YAML at line 2, column 1: expected ',' or ']', but got "
            "'<stream end>' (while parsing a flow sequence)",
            id="unclosed",
        ),
        pytest.param(
            '{"name": "web",',
            "in.json",
            "in.json: invalid JSON at line 1, column 16: Expecting property name enclosed in "
            "double quotes",
            id="bad-json",
        ),
        pytest.param(
            WEB + "target_replicas: 4\n",
            "in.yaml",
            "in.yaml: invalid YAML at line 5, column 1: duplicate key 'target_replicas'",
            id="duplicate-key",
        ),
        pytest.param("", "in.yaml", "-f: no deployments found in the input", id="empty"),
        pytest.param(
            "just a string\n",
            "in.yaml",
            "in.yaml: expected a mapping with name, container_image, target_replicas and "
            "resources, got str",
            id="not-a-mapping",
        ),
    ],
)
def test_unreadable_input(text: str, label: str, message: str) -> None:
    assert refusal(text, label) == message


def test_every_problem_of_every_document_is_reported_at_once() -> None:
    bad = WEB.replace("cpu_cores: 0.5", "cpu_cores: 33").replace("gpu_units: 0", "gpu_units: yes")
    stream = bad + "---\n" + WEB.replace("target_replicas: 3", "replicas: 3")
    assert refusal(stream).splitlines() == [
        "in.yaml, document 1: resources.cpu_cores: cpu_cores must be between 0.5 and 32 cores, "
        "got 33.0",
        "in.yaml, document 1: resources.gpu_units: gpu_units must be a number, got True",
        "in.yaml, document 2: replicas: unknown field (allowed: name, container_image, "
        "target_replicas, resources, entrypoint, command, env, network, ports, volumes, "
        "labels, stop_grace_seconds, healthcheck, image_pull_secret, placement)",
    ]


def test_a_misspelt_resource_lists_the_resource_fields() -> None:
    text = WEB.replace("gpu_units: 0", "gpus: 1")
    assert refusal(text) == (
        "in.yaml: resources.gpus: unknown field (allowed: cpu_cores, memory_mb, gpu_units, "
        "storage_gb)"
    )


def test_missing_resources_say_what_is_expected() -> None:
    text = "name: web\ncontainer_image: nginx:1.27\n"
    assert refusal(text) == (
        "in.yaml: resources: required field is missing (allowed: a mapping with cpu_cores, "
        "memory_mb, gpu_units (optional) and storage_gb)"
    )


def test_a_name_twice_is_refused() -> None:
    assert refusal(WEB + "---\n" + WEB) == (
        "in.yaml, document 2: name: deployment 'web' is also defined in in.yaml, document 1"
    )


def test_standard_input() -> None:
    sources = documents.read_sources(["-"], stdin_text=WEB)
    assert sources == [("<stdin>", WEB)]
