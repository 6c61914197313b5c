"""The controller's desired state as the database holds it.

Tables (`models`), the migrations that create them (`migrate`, `migrations/`), the request and
response shapes operators and tools exchange (`api`), and one engine factory (`engine`) so every
caller talks to PostgreSQL or SQLite the same way. Nothing here talks to Docker.
"""
