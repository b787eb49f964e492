"""Leases and dispatch bookkeeping: a running job's lease, and when a queued job was last handed to the broker.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        # Existing rows count as dispatched when they were last updated.
        batch.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("dispatches", sa.Integer(), nullable=False, server_default="1"))
    op.execute("UPDATE jobs SET dispatched_at = updated_at")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("dispatched_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    op.create_index("ix_jobs_state_dispatched_at", "jobs", ["state", "dispatched_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_state_dispatched_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("dispatches")
        batch.drop_column("dispatched_at")
        batch.drop_column("lease_expires_at")
