"""`python -m controller` runs the daemon, as the `fog-controller` script does."""

from __future__ import annotations

from controller.cli import main

main()
