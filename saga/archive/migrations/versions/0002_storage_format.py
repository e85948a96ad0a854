"""The storage format of each archived run: ``saga_runs.format``.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01

Every run row says which storage format wrote it (:data:`saga.core.STORAGE_FORMAT`); a reader
refuses a row of a newer format than it reads (:class:`saga.errors.StorageFormatTooNew`) and never
rewrites it. The rows archived before this revision were written by format 1, which is what the
server default gives them. Written out rather than generated, so it stays what it is when later
revisions change the tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``saga_runs.format`` (format 1 for every row already there)."""
    op.add_column("saga_runs", sa.Column("format", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    """Drop ``saga_runs.format`` (SQLite through a batch: a copy of the table)."""
    with op.batch_alter_table("saga_runs") as batch:
        batch.drop_column("format")
