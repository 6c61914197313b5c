"""Medians, per-round ratios, the printed table and the JSON file of a convergence run.

Why medians and per-round ratios: with three rounds on a shared two-core machine, one slow
round is common; the median ignores it, and the ratio of a controller run to the raw run of
the *same* round cancels load that hit both. Min-max is printed next to every median so the
spread is never hidden.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import statistics
import tempfile
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.convergence import LABELS, PG, RAW, RAW_STOP, SQLITE, Config, Phase, Sample

AIM = 1.25  # the product owner's target for controller/raw (scale-up, engine work)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def run_suite(
    name: str, argv: list[str], run: Callable[[Path, str], Coroutine[Any, Any, int]]
) -> int:
    """`python -m bench NAME ARGV...`: `run(workdir, command)` in a throwaway directory."""
    workdir = Path(tempfile.mkdtemp(prefix=f"fogbench-{name}-"))
    command = shlex.join(["python", "-m", "bench", name, *argv])
    try:
        return asyncio.run(run(workdir, command))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def write_results(kind: str, out: dict[str, Any]) -> Path:
    """`out` as bench/results/<kind>-<UTC timestamp>.json; the path written."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    return path


def stats(values: Iterable[float | None]) -> dict[str, Any] | None:
    got = [v for v in values if v is not None]
    if not got:
        return None
    return {
        "median": round(statistics.median(got), 4),
        "min": round(min(got), 4),
        "max": round(max(got), 4),
        "values": [round(v, 4) for v in got],
    }


def _ok(samples: list[Sample], variant: str) -> list[Sample]:
    return [s for s in samples if s.variant == variant and s.error is None]


def _ratios(
    samples: list[Sample],
    variant: str,
    baselines: tuple[str, ...],
    value: Callable[[Sample], float | None],
    base_value: Callable[[Sample], float | None],
) -> dict[str, Any] | None:
    """Median of per-round ratios `value(variant) / base_value(baseline)`, same round only;
    with several baseline variants, their mean in that round is the baseline."""
    base: dict[int, list[float]] = {}
    for b in baselines:
        for s in _ok(samples, b):
            got = base_value(s)
            if got:
                base.setdefault(s.round, []).append(got)
    ratios = []
    for s in _ok(samples, variant):
        v, round_base = value(s), base.get(s.round)
        if v is not None and round_base:
            ratios.append(v / statistics.fmean(round_base))
    return stats(ratios)


def _get(phase: str, name: str) -> Callable[[Sample], float | None]:
    def value(s: Sample) -> float | None:
        p: Phase | None = getattr(s, phase)
        return None if p is None else getattr(p, name)

    return value


def summarize(samples: list[Sample]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    variants = list(dict.fromkeys(s.variant for s in samples))
    for v in variants:
        ok = _ok(samples, v)
        entry: dict[str, Any] = {
            "samples": len([s for s in samples if s.variant == v]),
            "failed": len([s for s in samples if s.variant == v and s.error]),
        }
        for phase in ("up", "down"):
            entry[phase] = {
                name: stats(_get(phase, name)(s) for s in ok)
                for name in ("work_s", "from_edit_s", "reaction_s", "status_s", "client_s")
            }
        # Scale-up: both raw variants create and start alike, so both make the baseline.
        up_base = tuple(b for b in (RAW, RAW_STOP) if b in variants)
        if up_base:
            work = _get("up", "work_s")
            entry["ratio_to_raw"] = {
                "up_work": _ratios(samples, v, up_base, work, work),
                "up_from_edit": _ratios(samples, v, up_base, _get("up", "from_edit_s"), work),
            }
        for base, key in ((RAW, "ratio_to_raw"), (RAW_STOP, "ratio_to_raw_stop")):
            if base in variants:
                work = _get("down", "work_s")
                entry.setdefault(key, {}).update(
                    {
                        "down_work": _ratios(samples, v, (base,), work, work),
                        "down_from_edit": _ratios(
                            samples, v, (base,), _get("down", "from_edit_s"), work
                        ),
                    }
                )
        entry["profile"] = _profile_medians(ok)
        out[v] = entry
    return out


def _profile_medians(ok: list[Sample]) -> dict[str, Any]:
    """Medians over rounds of the few profile figures the table shows."""

    def med(phase: str, path: tuple[str, ...]) -> float | None:
        values = []
        for s in ok:
            p: Phase | None = getattr(s, phase)
            node: Any = p.profile if p is not None else None
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, int | float):
                values.append(float(node))
        return round(statistics.median(values), 4) if values else None

    figures: dict[str, Any] = {}
    for phase in ("up", "down"):
        figures[phase] = {
            "mean_in_flight": med(phase, ("docker_occupancy", "mean_in_flight")),
            "engine_idle_s": med(phase, ("docker_occupancy", "idle_s")),
            "engine_cpu_s": med(phase, ("cpu", "engine_cpu_s")),
            "bench_process_cpu_s": med(phase, ("cpu", "bench_process_cpu_s")),
            "machine_busy_fraction": med(phase, ("cpu", "machine_busy_fraction")),
            "loop_stalled_s": med(phase, ("loop_lag", "stalled_s")),
            "create_median_ms": med(phase, ("calls", "docker:create_container", "median_ms")),
            "start_median_ms": med(phase, ("calls", "docker:start", "median_ms")),
            "stop_median_ms": med(phase, ("calls", "docker:stop", "median_ms")),
            "remove_median_ms": med(phase, ("calls", "docker:remove_container", "median_ms")),
            "list_calls": med(phase, ("calls", "docker:containers", "count")),
            "inspect_calls": med(phase, ("calls", "docker:inspect_container", "count")),
            "info_calls": med(phase, ("calls", "docker:info", "count")),
            "store_transition_calls": med(phase, ("calls", "store:transition", "count")),
            "store_transition_total_s": med(phase, ("calls", "store:transition", "total_s")),
            "store_transition_median_ms": med(phase, ("calls", "store:transition", "median_ms")),
            "store_total_s": None,
            "reconciles": med(phase, ("calls", "reconcile", "count")),
        }
        store_totals = []
        for s in ok:
            p = getattr(s, phase)
            if p is not None:
                calls = p.profile.get("calls", {})
                store_totals.append(
                    sum(v["total_s"] for k, v in calls.items() if k.startswith("store:"))
                )
        if store_totals:
            figures[phase]["store_total_s"] = round(statistics.median(store_totals), 3)
    return figures


# --- printing --------------------------------------------------------------------------------


def _cell(st: dict[str, Any] | None) -> str:
    if st is None:
        return "-"
    return f"{st['median']:.2f} ({st['min']:.2f}-{st['max']:.2f})"


def _ratio(st: dict[str, Any] | None) -> str:
    return "-" if st is None else f"{st['median']:.2f}"


def table(summary: dict[str, Any]) -> list[str]:
    lines = [
        f"{'variant':<19} {'measured':<11} {'scale-up s':<19} {'x raw':>6}   "
        f"{'scale-down s':<19} {'x raw':>6} {'x stop+rm':>9}",
        f"{'':<19} {'':<11} {'median (min-max)':<19} {'':>6}   {'median (min-max)':<19}",
    ]
    for variant in (RAW, RAW_STOP, PG, SQLITE):
        entry = summary.get(variant)
        if entry is None:
            continue
        ratio = entry.get("ratio_to_raw", {})
        stop = entry.get("ratio_to_raw_stop", {})
        rows = [("engine work", "work_s", "up_work", "down_work")]
        if variant in (PG, SQLITE):
            rows.append(("from edit", "from_edit_s", "up_from_edit", "down_from_edit"))
        for label, name, up_key, down_key in rows:
            lines.append(
                f"{LABELS[variant]:<19} {label:<11} {_cell(entry['up'][name]):<19} "
                f"{_ratio(ratio.get(up_key)):>6}   {_cell(entry['down'][name]):<19} "
                f"{_ratio(ratio.get(down_key)):>6} {_ratio(stop.get(down_key)):>9}"
            )
        if entry["failed"]:
            lines.append(f"{'':<19} {entry['failed']} of {entry['samples']} samples failed")
    lines += [
        "engine work: first create (kill) event to last start (destroy) event, engine clock;",
        "from edit: from the operator's UPDATE commit. x raw: median of per-round ratios; for",
        "scale-up against the mean of the round's two raw scale-ups (identical work), for",
        "scale-down against raw rm -f; x stop+rm: against raw stop, then rm (what the",
        "controller does: a graceful stop first).",
    ]
    return lines


def noise_floor(samples: list[Sample]) -> dict[str, Any] | None:
    """The two raw variants scale up identically: how far apart they land in one round is
    what this machine's noise does to one measurement."""
    up = _get("up", "work_s")
    return _ratios(samples, RAW_STOP, (RAW,), up, up)


def aim_lines(summary: dict[str, Any], samples: list[Sample]) -> list[str]:
    out = []
    noise = noise_floor(samples)
    if noise is not None:
        spread = max(abs(1 - r) for r in noise["values"])
        out.append(
            "noise floor: the two raw scale-ups of a round do identical work; per round they "
            f"differed by {', '.join(f'{r:.2f}' for r in noise['values'])} (up to "
            f"{spread:.0%}), so ratios closer than that to each other are not told apart"
        )
    for variant in (PG, SQLITE):
        entry = summary.get(variant)
        ratio = (entry or {}).get("ratio_to_raw", {}).get("up_work")
        if ratio is None:
            continue
        verdict = "met" if ratio["median"] <= AIM else "MISSED"
        out.append(
            f"aim controller/raw <= {AIM:g}x (scale-up, engine work): {LABELS[variant]} "
            f"{ratio['median']:.2f}x, per round {', '.join(f'{r:.2f}' for r in ratio['values'])}"
            f" -> {verdict}"
        )
    return out


def reaction_lines(summary: dict[str, Any], samples: list[Sample]) -> list[str]:
    """How fast the controller noticed the edit, and whether a kick was ever lost."""
    parts = []
    for variant in (PG, SQLITE):
        entry = summary.get(variant)
        if entry is None:
            continue
        up, down = entry["up"]["reaction_s"], entry["down"]["reaction_s"]
        parts.append(
            f"{LABELS[variant]} up {_cell(up)} s, down {_cell(down)} s"
            if up and down
            else f"{LABELS[variant]} -"
        )
    lost = sum(
        p.kicks - 1 for s in samples for p in (s.up, s.down) if p is not None and p.kicks > 1
    )
    kicked = any(p.kicks for s in samples for p in (s.up, s.down) if p is not None)
    lines = [f"edit to the controller's first engine event: {'; '.join(parts)}"] if parts else []
    if kicked:
        lines.append(
            f"resync_now() kicks lost (a pass was running and cleared the wake-up): {lost}"
        )
    return lines


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def profile_lines(
    summary: dict[str, Any], samples: list[Sample], replicas: int, concurrency: int
) -> list[str]:
    lines = []
    for phase, title in (("up", "scale-up"), ("down", "scale-down")):
        lines.append(f"where the time goes, {title} (medians over rounds):")
        lines.append(
            f"  {'variant':<19} {'in flight':>9} {'eng idle':>8} {'create':>7} {'start':>6} "
            f"{'stop':>6} {'rm':>6} {'lists':>5} {'row writes':>14} {'store':>6} "
            f"{'loop stall':>10} {'eng CPU':>7} {'our CPU':>7} {'machine':>7}"
        )
        for variant in (RAW, RAW_STOP, PG, SQLITE):
            entry = summary.get(variant)
            if entry is None:
                continue
            f = entry["profile"][phase]
            writes = (
                f"{_num(f['store_transition_calls'], '.0f')} in "
                f"{_num(f['store_transition_total_s'], '.2f')}s"
                if f["store_transition_calls"] is not None
                else "-"
            )
            cells = [
                f"{_num(f['mean_in_flight'], '.2f'):>9}",
                f"{_num(f['engine_idle_s'], '.2f'):>7}s",
                f"{_num(f['create_median_ms'], '.0f'):>5}ms",
                f"{_num(f['start_median_ms'], '.0f'):>4}ms",
                f"{_num(f['stop_median_ms'], '.0f'):>4}ms",
                f"{_num(f['remove_median_ms'], '.0f'):>4}ms",
                f"{_num(f['list_calls'], '.0f'):>5}",
                f"{writes:>14}",
                f"{_num(f['store_total_s'], '.2f'):>5}s",
                f"{_num(f['loop_stalled_s'], '.2f'):>9}s",
                f"{_num(f['engine_cpu_s'], '.2f'):>6}s",
                f"{_num(f['bench_process_cpu_s'], '.2f'):>6}s",
                f"{_num(f['machine_busy_fraction'], '.0%'):>7}",
            ]
            lines.append(f"  {LABELS[variant]:<19} {' '.join(cells)}")
    lines.append(
        "  (in flight: mean Docker calls in flight over the phase, raw keeps its 8 threads busy;"
    )
    lines.append(
        "   eng idle: time with no call in flight; create/start/stop/rm: median call latency;"
    )
    lines.append(
        "   row writes: replica transitions, one transaction each; store: all SQL time, summed"
    )
    lines.append("   over concurrent calls; our CPU: the benchmark process, controller included)")
    for variant in (PG, SQLITE):
        picked = _median_sample(samples, variant)
        if picked is None or picked.up is None:
            continue
        b = picked.up.profile.get("batches") or []
        if not b:
            continue
        raws = [
            s.up.work_s
            for s in samples
            if s.variant in (RAW, RAW_STOP) and s.round == picked.round and s.up and not s.error
        ]
        raw_pace = statistics.fmean(raws) / replicas if raws else None
        sizes = ",".join(str(x["size"]) for x in b)
        durations = ", ".join(
            f"{x['calls_s']:.2f} s at {x.get('mean_in_flight', 0):.1f} in flight" for x in b
        )
        gaps = [x["gap_ms"] for x in b[:-1]]
        gap_text = ", ".join(format(g, ".0f") for g in gaps)
        # The ramp: batches smaller than the node's concurrency cannot keep the engine busy.
        ramp = [x for x in b if x["size"] < concurrency]
        ramp_s = sum(x["calls_s"] + x["gap_ms"] / 1000 for x in ramp)
        ramp_n = sum(int(x["size"]) for x in ramp)
        lines.append(
            f"slow-start {LABELS[variant]} (round {picked.round}, the median one): batches "
            f"{sizes} ({durations}); between batches "
            f"{sum(gaps) / 1000:.2f} s without a create/start in flight ({gap_text} ms); "
            f"edit to first create {_num(picked.up.reaction_s, '.3f')} s"
        )
        if raw_pace is not None and ramp:
            cost = ramp_s - ramp_n * raw_pace
            verdict = f"slow start costs ~{cost:.2f} s" if cost > 0 else "no measurable cost"
            lines.append(
                f"  ramp (batches below {concurrency} replicas): {ramp_n} replicas in "
                f"{ramp_s:.2f} s, where the raw pace of that round would take "
                f"{ramp_n * raw_pace:.2f} s: {verdict}"
            )
    return lines


def _median_sample(samples: list[Sample], variant: str) -> Sample | None:
    ok = [s for s in _ok(samples, variant) if s.up is not None]
    if not ok:
        return None
    ok.sort(key=lambda s: s.up.work_s if s.up else 0.0)
    return ok[len(ok) // 2]


def write_json(document: dict[str, Any], started: datetime) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"convergence-{started.astimezone(UTC):%Y%m%dT%H%M%SZ}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def document(
    config: Config,
    samples: list[Sample],
    summary: dict[str, Any],
    host: dict[str, Any],
    started: datetime,
    finished: datetime,
    command: str,
) -> dict[str, Any]:
    return {
        "benchmark": "convergence",
        "format": 1,
        "command": command,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "host": host,
        "config": {
            "replicas": config.replicas,
            "rounds": config.rounds,
            "threads": config.threads,
            "variants": list(config.variants),
            "trigger": "resync_now() after the UPDATE" if config.kick else "periodic resync",
            "resync_seconds": config.resync_seconds,
            "stop_timeout_seconds": config.stop_timeout_seconds,
            "resources": {
                "cpu_cores": config.resources.cpu_cores,
                "memory_mb": config.resources.memory_mb,
                "storage_gb": config.resources.storage_gb,
            },
            "aim_ratio": AIM,
        },
        "summary": summary,
        "noise_floor_raw_stop_over_raw_up": noise_floor(samples),
        "samples": [s.to_json() for s in samples],
    }
