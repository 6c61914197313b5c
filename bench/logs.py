"""The in-process controller's structured log: to a file, with warnings counted.

Why: the controller logs every replica it starts and stops (info level, as in production, so
the cost of logging is part of what is measured), which would bury the benchmark's table on
the terminal. The lines go to a JSON-lines file instead, and the warnings and errors among
them (a deferred start, a failed reconcile, a dropped storage limit) are counted per event
name, so a sample that converged for the wrong reasons does not pass unnoticed.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO, Any

import structlog

_WARNING_LEVELS = frozenset({"warning", "error", "critical", "exception"})


class ControllerLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if event.get("level") in _WARNING_LEVELS:
            with self._lock:
                self._counts[str(event.get("event"))] += 1
        return event

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                self._count,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.WriteLoggerFactory(file=self._file),
            cache_logger_on_first_use=True,
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def warnings(self) -> Counter[str]:
        """A copy of the counts so far; subtract an earlier copy for one sample's."""
        with self._lock:
            return Counter(self._counts)
