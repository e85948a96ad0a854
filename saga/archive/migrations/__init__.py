"""The Alembic migrations of the SQL archive (applied by ``saga db upgrade``, see :mod:`saga.archive.sql`)."""
