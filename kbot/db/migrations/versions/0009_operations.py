"""Running as a service: synced sources, and question claims with a lease.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "source_syncs",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("collection", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_ok_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("detail", sa.String, nullable=False),
    )
    with op.batch_alter_table("inbound_events") as batch:
        batch.add_column(sa.Column("state", sa.String(16), nullable=True))
        batch.add_column(sa.Column("holder", sa.String(256), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("payload", sa.JSON, nullable=True))
    op.create_index("ix_inbound_events_orphans", "inbound_events", ["state", "lease_until"])


def downgrade() -> None:
    op.drop_index("ix_inbound_events_orphans", "inbound_events")
    with op.batch_alter_table("inbound_events") as batch:
        for column in ("payload", "lease_until", "holder", "state"):
            batch.drop_column(column)
    op.drop_table("source_syncs")
