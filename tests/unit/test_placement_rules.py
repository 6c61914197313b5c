"""Label syntax, engine labels and selector matching (controller.placement_rules): no I/O."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.model import EngineInfo, NodeRecord, NodeStatus, node_labels
from controller.placement_rules import (
    NO_RULES,
    PlacementRules,
    engine_labels,
    label_key_problem,
    label_value,
    label_value_problem,
    reserved,
    selector_text,
)

# Kubernetes' own expressions for a qualified name and a label value (apimachinery's
# validation), written out here as the oracle the hand-written checks must agree with.
_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_DNS1123 = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"


def _oracle_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not re.fullmatch(_DNS1123, prefix)):
        return False
    return 0 < len(name) <= 63 and re.fullmatch(_NAME, name) is not None


def _oracle_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and re.fullmatch(_NAME, value) is not None)


@pytest.mark.parametrize(
    "key",
    ["zone", "fog.io/arch", "example.com/camera", "a", "A_b.c-d", "x" * 63, "a.b-c/Z9"],
)
def test_good_keys_are_accepted(key: str) -> None:
    assert label_key_problem(key) is None


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("", "must not be empty"),
        ("-zone", "start and end with a letter or digit"),
        ("zone_", "start and end with a letter or digit"),
        ("x" * 64, "at most 63 characters"),
        ("/zone", "prefix before '/' must not be empty"),
        ("Example.com/zone", "DNS subdomain"),
        ("a..b/zone", "DNS subdomain"),
        ("a/b/c", "DNS subdomain"),
        ("zone a", "letters, digits"),
        ("fog.io/", "must not be empty"),
    ],
)
def test_bad_keys_say_why(key: str, words: str) -> None:
    problem = label_key_problem(key)
    assert problem is not None
    assert words in problem


@pytest.mark.parametrize(
    ("value", "ok"),
    [("", True), ("a", True), ("eu-west_1.b", True), ("-a", False), ("a b", False)],
)
def test_values(value: str, ok: bool) -> None:
    assert (label_value_problem(value) is None) is ok


_LABEL_CHARS = st.text(alphabet="aZ09-_./ é", max_size=70)


@given(_LABEL_CHARS)
def test_key_check_agrees_with_kubernetes_expressions(key: str) -> None:
    assert (label_key_problem(key) is None) is _oracle_key(key)


@given(_LABEL_CHARS)
def test_value_check_agrees_with_kubernetes_expressions(value: str) -> None:
    assert (label_value_problem(value) is None) is _oracle_value(value)


def test_engine_labels_use_kubernetes_names() -> None:
    assert engine_labels("x86_64", "linux", "docker") == {
        "fog.io/arch": "amd64",
        "fog.io/os": "linux",
        "fog.io/engine": "docker",
    }
    assert engine_labels("aarch64", "linux", "podman")["fog.io/arch"] == "arm64"
    assert engine_labels("armv7l", "", "")["fog.io/arch"] == "arm"
    # An architecture we do not know is kept as the engine says it, lower-cased.
    assert engine_labels("Loongarch64", "", "") == {"fog.io/arch": "loongarch64"}
    assert engine_labels("", "", "") == {}
    assert all(reserved(k) for k in engine_labels("x86_64", "linux", "docker"))
    assert not reserved("zone")
    assert not reserved("fog.iox/zone")


def test_engine_labels_win_over_the_operators_on_their_keys() -> None:
    record = NodeRecord(
        id=uuid.uuid4(),
        name="n1",
        docker_url="unix:///x",
        status=NodeStatus.READY,
        labels=(("zone", "a"), ("fog.io/arch", "arm64")),
    )
    info = EngineInfo(cpu_cores=2, memory_mb=1024, engine="docker", arch="x86_64", os="linux")
    labels = node_labels(record, info)
    assert ("zone", "a") in labels
    assert label_value(labels, "fog.io/arch") == "amd64"
    assert label_value(labels, "fog.io/engine") == "docker"
    # Before the first probe the row's labels are all there is.
    assert label_value(node_labels(record, None), "fog.io/arch") == "arm64"


def test_selector_matches_only_when_every_pair_is_there() -> None:
    rules = PlacementRules.of({"zone": "a", "fog.io/arch": "arm64"}, max_per_node=1)
    assert rules.selector == "fog.io/arch=arm64,zone=a"
    assert rules.matches(frozenset({("zone", "a"), ("fog.io/arch", "arm64"), ("x", "y")}))
    assert not rules.matches(frozenset({("zone", "a"), ("fog.io/arch", "amd64")}))
    assert not rules.matches(frozenset({("zone", "a")}))
    assert NO_RULES.matches(frozenset())
    assert NO_RULES.empty
    assert not rules.empty
    assert not PlacementRules.of(spread_by="zone").empty
    assert PlacementRules.of(spread_by="").spread_by is None
    assert selector_text([("b", "2"), ("a", "1")]) == "a=1,b=2"
