"""Benchmarks for fog-controller, run with ``python -m bench`` (``make bench``).

Benchmarks are not tests: nothing here asserts, they measure and print. Every figure is
reported next to a baseline measured in the same run on the same engine (interleaved, several
rounds), because the machines this runs on are shared and noisy: an absolute number from one
run says little, a ratio against a baseline taken seconds apart says a lot.

The benchmark starts everything it needs itself (a private Docker engine through
``tests.harness.engines``, throwaway PostgreSQL databases and SQLite files through
``tests.harness.database``) and removes all of it again, also on Ctrl-C.
"""
