"""The rules of `fogctl rollout status` and the shapes of fogctl's output, on plain values.

`judge` is table-driven; `wait` runs against an in-memory sequence of snapshots (the real
database is in tests/integration/test_fogctl_rollout.py).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rich.console import Console

from controller.fogctl import render, views
from controller.fogctl.rollout import RolloutFailed, Verdict, judge, wait
from schema.enums import DeploymentStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def deployment(**changes: Any) -> views.DeploymentRow:
    base: dict[str, Any] = {
        "id": uuid.UUID(int=1),
        "name": "web",
        "container_image": "nginx:1.27",
        "status": DeploymentStatus.SCHEDULED,
        "target_replicas": 3,
        "running_replicas": 1,
        "created_at": T0,
        "updated_at": T0,
        "user": "alice",
        "live_replicas": 3,
        "stopping_replicas": 0,
        "resources": None,
        "reason": "1/3 replicas running",
        "status_changed_at": T0,
        "deleted_at": None,
        "generation": 1,
        "observed_generation": 1,
    }
    return views.DeploymentRow.model_validate({**base, **changes})


RUNNING = {"status": DeploymentStatus.RUNNING, "running_replicas": 3}


@pytest.mark.parametrize(
    ("changes", "verdict"),
    [
        pytest.param(RUNNING, Verdict.DONE, id="running-all-up"),
        pytest.param({**RUNNING, "running_replicas": 2}, Verdict.WAITING, id="running-one-down"),
        pytest.param({**RUNNING, "target_replicas": 5}, Verdict.WAITING, id="scaled-up-since"),
        pytest.param(
            {**RUNNING, "live_replicas": 4}, Verdict.WAITING, id="extra-replica-still-live"
        ),
        pytest.param({**RUNNING, "stopping_replicas": 1}, Verdict.WAITING, id="one-still-stopping"),
        pytest.param({}, Verdict.WAITING, id="scheduled"),
        pytest.param({"status": DeploymentStatus.PENDING}, Verdict.WAITING, id="pending"),
        pytest.param({"status": DeploymentStatus.FAILED}, Verdict.FAILED, id="failed"),
        pytest.param(
            {"status": DeploymentStatus.FAILED, "status_changed_at": None},
            Verdict.FAILED,
            id="failed-by-hand-without-history",
        ),
        pytest.param(
            {"status": DeploymentStatus.FAILED, "generation": 2},
            Verdict.WAITING,
            id="failed-before-the-operators-change",
        ),
        pytest.param(
            {
                "status": DeploymentStatus.STOPPED,
                "target_replicas": 0,
                "running_replicas": 0,
                "live_replicas": 0,
            },
            Verdict.DONE,
            id="scaled-to-zero",
        ),
        pytest.param(
            {"status": DeploymentStatus.STOPPED, "target_replicas": 0, "live_replicas": 1},
            Verdict.WAITING,
            id="stopped-but-a-replica-left",
        ),
        pytest.param({"deleted_at": T0}, Verdict.FAILED, id="deleting"),
        pytest.param({"status": DeploymentStatus.DELETED}, Verdict.FAILED, id="deleted"),
    ],
)
def test_judge(changes: dict[str, Any], verdict: Verdict) -> None:
    assert judge(deployment(**changes)).verdict is verdict


def test_failure_message_is_the_newest_reason() -> None:
    d = deployment(status=DeploymentStatus.FAILED, reason="no progress: 0/3; image not found")
    assert judge(d).message == "deployment 'web' failed: no progress: 0/3; image not found"


def _loader(snapshots: list[views.DeploymentRow | None]) -> Any:
    items: Iterator[views.DeploymentRow | None] = iter(snapshots)
    last: list[views.DeploymentRow | None] = [None]

    async def load() -> views.DeploymentRow | None:
        last[0] = next(items, last[0])
        return last[0]

    return load


async def test_wait_prints_one_plain_line_per_change_off_a_terminal() -> None:
    said: list[str] = []
    snapshots = [deployment(), deployment(), deployment(running_replicas=2), deployment(**RUNNING)]
    words = await wait(
        _loader(list(snapshots)),
        name="web",
        timeout_seconds=10,
        interval_seconds=0,
        out=Console(file=io.StringIO()),
        echo=said.append,
    )
    assert words == "deployment 'web' successfully rolled out: 3/3 replicas running"
    reason = ", status scheduled: 1/3 replicas running"
    assert said == [
        f"waiting for deployment 'web': 1/3 replicas running{reason}",
        f"waiting for deployment 'web': 2/3 replicas running{reason}",
    ]


async def test_wait_draws_a_progress_bar_on_a_terminal() -> None:
    screen = io.StringIO()
    said: list[str] = []
    await wait(
        _loader([deployment(), deployment(**RUNNING)]),
        name="web",
        timeout_seconds=0,
        interval_seconds=0,
        out=Console(file=screen, force_terminal=True, width=100),
        echo=said.append,
    )
    assert said == []  # the bar replaces the plain lines
    assert "web" in screen.getvalue()


async def test_wait_times_out() -> None:
    with pytest.raises(RolloutFailed) as caught:
        await wait(
            _loader([deployment()]),
            name="web",
            timeout_seconds=0.05,
            interval_seconds=0.01,
            out=Console(file=io.StringIO()),
            echo=lambda _: None,
        )
    assert caught.value.exit_code == 1
    assert caught.value.message.startswith("timed out after 0.05s: deployment 'web': 1/3")


# --- render ------------------------------------------------------------------------------------


def test_tables_off_a_terminal_have_no_colour_wrap_or_trailing_blanks() -> None:
    screen = io.StringIO()
    out = render.console(screen)
    t = render.table(["NAME", "STATUS", "REASON"])
    t.add_row("web", render.status_text("failed"), "x" * 300)
    t.add_row("a-much-longer-name", render.status_text("running"), "-")
    render.show(t, out=out)
    lines = screen.getvalue().splitlines()
    assert lines[0] == "NAME                 STATUS    REASON"
    assert lines[1] == "web                  failed    " + "x" * 300
    assert lines[2] == "a-much-longer-name   running   -"


def test_colour_on_a_terminal_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    def drawn() -> str:
        screen = io.StringIO()
        out = Console(file=screen, force_terminal=True, width=80)
        render.show(render.status_text("failed"), out=out)
        return screen.getvalue()

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b[1;31mfailed" in drawn()
    monkeypatch.setenv("NO_COLOR", "1")
    assert "31m" not in drawn()


def test_json_and_yaml_keep_model_order() -> None:
    d = deployment()
    data = json.loads(render.dump([d], render.Output.JSON))
    assert list(data[0]) == list(views.DeploymentRow.model_fields)
    assert data[0]["created_at"] == "2026-01-01T00:00:00Z"
    assert render.dump([d], render.Output.YAML).startswith(
        "- id: 00000000-0000-0000-0000-000000000001\n  name: web\n"
    )


@pytest.mark.parametrize(
    ("seconds", "text"), [(5, "5s"), (119, "119s"), (600, "10m"), (7199, "119m"), (7200, "2h"),
                          (3 * 86400, "3d"), (-3, "0s")],
)  # fmt: skip
def test_age(seconds: int, text: str) -> None:
    assert render.age(T0, T0 + timedelta(seconds=seconds)) == text


@pytest.mark.parametrize("age", [timedelta(seconds=1), timedelta(hours=1)])
def test_a_running_status_older_than_an_edit_is_not_trusted_however_old(age: timedelta) -> None:
    # The image changed after the controller said `running`: until it records the new
    # generation as observed, the old replicas still look complete. No clock decides it.
    d = deployment(**RUNNING, updated_at=T0 - age, generation=2)
    j = judge(d)
    assert j.verdict is Verdict.WAITING
    assert "waiting for the controller to act on the change" in j.message


def test_a_running_status_of_the_observed_generation_is_trusted_at_once() -> None:
    d = deployment(**RUNNING, updated_at=T0 + timedelta(seconds=5))
    assert judge(d).verdict is Verdict.DONE
