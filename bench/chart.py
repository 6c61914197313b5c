"""Step charts of replicas over time (matplotlib, a `dev` extra; imported only when drawing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def replicas_over_time(
    series: Mapping[str, Sequence[float]], title: str, xlabel: str, path: Path
) -> Path:
    """One step line per label: the count rises by one at each time in its sequence
    (seconds since the command), from 0 at t=0. Written as PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for label, times in series.items():
        xs = [0.0, *sorted(times)]
        ax.step(xs, range(len(xs)), where="post", label=label)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("containers running")
    ax.set_title(title)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
