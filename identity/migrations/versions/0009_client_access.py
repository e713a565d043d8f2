"""Which groups may use each client (policies.access).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('clients') as batch_op:
        batch_op.add_column(sa.Column('allowed_groups', sa.JSON(), nullable=False, server_default='[]'))
    with op.batch_alter_table('clients') as batch_op:
        batch_op.alter_column('allowed_groups', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('clients') as batch_op:
        batch_op.drop_column('allowed_groups')
