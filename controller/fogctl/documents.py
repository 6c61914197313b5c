"""Turn the files given to `fogctl apply -f` into validated `DeploymentCreate` values.

PURE apart from reading the files: nothing here touches the database, so "bad input never
reaches the database" holds by construction: `apply` writes only after every document of every
file has parsed and validated. YAML (one document or a `---` stream) and JSON (an object or a
list) are both accepted; a document that is a list holds several deployments.

PyYAML quietly keeps the last of two equal keys; an operator who writes `target_replicas`
twice meant one of them, so duplicates are an error here. Every message names the source
(`web.yaml, document 2`) as well as the field.

A document with an `id` is the output of `fogctl get|describe -o json|yaml`: its read-only
keys (views.READ_ONLY_FIELDS: id, status, counts, timestamps, replicas) are dropped before
validation, so that output applies as it is. Only there: in a hand-written file such a key
(`replicas: 3`, kubectl's habit) is a mistake and is reported as an unknown field.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from controller.fogctl.errors import InputError, validation_messages
from controller.fogctl.views import READ_ONLY_FIELDS
from schema.api import DeploymentCreate

STDIN = "-"
EXPORT_MARK = "id"  # every get/describe document has it; an apply document never does
DOCUMENT_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class Document:
    """One validated deployment and where it came from, for messages."""

    source: str
    spec: DeploymentCreate


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", mark if mark is not None else None
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_sources(paths: Sequence[str], stdin_text: str | None = None) -> list[tuple[str, str]]:
    """(label, text) for each file; a directory contributes its YAML and JSON files, sorted."""
    out: list[tuple[str, str]] = []
    for raw in paths:
        if raw == STDIN:
            text = stdin_text if stdin_text is not None else sys.stdin.read()
            out.append(("<stdin>", text))
            continue
        path = Path(raw)
        files = (
            sorted(p for p in path.iterdir() if p.suffix in DOCUMENT_SUFFIXES)
            if path.is_dir()
            else [path]
        )
        for file in files:
            try:
                out.append((str(file), file.read_text(encoding="utf-8")))
            except FileNotFoundError:
                raise InputError(f"-f: {file}: no such file") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"-f: {file}: cannot read: {exc}") from None
    return out


def parse(label: str, text: str) -> list[tuple[str, Any]]:
    """The raw documents of one source, each with its label (`file, document N`)."""
    stripped = text.lstrip()
    if label.endswith(".json") or stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if label.endswith(".json"):
                raise InputError(
                    f"{label}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
                ) from None
            # Not JSON after all: a YAML flow mapping such as `{name: web, ...}`.
        else:
            return _items(label, [data])
    try:
        loaded = list(yaml.load_all(text, Loader=_StrictLoader))  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InputError(f"{label}: invalid YAML{_where(exc)}: {_problem(exc)}") from None
    return _items(label, [d for d in loaded if d is not None])


def _items(label: str, documents: Iterable[Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    docs = list(documents)
    for index, doc in enumerate(docs, start=1):
        where = label if len(docs) == 1 else f"{label}, document {index}"
        if isinstance(doc, list):
            out.extend((f"{where}, item {i}", item) for i, item in enumerate(doc, start=1))
        else:
            out.append((where, doc))
    return out


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}"


def _problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if problem and context:
        return f"{problem} ({context})"
    return str(problem or context or exc).splitlines()[0]


def validate(raw: Sequence[tuple[str, Any]]) -> list[Document]:
    """Validate every document, collecting every error of every document before failing."""
    documents: list[Document] = []
    problems: list[str] = []
    for where, data in raw:
        if not isinstance(data, dict):
            problems.append(
                f"{where}: expected a mapping with name, container_image, target_replicas and "
                f"resources, got {type(data).__name__}"
            )
            continue
        fields = data
        if EXPORT_MARK in data:
            # fogctl's own get/describe output: its read-only keys are not the operator's.
            fields = {k: v for k, v in data.items() if k not in READ_ONLY_FIELDS}
        try:
            documents.append(Document(where, DeploymentCreate.model_validate(fields)))
        except ValidationError as exc:
            problems.extend(
                f"{where}: {line}" for line in validation_messages(exc, DeploymentCreate)
            )
    if problems:
        raise InputError("\n".join(problems))
    if not documents:
        raise InputError("-f: no deployments found in the input")
    first: dict[str, str] = {}
    for doc in documents:
        earlier = first.setdefault(doc.spec.name, doc.source)
        if earlier != doc.source:
            raise InputError(
                f"{doc.source}: name: deployment {doc.spec.name!r} is also defined in {earlier}"
            )
    return documents


def load(paths: Sequence[str], stdin_text: str | None = None) -> list[Document]:
    """Read, parse and validate everything `-f` names; raises InputError on the first bad file
    (parse errors) or with every validation problem at once."""
    raw: list[tuple[str, Any]] = []
    for label, text in read_sources(paths, stdin_text):
        raw.extend(parse(label, text))
    return validate(raw)
