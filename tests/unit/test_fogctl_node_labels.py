"""Node labels as an operator types them (`controller.fogctl.node_labels`): plain values only;
the database side is tests/integration/test_fogctl_labels.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.fogctl import node_labels
from controller.fogctl.errors import InputError
from controller.fogctl.node_labels import LabelEdit


def refusal(args: list[str]) -> str:
    with pytest.raises(InputError) as caught:
        node_labels.parse_edit(args)
    return caught.value.message


def test_an_edit_reads_sets_and_removals_as_kubectl_label() -> None:
    assert node_labels.parse_edit(["zone=a", "example.com/gpu-", "empty="]) == LabelEdit(
        {"zone": "a", "empty": ""}, frozenset({"example.com/gpu"})
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "label: give at least one KEY=VALUE (set) or KEY- (remove)", id="none"),
        pytest.param(
            ["fog.io/zone=a"],
            "label fog.io/zone=a: fog.io/ labels are set by the controller from the engine",
            id="reserved",
        ),
        pytest.param(["-"], "label -: key '': name must not be empty", id="remove-without-a-key"),
        pytest.param(
            ["zone=a=b"],
            "label zone=a=b: value 'a=b' must consist of letters, digits, '-', '_' or '.', "
            "and start and end with a letter or digit",
            id="equals-in-value",
        ),
        pytest.param(
            ["zone-", "zone-"], "label zone-: key 'zone' is given more than once", id="twice"
        ),
    ],
)
def test_a_bad_edit_names_the_argument_and_the_rule(args: list[str], message: str) -> None:
    assert refusal(args) == message


def test_node_add_pairs_keep_the_old_message_for_a_missing_equals() -> None:
    with pytest.raises(InputError) as caught:
        node_labels.parse_pairs(["zone"])
    assert caught.value.message == "--label: must be KEY=VALUE, got 'zone'"
    assert node_labels.parse_pairs(["zone=a", "tier="]) == {"zone": "a", "tier": ""}


def test_merge_says_what_changed() -> None:
    current = {"zone": "a", "gpu": "yes", "fog.io/arch": "arm64"}
    edit = LabelEdit({"zone": "b", "site": "north"}, frozenset({"gpu", "camera"}))
    labels, changes = node_labels.merge(current, edit)
    assert labels == {"zone": "b", "site": "north", "fog.io/arch": "arm64"}
    assert changes == ["site=north added", "zone=b (was a)", "gpu removed (was yes)"]
    assert node_labels.not_set(current, edit) == ["camera was not set"]


KEYS = st.sampled_from(["zone", "tier", "gpu", "example.com/site", "fog.io/arch", "fog.io/os"])
VALUES = st.sampled_from(["", "a", "b", "edge"])
OPERATOR_KEYS = KEYS.filter(lambda k: not k.startswith("fog.io/"))


@given(
    current=st.dictionaries(KEYS, VALUES),
    to_set=st.dictionaries(OPERATOR_KEYS, VALUES),
    to_remove=st.frozensets(OPERATOR_KEYS),
)
def test_merge_touches_only_the_named_keys(
    current: dict[str, str], to_set: dict[str, str], to_remove: frozenset[str]
) -> None:
    to_remove = to_remove - set(to_set)
    labels, changes = node_labels.merge(current, LabelEdit(to_set, to_remove))
    assert {k: v for k, v in labels.items() if k.startswith("fog.io/")} == {
        k: v for k, v in current.items() if k.startswith("fog.io/")
    }
    assert all(labels[k] == v for k, v in to_set.items())
    assert not to_remove & set(labels)
    untouched = set(current) - set(to_set) - to_remove
    assert all(labels[k] == current[k] for k in untouched)
    # "unchanged" is said exactly when nothing changed.
    assert (changes == []) == (labels == current)


def test_the_labels_column_text() -> None:
    assert node_labels.text({"zone": "a", "fog.io/arch": "arm64"}) == "fog.io/arch=arm64,zone=a"
    assert node_labels.text({}) == "-"


@pytest.mark.parametrize(
    ("raw", "labels"),
    [
        pytest.param(None, {}, id="null"),
        pytest.param('{"zone": "a"}', {"zone": "a"}, id="object"),
        pytest.param("[1]", None, id="array"),
        pytest.param('"zone=a"', None, id="string"),
        pytest.param("zone=a", None, id="no-json"),
    ],
)
def test_the_stored_column_is_an_object_or_says_it_is_not(
    raw: str | None, labels: dict[str, str] | None
) -> None:
    assert node_labels.stored(raw) == labels


def test_a_long_stored_value_is_cut_for_messages() -> None:
    assert node_labels.shown("x" * 100) == "x" * 77 + "..."
