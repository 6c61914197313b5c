"""Migration 0008 (placement) on real PostgreSQL and SQLite: the database's label-syntax CHECKs
refuse exactly what controller/placement_rules.py refuses, and the migration fits a database
made at 0007 and leaves it as it was when taken back.

The two backends say the syntax in different languages (a regular expression; GLOB patterns
over `instr`/`substr` parts), so the agreement is checked by hypothesis against the Python
rules, with the edge cases (lengths 63/64 and 253/254, a second '/', dots and dashes side by
side, non-ASCII, a NUL) always among the examples.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from controller.fogctl.errors import constraint_name
from controller.placement_rules import PlacementRules, label_key_problem, label_value_problem
from controller.store import Store
from schema import engine as engine_mod
from schema import migrate
from tests.harness.fleet import Operator

BEFORE = "0007_deployment_spec"
REVISION = "0008_placement"
KEY_CHECK = "ck_deployment_node_selectors_key_syntax"
VALUE_CHECK = "ck_deployment_node_selectors_value_syntax"
SPREAD_CHECK = "ck_deployment_specs_spread_by_syntax"

_NAMEISH = "aZ09-_."
_DNSISH = "az09-."
# Mostly near-valid text (so both answers occur often), with a few characters no rule allows.
_ODD = st.sampled_from([" ", "é", "A", "/", "\n", "*", "[", "%", "ﬀ"])
_NAMES = st.text(st.sampled_from(_NAMEISH) | _ODD, min_size=0, max_size=66)
_PREFIXES = st.lists(st.text(st.sampled_from(_DNSISH) | _ODD, max_size=12), max_size=4).map(
    ".".join
)
_VALID_NAMES = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", fullmatch=True)
_VALID_PREFIXES = st.lists(
    st.from_regex(r"[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True), min_size=1, max_size=4
).map(".".join)
_VALID_KEYS = _VALID_NAMES | st.builds(lambda p, n: f"{p}/{n}", _VALID_PREFIXES, _VALID_NAMES)


def _mutated(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A valid text with one character put in at some place: mostly one step from valid."""
    return st.builds(
        lambda t, at, c: t[: at % (len(t) + 1)] + c + t[at % (len(t) + 1) :],
        valid,
        st.integers(0, 400),
        st.sampled_from(["-", ".", "_", "/", "A", "a", " ", "é", ".-", "x" * 60]),
    )


# Around the length limits (names of 63, prefixes of 253 characters).
_LONG_NAMES = st.builds(lambda n, c: c * n, st.integers(60, 66), st.sampled_from("xZ9"))
_LONG_PREFIXES = st.builds(lambda n: "p" * n, st.integers(250, 256))
_KEYS = st.one_of(
    _LONG_NAMES,
    st.builds(lambda p, n: f"{p}/{n}", _LONG_PREFIXES, _VALID_NAMES | _LONG_NAMES),
    _VALID_KEYS,
    _mutated(_VALID_KEYS),
    _NAMES,
    st.builds(lambda p, n: f"{p}/{n}", _PREFIXES, _NAMES),
    st.builds(lambda p, n: f"{p}/{n}", st.text(st.sampled_from("ab.-"), max_size=260), _NAMES),
)
EDGE_KEYS = [
    "zone",
    "fog.io/arch",
    "topology.kubernetes.io/zone",
    "a",
    "x" * 63,
    "x" * 64,
    f"{'p' * 253}/n",
    f"{'p' * 254}/n",
    f"{'p' * 253}/{'n' * 63}",
    "a/b/c",
    "/a",
    "a/",
    "Fog.io/a",
    "a..b/c",
    "a.-b/c",
    "a-.b/c",
    ".a/b",
    "a./b",
    "-a",
    "a-",
    "a_b.c-D",
    "é",
    "zoné",
    "a b",
    "",
    "a\x00b",
]
EDGE_VALUES = ["", "a", "x" * 63, "x" * 64, "-a", "a.", "A_b-9", "a b", "a/b", "é", "a\x00!"]


def _agreement_settings(f: Any) -> Any:
    # One database per backend is shared by the examples: each runs in its own rolled-back
    # transaction, so no example sees another's rows.
    return settings(
        max_examples=250,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )(f)


async def _owner(engine: AsyncEngine) -> uuid.UUID:
    op = Operator(engine)
    user = await op.add_user(f"u-{uuid.uuid4().hex[:6]}")
    return await op.add_deployment(user, f"web-{uuid.uuid4().hex[:6]}")


async def _accepted(engine: AsyncEngine, statement: str, **params: Any) -> str | None:
    """None when the database takes the row; otherwise what refused it."""
    async with engine.connect() as conn:
        try:
            await conn.execute(text(statement), params)
        except IntegrityError as exc:
            return constraint_name(exc) or str(exc.orig)
        except DBAPIError as exc:  # longer than the column (PostgreSQL), NUL in text
            return type(exc.orig).__name__
        finally:
            await conn.rollback()
    return None


def _unstorable(text_value: str, dialect: str) -> bool:
    # PostgreSQL text cannot hold a NUL at all: the driver refuses it before any CHECK.
    return dialect == "postgresql" and "\x00" in text_value


@pytest.fixture
async def deployment(engine: AsyncEngine) -> uuid.UUID:
    return await _owner(engine)


@pytest.mark.parametrize("key", EDGE_KEYS)
async def test_edge_keys_agree_with_the_python_rule(
    engine: AsyncEngine, deployment: uuid.UUID, key: str
) -> None:
    await _check_key(engine, deployment, key)


@_agreement_settings
@given(key=_KEYS)
@example(key="p" * 254 + "/n")
async def test_the_key_check_agrees_with_label_key_problem(
    engine: AsyncEngine, deployment: uuid.UUID, key: str
) -> None:
    await _check_key(engine, deployment, key)


async def _check_key(engine: AsyncEngine, d: uuid.UUID, key: str) -> None:
    if _unstorable(key, engine.dialect.name):
        return
    valid = label_key_problem(key) is None
    for statement, check in (
        (
            "INSERT INTO deployment_node_selectors (deployment_id, key, value) "
            "VALUES (:d, :k, 'v')",
            KEY_CHECK,
        ),
        ("INSERT INTO deployment_specs (deployment_id, spread_by) VALUES (:d, :k)", SPREAD_CHECK),
    ):
        refused = await _accepted(engine, statement, d=str(d), k=key)
        assert (refused is None) == valid, (key, refused, label_key_problem(key))
        if not valid and len(key) <= 317:  # within the column: the named CHECK said no
            assert refused == check, key


@pytest.mark.parametrize("value", EDGE_VALUES)
async def test_edge_values_agree_with_the_python_rule(
    engine: AsyncEngine, deployment: uuid.UUID, value: str
) -> None:
    await _check_value(engine, deployment, value)


@_agreement_settings
@given(value=st.one_of(_LONG_NAMES, _VALID_NAMES, _mutated(_VALID_NAMES), _NAMES))
async def test_the_value_check_agrees_with_label_value_problem(
    engine: AsyncEngine, deployment: uuid.UUID, value: str
) -> None:
    await _check_value(engine, deployment, value)


async def _check_value(engine: AsyncEngine, d: uuid.UUID, value: str) -> None:
    if _unstorable(value, engine.dialect.name):
        return
    valid = label_value_problem(value) is None
    refused = await _accepted(
        engine,
        "INSERT INTO deployment_node_selectors (deployment_id, key, value) VALUES (:d, 'k', :v)",
        d=str(d),
        v=value,
    )
    assert (refused is None) == valid, (value, refused, label_value_problem(value))
    if not valid and len(value) <= 63:
        assert refused == VALUE_CHECK, value


# --- the migration on a database made at 0007 ---------------------------------------------


async def _sql(url: str, *statements: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run statements in one transaction; the rows of the last one."""
    engine = engine_mod.create_engine(url, poolclass=NullPool)
    try:
        async with engine_mod.writer(engine).begin() as conn:
            rows: list[tuple[Any, ...]] = []
            for statement in statements:
                result = await conn.execute(
                    text(statement), {k: v for k, v in params.items() if f":{k}" in statement}
                )
                rows = [tuple(r) for r in result.all()] if result.returns_rows else []
            return rows
    finally:
        await engine.dispose()


async def _schema(url: str) -> set[tuple[str, ...]]:
    """Tables, triggers and functions with their definitions: what a downgrade must restore."""
    if engine_mod.is_sqlite(url):
        rows = await _sql(url, "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL")
    else:
        rows = await _sql(
            url,
            "SELECT 'column', table_name || '.' || column_name, data_type "
            "FROM information_schema.columns WHERE table_schema = 'public' UNION ALL "
            "SELECT 'trigger', tgname, tgrelid::regclass::text "
            "FROM pg_trigger WHERE NOT tgisinternal UNION ALL "
            "SELECT 'function', p.proname, p.prosrc FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' UNION ALL "
            "SELECT 'constraint', conname, pg_get_constraintdef(oid) FROM pg_constraint",
        )
    # Whitespace aside: 0008's downgrade writes 0007's trigger bodies with its own indentation.
    return {tuple(" ".join(str(c).split()) for c in r) for r in rows}


async def _generation(url: str, d: str) -> int:
    rows = await _sql(
        url, "SELECT generation FROM deployment_controller_state WHERE deployment_id = :d", d=d
    )
    return int(rows[0][0])


async def test_upgrade_from_0007_keeps_specs_and_downgrade_restores_0007_exactly(
    empty_db_url: str,
) -> None:
    url = empty_db_url
    await migrate.upgrade_async(url, BEFORE)
    user, d = str(uuid.uuid4()), str(uuid.uuid4())
    await _sql(
        url,
        "INSERT INTO users (id, username) VALUES (:u, 'old')",
        "INSERT INTO deployments (id, name, user_id, container_image, target_replicas) "
        "VALUES (:d, 'web', :u, 'nginx:1.27', 2)",
        "INSERT INTO deployment_specs (deployment_id, network) VALUES (:d, 'bridge')",
        u=user,
        d=d,
    )
    generation = await _generation(url, d)
    before = await _schema(url)
    updated = await _sql(url, "SELECT updated_at FROM deployments")

    await migrate.upgrade_async(url, REVISION)

    assert await migrate.drift_async(url) == []
    assert await _generation(url, d) == generation  # adding columns is no operator's change
    assert await _sql(url, "SELECT updated_at FROM deployments") == updated
    # The old spec row: no placement, rebalance on (the default).
    assert await _sql(url, "SELECT spread_by, max_per_node, rebalance FROM deployment_specs") in (
        [(None, None, True)],
        [(None, None, 1)],
    )
    store = Store(engine_mod.create_engine(url, poolclass=NullPool))
    try:
        await _sql(
            url,
            "UPDATE deployment_specs SET spread_by = 'zone', max_per_node = 1",
            "INSERT INTO deployment_node_selectors (deployment_id, key, value) "
            "VALUES (:d, 'fog.io/arch', 'arm64')",
            d=d,
        )
        assert await _generation(url, d) == generation + 2
        (loaded,) = await store.load_deployments([uuid.UUID(d)])
        assert loaded.placement == PlacementRules.of(
            {"fog.io/arch": "arm64"}, spread_by="zone", max_per_node=1
        )
        # 0007's columns still count once per change, beside the new ones.
        await _sql(url, "UPDATE deployment_specs SET network = 'host', max_per_node = 2")
        assert await _generation(url, d) == generation + 3
    finally:
        await store.close()

    await migrate.downgrade_async(url, BEFORE)

    assert await _schema(url) == before
    assert await _sql(url, "SELECT network FROM deployment_specs") == [("host",)]
    # 0007's counting as it was.
    await _sql(url, "UPDATE deployment_specs SET network = 'none'")
    assert await _generation(url, d) == generation + 4
    await migrate.upgrade_async(url)
    assert await migrate.drift_async(url) == []
