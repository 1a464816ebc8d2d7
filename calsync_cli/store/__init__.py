"""The store: SQLModel tables, the database engine, schema versioning, and the queries.

Nothing outside this package writes SQL. ``calsync_cli.store.db`` opens the database and
upgrades its schema; ``calsync_cli.store.models`` holds the tables; ``calsync_cli.store.queries``
(and ``jobs``) answer the questions the engine and the CLI ask.
"""
