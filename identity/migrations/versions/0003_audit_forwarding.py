"""Audit forwarding: one cursor per destination (SIEM syslog receiver, off-host checkpoint file).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_forward_cursors',
    sa.Column('destination', sa.String(length=1024), nullable=False),
    sa.Column('record_seq', sa.BigInteger(), nullable=False),
    sa.Column('checkpoint_seq', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('destination')
    )


def downgrade() -> None:
    op.drop_table('audit_forward_cursors')
