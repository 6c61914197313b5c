"""`fogctl rollout status` against a real database, with the controller's writes simulated.

The test writes what the controller would (replica rows, `deployments.status` and a history
row with the same stamp, as `Store.record_status` does) while the real command polls. The
waiting cases run the installed script as a subprocess, as CI would: its output is not a
terminal, so progress comes as plain lines.
"""

from __future__ import annotations

import itertools
import os
import queue
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.test_fogctl import (
    WEB,
    Fogctl,
    add_node,
    add_replicas,
    deployment_row,
    fogctl_script,
    observe_generation,
    record_status,
    set_replicas,
    set_replicas_where,
    stop_replicas,
)

POLL = "0.1s"


@pytest.fixture
def fog(db_url: str) -> Fogctl:
    cli = Fogctl(db_url)
    cli.ok("user", "add", "alice")
    cli.ok("apply", "-f", "-", user="alice", stdin=WEB)  # web: 3 replicas
    return cli


def web_id(fog: Fogctl) -> uuid.UUID:
    value = deployment_row(fog.db_url, "alice", "web")["id"]
    assert isinstance(value, uuid.UUID)
    return value


def status(fog: Fogctl, *extra: str) -> tuple[int, str, str]:
    result = fog("rollout", "status", "deployment", "web", "--interval", POLL, *extra, user="alice")
    return result.exit_code, result.stdout, result.stderr


class Waiting:
    """The installed `fogctl rollout status` running in the background; its stdout lines are
    collected by a thread so the test can wait for what the command has said."""

    def __init__(self, db_url: str, *args: str) -> None:
        env = {**os.environ, "FOG_DATABASE_URL": db_url, "FOG_USER": "alice"}
        self.proc = subprocess.Popen(
            [fogctl_script(), "rollout", "status", "deploy", "web", "--interval", POLL, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def said(self, text: str, within: float = 30.0) -> None:
        """Wait until the command prints a line starting with `text`."""
        deadline = time.monotonic() + within
        while not any(line.startswith(text) for line in self.seen):
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"never said {text!r}; said {self.seen}") from None
            if line is None:
                raise AssertionError(f"exited before saying {text!r}; said {self.seen}")
            self.seen.append(line)

    def still_waiting(self, seconds: float = 0.5) -> None:
        """It has not exited after a few more polls (a negative check: only time can tell)."""
        time.sleep(seconds)
        assert self.proc.poll() is None, self.seen

    def finish(self) -> tuple[int, str, str]:
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        while (line := self.lines.get_nowait() if not self.lines.empty() else None) is not None:
            self.seen.append(line)
        assert self.proc.stderr is not None
        return self.proc.returncode, "".join(f"{x}\n" for x in self.seen), self.proc.stderr.read()

    def __enter__(self) -> Waiting:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


PENDING = "waiting for deployment 'web': 0/3 replicas running, status pending"


def test_exits_0_at_once_when_already_running(fog: Fogctl) -> None:
    d = web_id(fog)
    add_replicas(fog.db_url, d, ["running"] * 3, add_node(fog.db_url))
    record_status(fog.db_url, d, "running", "3/3 replicas running")
    assert status(fog) == (
        0,
        "deployment 'web' successfully rolled out: 3/3 replicas running\n",
        "",
    )


def test_waits_for_the_controller_then_exits_0(fog: Fogctl) -> None:
    d = web_id(fog)
    node = add_node(fog.db_url)
    with Waiting(fog.db_url, "--timeout", "60s") as waiting:
        waiting.said(PENDING)
        add_replicas(fog.db_url, d, ["running", "starting", "pending"], node)
        record_status(fog.db_url, d, "scheduled", "1/3 replicas running")
        waiting.said("waiting for deployment 'web': 1/3 replicas running, status scheduled")
        set_replicas(fog.db_url, d, "running")
        waiting.said("waiting for deployment 'web': 3/3 replicas running, status scheduled")
        waiting.still_waiting()  # every replica up, but the controller has not said `running`
        record_status(fog.db_url, d, "running", "3/3 replicas running")
        code, out, err = waiting.finish()
    assert (code, err) == (0, "")
    lines = out.splitlines()
    # Polls may also catch states between the simulated writes; what matters is the order,
    # and one line per change rather than one per poll.
    expected = [
        PENDING,
        "waiting for deployment 'web': 1/3 replicas running, status scheduled: "
        "1/3 replicas running",
        "waiting for deployment 'web': 3/3 replicas running, status scheduled: "
        "1/3 replicas running",
        "deployment 'web' successfully rolled out: 3/3 replicas running",
    ]
    assert [line for line in lines if line in expected] == expected
    assert all(a != b for a, b in itertools.pairwise(lines))


def test_failed_exits_1_with_the_newest_reason(fog: Fogctl) -> None:
    d = web_id(fog)
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    record_status(fog.db_url, d, "scheduled", "0/3 replicas running", at=t0)
    reason = "no progress: 0/3 replicas running; image nosuch/image:1 not found: pull access denied"
    record_status(fog.db_url, d, "failed", reason, at=t0 + timedelta(minutes=10))
    code, _, err = status(fog)
    assert (code, err) == (1, f"fogctl: deployment 'web' failed: {reason}\n")


def test_a_failure_older_than_the_operators_fix_is_waited_out(fog: Fogctl) -> None:
    d = web_id(fog)
    record_status(fog.db_url, d, "failed", "no progress: 0/3 replicas running; bad image")
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB.replace("nginx:1.27", "nginx:1.28"))
    with Waiting(fog.db_url, "--timeout", "60s") as waiting:
        waiting.said(
            "waiting for deployment 'web': 0/3 replicas running, status failed "
            "(changed since it failed; waiting for the controller)"
        )
        add_replicas(fog.db_url, d, ["running"] * 3, add_node(fog.db_url))
        record_status(fog.db_url, d, "running", "3/3 replicas running")
        code, out, err = waiting.finish()
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "deployment 'web' successfully rolled out: 3/3 replicas running"


def test_failing_while_waited_on_exits_1(fog: Fogctl) -> None:
    d = web_id(fog)
    with Waiting(fog.db_url, "--timeout", "60s") as waiting:
        waiting.said(PENDING)
        record_status(fog.db_url, d, "failed", "no progress: 0/3 replicas running; exit code 3")
        code, _, err = waiting.finish()
    assert code == 1
    assert err == (
        "fogctl: deployment 'web' failed: no progress: 0/3 replicas running; exit code 3\n"
    )


def test_timeout_exits_1(fog: Fogctl) -> None:
    code, out, err = status(fog, "--timeout", "0.5s")
    assert code == 1
    assert out == "waiting for deployment 'web': 0/3 replicas running, status pending\n"
    assert err == (
        "fogctl: timed out after 0.5s: deployment 'web': 0/3 replicas running, status pending\n"
    )


def test_a_delete_ends_the_wait_with_exit_1(fog: Fogctl) -> None:
    with Waiting(fog.db_url, "--timeout", "60s") as waiting:
        waiting.said(PENDING)
        fog.ok("delete", "deploy", "web", user="alice")
        code, _, err = waiting.finish()
    assert (code, err) == (1, "fogctl: deployment 'web' was deleted\n")


def test_scaled_to_zero_and_stopped_is_success(fog: Fogctl) -> None:
    fog.ok("scale", "deploy", "web", "--replicas", "0", user="alice")
    assert status(fog, "--timeout", "0.3s")[0] == 1  # the controller has not acted yet
    record_status(fog.db_url, web_id(fog), "stopped", "scaled to 0 replicas")
    assert status(fog) == (0, "deployment 'web' scaled to 0 replicas\n", "")


def test_more_replicas_than_wanted_is_not_done_yet(fog: Fogctl) -> None:
    d = web_id(fog)
    add_replicas(fog.db_url, d, ["running"] * 3, add_node(fog.db_url))
    record_status(fog.db_url, d, "running", "3/3 replicas running")
    fog.ok("scale", "deploy", "web", "--replicas", "2", user="alice")
    code, out, _ = status(fog, "--timeout", "0.3s")
    assert code == 1
    assert out.startswith("waiting for deployment 'web': 3/2 replicas running, status running")


def test_bad_durations_are_exit_2(fog: Fogctl) -> None:
    code, _, err = status(fog, "--timeout", "soon")
    assert (code, err) == (
        2,
        "fogctl: --timeout: must be a duration such as 90s, 5m or 1h30m, got 'soon'\n",
    )


def test_a_new_image_is_not_mistaken_for_the_finished_old_rollout(fog: Fogctl) -> None:
    d = web_id(fog)
    node = add_node(fog.db_url)
    old = add_replicas(fog.db_url, d, ["running"] * 3, node)
    record_status(fog.db_url, d, "running", "3/3 replicas running")
    fog.ok("apply", "-f", "-", user="alice", stdin=WEB.replace("nginx:1.27", "nginx:1.28"))
    with Waiting(fog.db_url, "--timeout", "60s") as waiting:
        # Every old replica still runs and the status still says `running`: not done.
        waiting.said(
            "waiting for deployment 'web': 3/3 replicas running, status running "
            "(changed since; waiting for the controller to act on the change)"
        )
        # The controller's rolling update: a surge replica, then the new set.
        add_replicas(fog.db_url, d, ["starting"], node)
        record_status(
            fog.db_url, d, "scheduled", "3/3 replicas running; rollout in progress (0/3 updated)"
        )
        waiting.said("waiting for deployment 'web': 3/3 replicas running, status scheduled")
        stop_replicas(fog.db_url, old)
        set_replicas_where(fog.db_url, d, "starting", "running")
        add_replicas(fog.db_url, d, ["running", "running"], node)
        record_status(fog.db_url, d, "running", "3/3 replicas running")
        code, out, err = waiting.finish()
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "deployment 'web' successfully rolled out: 3/3 replicas running"


def test_a_change_that_needs_no_new_status_is_done_once_the_controller_observed_it(
    fog: Fogctl,
) -> None:
    d = web_id(fog)
    replicas = add_replicas(fog.db_url, d, ["running"] * 3, add_node(fog.db_url))
    record_status(fog.db_url, d, "running", "3/3 replicas running")
    fog.ok("scale", "deploy", "web", "--replicas", "2", user="alice")
    with Waiting(fog.db_url, "--timeout", "60s", "--settle", "1s") as waiting:
        # The controller scales down; the status stays running, no history row. Until it
        # records the generation it acted on, the old `running` is not trusted.
        stop_replicas(fog.db_url, replicas[:1])
        waiting.said(
            "waiting for deployment 'web': 2/2 replicas running, status running "
            "(changed since; waiting for the controller to act on the change)"
        )
        observe_generation(fog.db_url, d)
        code, out, err = waiting.finish()
    assert code == 0
    assert err == (
        "fogctl: --settle is no longer used and is ignored: success now waits for the "
        "controller to record that it observed the change (its generation)\n"
    )
    assert out.splitlines()[-1] == "deployment 'web' successfully rolled out: 2/2 replicas running"
