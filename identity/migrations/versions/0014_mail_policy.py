"""Mail policy state: per-sender rate counters and the quarantine.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mail_rate_counters',
    sa.Column('sender_sub', sa.String(length=64), nullable=False),
    sa.Column('window_seconds', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('window_start', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('recipients', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('sender_sub', 'window_seconds', 'window_start')
    )
    op.create_index('ix_mail_rate_counters_window_start', 'mail_rate_counters', ['window_start'],
                    unique=False)
    op.create_table('mail_quarantine',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=128), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('sender_sub', sa.String(length=64), nullable=False),
    sa.Column('sender_username', sa.String(length=255), nullable=False),
    sa.Column('peer_ip', sa.String(length=64), nullable=False),
    sa.Column('mail_from', sa.String(length=320), nullable=False),
    sa.Column('rcpt_tos', sa.JSON(), nullable=False),
    sa.Column('encrypt_for', sa.JSON(), nullable=False),
    sa.Column('subject', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('received_at', sa.BigInteger(), nullable=False),
    sa.Column('reviewed_at', sa.BigInteger(), nullable=True),
    sa.Column('reviewed_by', sa.String(length=255), nullable=True),
    sa.Column('queue_id', sa.String(length=32), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_mail_quarantine_state_received', 'mail_quarantine', ['state', 'received_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_mail_quarantine_state_received', table_name='mail_quarantine')
    op.drop_table('mail_quarantine')
    op.drop_index('ix_mail_rate_counters_window_start', table_name='mail_rate_counters')
    op.drop_table('mail_rate_counters')
