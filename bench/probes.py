"""Where the time goes while a phase runs: CPU of the machine, of the engine and of this
process, and how late the asyncio event loop wakes up.

Why: the machine is shared and has two cores. When a variant is slow, the first question is
whether it did more work or got less CPU; the machine-wide busy fraction answers the second,
the engine's CPU (dockerd + containerd) tells whether the controller made the engine work
harder than the raw SDK calls did, and loop lag tells whether the controller's event loop
(which also runs its SQLite driver callbacks and every Docker call's hand-off) was starved.
Everything here reads /proc or the clock; nothing talks to the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")
_LAG_INTERVAL = 0.005


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values)
    return total - idle, total


def _process_cpu(pid: int) -> float:
    """utime + stime of one process, seconds; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def engine_daemons(dockerd_pid: int | None) -> list[int]:
    """dockerd and the containerd it manages (its direct children); empty for external ones."""
    if dockerd_pid is None:
        return []
    return [dockerd_pid, *_children(dockerd_pid)]


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    wall: float
    machine_busy: int
    machine_total: int
    engine: float
    process: float

    @classmethod
    def take(cls, engine_pids: list[int]) -> CpuSnapshot:
        busy, total = _machine_jiffies()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            wall=time.monotonic(),
            machine_busy=busy,
            machine_total=total,
            engine=sum(_process_cpu(p) for p in engine_pids),
            process=usage.ru_utime + usage.ru_stime,
        )

    def until(self, later: CpuSnapshot) -> dict[str, float]:
        """CPU used between two snapshots: seconds, and the machine's busy share (0..1)."""
        total = later.machine_total - self.machine_total
        return {
            "wall_s": round(later.wall - self.wall, 4),
            "machine_busy_fraction": round(
                (later.machine_busy - self.machine_busy) / total if total else 0.0, 3
            ),
            "engine_cpu_s": round(later.engine - self.engine, 3),
            "bench_process_cpu_s": round(later.process - self.process, 3),
        }


class LoopLag:
    """Sleeps 5 ms over and over and records how late each wake-up is."""

    def __init__(self) -> None:
        self._lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(_LAG_INTERVAL)
            self._lags.append(time.perf_counter() - before - _LAG_INTERVAL)

    def start(self) -> None:
        self._lags = []
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        lags = sorted(self._lags)
        if not lags:
            return {"samples": 0}
        return {
            "samples": len(lags),
            "median_ms": round(lags[len(lags) // 2] * 1000, 2),
            "p99_ms": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000, 2),
            "max_ms": round(lags[-1] * 1000, 2),
            # Time the loop could not run anything it wanted to (wake-ups later than 10 ms).
            "stalled_s": round(sum(lag for lag in lags if lag > 0.01), 3),
        }
