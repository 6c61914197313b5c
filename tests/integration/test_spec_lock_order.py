"""Migration 0009 on PostgreSQL: an operator's spec write beside the controller's status write
queues instead of deadlocking.

The controller's status write updates `deployments`, then `deployment_controller_state`; a
spec-table write's generation trigger bumps the state row and touches `deployments`. Here
the two are interleaved by hand at the worst moment: the status write holds the deployment
row when the spec INSERT starts, and asks for the state row while the INSERT waits. Without
the spec tables' BEFORE trigger (the deployment row locked first) PostgreSQL reports a
deadlock and aborts one of them.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.harness.fleet import Operator


async def test_a_spec_write_beside_a_status_write_queues(pg_engine: AsyncEngine) -> None:
    op = Operator(pg_engine)
    user = await op.add_user()
    d = await op.add_deployment(user, "web", replicas=1)
    generation = text("SELECT generation FROM deployment_controller_state WHERE deployment_id = :d")
    async with pg_engine.connect() as conn:
        before = await conn.scalar(generation, {"d": d})
    async with pg_engine.connect() as controller, pg_engine.connect() as operator:
        await controller.begin()
        await controller.execute(
            text("UPDATE deployments SET status = 'scheduled' WHERE id = :d"), {"d": d}
        )
        await operator.begin()
        spec_write = asyncio.create_task(
            operator.execute(
                text("INSERT INTO deployment_specs (deployment_id, max_per_node) VALUES (:d, 1)"),
                {"d": d},
            )
        )
        await asyncio.sleep(0.5)
        assert not spec_write.done()  # it waits for the deployment row
        await controller.execute(
            text(
                "UPDATE deployment_controller_state SET observed_generation = generation "
                "WHERE deployment_id = :d"
            ),
            {"d": d},
        )
        await asyncio.sleep(1.5)  # past PostgreSQL's deadlock_timeout (1 s)
        await controller.commit()
        await spec_write
        await operator.commit()
    async with pg_engine.connect() as conn:
        got = await conn.scalar(
            text("SELECT max_per_node FROM deployment_specs WHERE deployment_id = :d"), {"d": d}
        )
        after = await conn.scalar(generation, {"d": d})
    assert got == 1
    assert after == before + 1  # the spec write counted once, after the status write
