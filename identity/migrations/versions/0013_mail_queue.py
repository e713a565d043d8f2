"""The mail gateway's durable queue: messages and their recipients' delivery state.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mail_queue_messages',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('mail_from', sa.String(length=320), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('sender_sub', sa.String(length=64), nullable=True),
    sa.Column('finished_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_mail_queue_messages_finished_at'), 'mail_queue_messages', ['finished_at'],
                    unique=False)
    op.create_table('mail_queue_recipients',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('message_id', sa.String(length=32), nullable=False),
    sa.Column('recipient', sa.String(length=320), nullable=False),
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.BigInteger(), nullable=False),
    sa.Column('next_attempt_at', sa.BigInteger(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('status_code', sa.String(length=16), nullable=True),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('lease_until', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['mail_queue_messages.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_mail_queue_recipients_due', 'mail_queue_recipients', ['status', 'next_attempt_at'],
                    unique=False)
    op.create_index(op.f('ix_mail_queue_recipients_message_id'), 'mail_queue_recipients', ['message_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_mail_queue_recipients_message_id'), table_name='mail_queue_recipients')
    op.drop_index('ix_mail_queue_recipients_due', table_name='mail_queue_recipients')
    op.drop_table('mail_queue_recipients')
    op.drop_index(op.f('ix_mail_queue_messages_finished_at'), table_name='mail_queue_messages')
    op.drop_table('mail_queue_messages')
