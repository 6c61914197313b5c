"""fog-controller: makes containers on fog nodes match the deployments written in a database."""

from __future__ import annotations

__version__ = "0.1.0"
