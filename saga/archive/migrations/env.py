"""Alembic's environment for the SQL archive.

Online, it runs the migrations on the connection :meth:`saga.archive.Archive.upgrade` hands over
in ``config.attributes["connection"]`` (inside that connection's transaction: on PostgreSQL the
whole upgrade commits or nothing does). Offline (``alembic upgrade head --sql``, with
``sqlalchemy.url`` set in the config) it prints the DDL for a DBA to apply.
"""

from __future__ import annotations

from alembic import context

config = context.config

if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("the archive migrations run through `saga db upgrade` (Archive.upgrade)")
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
