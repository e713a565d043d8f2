"""The application portal: each client's description, logo and start page.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the portal (issue 7) work


def downgrade() -> None:
    pass
