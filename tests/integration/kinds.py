"""The reconciler's core cases run on every kind of engine (tests.harness.engines.ENGINE_KINDS).

`over_engine_kinds` parametrises a test over (database, engine kind): both databases on the
default Docker engines, as every integration test runs, and PostgreSQL alone on each other
kind. What differs between engines lives in the runtime adapter, below the database, so the
other kinds need no second database; this keeps their added time to one run per case.
"""

from __future__ import annotations

import pytest

from tests.harness.engines import DEFAULT_ENGINE_KIND, ENGINE_KINDS

KIND_PARAMS = [
    pytest.param("postgresql", DEFAULT_ENGINE_KIND, id=f"pg-{DEFAULT_ENGINE_KIND}"),
    pytest.param("sqlite", DEFAULT_ENGINE_KIND, id=f"sqlite-{DEFAULT_ENGINE_KIND}"),
    *(
        pytest.param("postgresql", kind, id=f"pg-{kind}")
        for kind in ENGINE_KINDS
        if kind != DEFAULT_ENGINE_KIND
    ),
]

over_engine_kinds = pytest.mark.parametrize(
    ("db_url", "engine_kind"), KIND_PARAMS, indirect=["db_url"]
)
