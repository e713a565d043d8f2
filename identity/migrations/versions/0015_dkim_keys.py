"""DKIM keys and selectors (keys/dkim.py), private halves sealed under the master key.

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the DKIM (issue 6) work


def downgrade() -> None:
    pass
