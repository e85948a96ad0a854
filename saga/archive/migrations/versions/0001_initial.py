"""The archive's first schema: runs, their tags, events, checkpoints and dead letters.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written out rather than generated from :mod:`saga.archive.tables`, so this revision stays what it
was when later ones change the tables (a test checks that head matches the tables).

Times are BIGINT microseconds since the epoch: they compare and index the same on SQLite and
PostgreSQL, have no time zone to get wrong, and turn back into the run's exact ISO-8601 strings
(``saga.codec.iso``). Bodies read back as written (events, payloads, dead-letter entries) are
JSON, which PostgreSQL keeps as the exact text; searched tags are JSONB there, with a GIN index.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the archive's tables and indexes (the GIN index on tags only on PostgreSQL)."""
    op.create_table(
        "saga_runs",
        sa.Column("run_id", sa.String(255), primary_key=True),
        sa.Column("saga", sa.String(), nullable=False),
        sa.Column("definition_version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("current_step", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("failed_step", sa.String(), nullable=True),
        sa.Column("error_type", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("tags", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
    )
    op.create_index("ix_saga_runs_status_created", "saga_runs", ["status", "created_at", "run_id"])
    op.create_index("ix_saga_runs_saga_created", "saga_runs", ["saga", "created_at", "run_id"])
    op.create_index("ix_saga_runs_created", "saga_runs", ["created_at", "run_id"])
    op.create_index("ix_saga_runs_failed_step", "saga_runs", ["failed_step", "created_at", "run_id"])
    op.create_index("ix_saga_runs_finished", "saga_runs", ["finished_at"])
    if op.get_context().dialect.name == "postgresql":
        op.create_index(
            "ix_saga_runs_tags_gin",
            "saga_runs",
            ["tags"],
            postgresql_using="gin",
            postgresql_ops={"tags": "jsonb_path_ops"},
        )

    op.create_table(
        "saga_run_tags",
        sa.Column("run_id", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("value", sa.String(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_saga_run_tags_lookup", "saga_run_tags", ["key", "value", "created_at", "run_id"])

    op.create_table(
        "saga_events",
        sa.Column("run_id", sa.String(255), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
    )

    op.create_table(
        "saga_checkpoints",
        sa.Column("run_id", sa.String(255), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )

    op.create_table(
        "saga_dead_letters",
        sa.Column("entry_id", sa.String(300), primary_key=True),
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("saga", sa.String(), nullable=False),
        sa.Column("step", sa.String(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("error_type", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
    )
    op.create_index("ix_saga_dead_letters_run", "saga_dead_letters", ["run_id"])
    op.create_index("ix_saga_dead_letters_status_at", "saga_dead_letters", ["status", "at"])


def downgrade() -> None:
    """Drop every table of the archive (and so every archived run)."""
    for table in ("saga_dead_letters", "saga_checkpoints", "saga_events", "saga_run_tags", "saga_runs"):
        op.drop_table(table)
