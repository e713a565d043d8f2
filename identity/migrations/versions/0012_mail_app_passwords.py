"""App passwords for mail clients (scoped to mail, listed and revocable).

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the mail submission (issue 6) work


def downgrade() -> None:
    pass
