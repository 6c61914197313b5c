"""`fogctl`: the operator's command line, modelled on kubectl's verbs and habits.

Operators may edit the database by hand; fogctl is the careful way to do it. It validates
with the Pydantic schemas of `schema.api` before anything is written, writes only the columns
operators own, limits every deployment query to one user (`--user` / FOG_USER), and shows
what the controller recorded (statuses, reasons, replicas, history) as tables or as stable
JSON/YAML. It talks to the database only, never to the daemon or the engines, so it works
the same against the embedded SQLite file and a production PostgreSQL.

Layout: `app` (the command tree), `deployments`, `cluster`, `credentials` and `db` (the
commands), `options` (shared flags), `documents` (reading -f files), `node_labels` (node
labels as typed), `queries` (SQL of deployments, nodes and users), `spec_queries` (the
container spec's rows), `credential_queries` (registry credentials), `views`, `render` and
`spec_text` (output), `rollout` (waiting), `session` (one engine per command, failures to exit
codes), `errors` (messages and exit codes).
"""

from __future__ import annotations

from controller.fogctl.app import app, main

__all__ = ["app", "main"]
