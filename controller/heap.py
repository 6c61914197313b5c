"""The cyclic garbage collector's pacing for a daemon with a large, long-lived heap.

Why: the controller holds every deployment, replica and node it knows as small frozen
objects (hundreds of MiB at fog scale), and a busy reconcile allocates many short-lived ones.
With CPython's default thresholds (700 / 10 / 10) a full collection walked the whole heap
every second or so: placing 50,000 replicas on hollow nodes ran 33 full collections, 7.8 s
of pauses in a 31.7 s placement (`python -m bench scale`, which reports the pauses). Few of
the controller's objects form cycles, so collecting the youngest generation every 50,000
allocations instead of 700 finds the same garbage at a fraction of the walks; the older
generations keep their default ratios, so cyclic garbage is still freed in a long-running
daemon (`gc.freeze()` was not used, as it would keep such garbage forever).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def tune_collector() -> tuple[int, int, int]:
    """Apply the daemon's collector thresholds; returns the previous ones."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, before[1], before[2])
    return before
