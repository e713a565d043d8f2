"""Back-channel and front-channel logout: client logout URIs, the logout outbox.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Server defaults fill the existing rows (session required: the spec's default), then go:
    # the model gives every new row its value.
    with op.batch_alter_table('clients') as batch_op:
        batch_op.add_column(sa.Column('backchannel_logout_uri', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('backchannel_logout_session_required', sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
        batch_op.add_column(sa.Column('frontchannel_logout_uri', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('frontchannel_logout_session_required', sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
    with op.batch_alter_table('clients') as batch_op:
        batch_op.alter_column('backchannel_logout_session_required', server_default=None)
        batch_op.alter_column('frontchannel_logout_session_required', server_default=None)
    op.create_table('logout_notifications',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('sid', sa.String(length=64), nullable=False),
    sa.Column('sub', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.BigInteger(), nullable=False),
    sa.Column('next_attempt_at', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('finished_at', sa.BigInteger(), nullable=True),
    sa.Column('claim', sa.String(length=32), nullable=True),
    sa.Column('last_error', sa.String(length=255), nullable=True),
    sa.ForeignKeyConstraint(['client_id'], ['clients.client_id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_logout_notifications_due', 'logout_notifications', ['state', 'next_attempt_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_logout_notifications_due', table_name='logout_notifications')
    op.drop_table('logout_notifications')
    with op.batch_alter_table('clients') as batch_op:
        for column in ('frontchannel_logout_session_required', 'frontchannel_logout_uri',
                       'backchannel_logout_session_required', 'backchannel_logout_uri'):
            batch_op.drop_column(column)
