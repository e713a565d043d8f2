"""The application portal: each client's description, logo and start page; per-client
roles and required acr (access policy); remembered consents of third-party clients.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Server defaults fill the existing rows, then go: the models give every new row its values.
    with op.batch_alter_table('clients') as batch_op:
        batch_op.add_column(sa.Column('allowed_roles', sa.JSON(), nullable=False, server_default='[]'))
        batch_op.add_column(sa.Column('required_acr', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('description', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('logo_uri', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('client_uri', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('initiate_login_uri', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('show_in_portal', sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
    with op.batch_alter_table('clients') as batch_op:
        batch_op.alter_column('allowed_roles', server_default=None)
        batch_op.alter_column('description', server_default=None)
        batch_op.alter_column('show_in_portal', server_default=None)
    op.create_table('consents',
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('client_id', sa.String(length=128), nullable=False),
    sa.Column('scope', sa.Text(), nullable=False),
    sa.Column('granted_at', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['client_id'], ['clients.client_id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', 'client_id')
    )


def downgrade() -> None:
    op.drop_table('consents')
    with op.batch_alter_table('clients') as batch_op:
        for column in ('show_in_portal', 'initiate_login_uri', 'client_uri', 'logo_uri', 'description',
                       'required_acr', 'allowed_roles'):
            batch_op.drop_column(column)
