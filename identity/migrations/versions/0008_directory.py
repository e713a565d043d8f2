"""Directory of officials: where each account and group comes from, the DN, mail aliases,
and each directory's sync state.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('user_email_aliases',
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'email')
    )
    op.create_index(op.f('ix_user_email_aliases_email'), 'user_email_aliases', ['email'], unique=False)
    op.create_table('directory_sync_state',
    sa.Column('directory', sa.String(length=64), nullable=False),
    sa.Column('high_water_mark', sa.String(length=64), nullable=True),
    sa.Column('high_water_server', sa.String(length=255), nullable=True),
    sa.Column('full_synced_at', sa.BigInteger(), nullable=True),
    sa.Column('synced_at', sa.BigInteger(), nullable=True),
    sa.Column('lease_holder', sa.String(length=255), nullable=True),
    sa.Column('lease_until', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('directory')
    )
    with op.batch_alter_table('users') as batch_op:
        batch_op.add_column(sa.Column('source', sa.String(length=64), server_default='local', nullable=False))
        batch_op.add_column(sa.Column('dn', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('disabled_reason', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_users_source'), ['source'], unique=False)
    with op.batch_alter_table('groups') as batch_op:
        batch_op.add_column(sa.Column('source', sa.String(length=64), server_default='local', nullable=False))
        batch_op.add_column(sa.Column('external_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('member_digest', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_groups_source_external_id', ['source', 'external_id'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('groups') as batch_op:
        batch_op.drop_index('ix_groups_source_external_id')
        batch_op.drop_column('member_digest')
        batch_op.drop_column('external_id')
        batch_op.drop_column('source')
    with op.batch_alter_table('users') as batch_op:
        batch_op.drop_index(batch_op.f('ix_users_source'))
        batch_op.drop_column('disabled_reason')
        batch_op.drop_column('dn')
        batch_op.drop_column('source')
    op.drop_table('directory_sync_state')
    op.drop_index(op.f('ix_user_email_aliases_email'), table_name='user_email_aliases')
    op.drop_table('user_email_aliases')
