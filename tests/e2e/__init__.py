"""End-to-end tests: `fog-controller run` as a separate process, driven with plain SQL."""
