"""The console scripts as a user runs them: `fog-controller migrate` and `fogctl db ...`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from controller.fogctl import app
from schema import migrate


def test_fog_controller_migrate_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/state/fog.db"
    env = {**os.environ, "FOG_DATABASE_URL": url, "FOG_LOG_FORMAT": "json"}
    done = subprocess.run(
        [sys.executable, "-m", "controller", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"event": "schema_migrated"' in done.stderr
    assert (tmp_path / "state" / "fog.db").exists()
    result = CliRunner().invoke(app, ["db", "current", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert f"current: {migrate.heads()[0]}" in result.output


def test_fogctl_db_round_trip(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/fog.db"
    runner = CliRunner()
    assert "current: base" in runner.invoke(app, ["db", "current", "--database-url", url]).output
    up = runner.invoke(app, ["db", "upgrade", "--database-url", url])
    assert up.exit_code == 0, up.output
    assert f"at {migrate.heads()[0]}" in up.output
    down = runner.invoke(app, ["db", "downgrade", "base", "--database-url", url])
    assert down.exit_code == 0, down.output
    assert "at base" in down.output


def test_fogctl_unreachable_database_is_one_line_and_exit_1() -> None:
    url = "postgresql+asyncpg://postgres:hunter2@127.0.0.1:1/nothing"
    result = CliRunner().invoke(app, ["db", "current", "--database-url", url])
    assert result.exit_code == 1
    assert "hunter2" not in result.output
    assert result.output.count("\n") == 1
