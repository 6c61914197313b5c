"""When the runtime inspects a listed container, and when an earlier inspect still holds.

The rule: an answer sent at time t still holds for a listing returned by time T only if the
container's uptime in that listing is at least T - t (a restart after t would show less).
Times are passed in; nothing here waits."""

from __future__ import annotations

import uuid

from controller.model import ContainerState
from controller.runtime import container_status
from controller.runtime.inspect_cache import INSPECTED_KEPT, RECENT_START_SECONDS, InspectCache

RUNNING = {"State": {"Running": True}, "RestartCount": 0}
EXITED = {"State": {"Running": False, "ExitCode": 1}, "RestartCount": 2}


def item(state: str, status: str) -> dict[str, object]:
    return {"Id": "c1", "Names": ["/fog-r1"], "State": state, "Status": status, "Labels": {}}


def test_only_containers_the_listing_cannot_vouch_for_are_inspected() -> None:
    node = uuid.uuid4()
    long_running = container_status.listed(node, item("running", "Up 3 hours"))
    recent = container_status.listed(node, item("running", "Up 5 seconds"))
    exited = container_status.listed(node, item("exited", "Exited (137) 2 seconds ago"))
    assert long_running.uptime_seconds is not None
    assert long_running.uptime_seconds >= RECENT_START_SECONDS
    assert not container_status.needs_inspect(long_running)
    assert container_status.needs_inspect(recent)
    assert exited.state is ContainerState.EXITED
    assert exited.exit_code == 137
    assert container_status.needs_inspect(exited)


def test_an_inspect_holds_until_the_uptime_shows_a_restart_after_it() -> None:
    cache = InspectCache()
    cache.keep("c1", 100.0, RUNNING)
    assert cache.still("c1", uptime=5.0, listed_by=104.0) is RUNNING
    assert cache.still("c1", uptime=5.0, listed_by=106.0) is None  # restarted since
    assert cache.still("c1", uptime=None, listed_by=100.0) is None  # not running now
    assert cache.still("c2", uptime=500.0, listed_by=101.0) is None


def test_a_stopped_containers_answer_is_not_kept_and_forgets_the_last() -> None:
    cache = InspectCache()
    cache.keep("c1", 100.0, RUNNING)
    cache.keep("c1", 110.0, EXITED)
    assert cache.still("c1", uptime=1000.0, listed_by=111.0) is None


def test_a_full_cache_drops_answers_older_than_two_recent_start_windows() -> None:
    cache = InspectCache()
    old = 0.0
    now = old + 2 * RECENT_START_SECONDS + 1
    for n in range(INSPECTED_KEPT):
        cache.keep(f"old{n}", old, RUNNING)
    cache.keep("new", now, RUNNING)
    assert cache.still("old0", uptime=now, listed_by=now) is None
    assert cache.still("new", uptime=1.0, listed_by=now) is RUNNING
