"""Audit log: indexes of the console's search, timeline and charts.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# (name, columns): each filter of identity/audit/search.py as (column, seq), so that a
# page newest first is a backward scan of one index; `ts` for time ranges and charts.
INDEXES = [
    ('ix_audit_events_actor_username_seq', ['actor_username', 'seq']),
    ('ix_audit_events_actor_sub_seq', ['actor_sub', 'seq']),
    ('ix_audit_events_target_seq', ['target', 'seq']),
    ('ix_audit_events_event_seq', ['event', 'seq']),
    ('ix_audit_events_client_id_seq', ['client_id', 'seq']),
    ('ix_audit_events_source_ip_seq', ['source_ip', 'seq']),
    ('ix_audit_events_ts', ['ts']),
]


def upgrade() -> None:
    for name, columns in INDEXES:
        # text_pattern_ops: an event prefix (LIKE 'signin.%') uses the index on
        # PostgreSQL whatever the database's collation; other backends ignore it.
        options = {'postgresql_ops': {'event': 'text_pattern_ops'}} if 'event' in columns else {}
        op.create_index(name, 'audit_events', columns, unique=False, **options)


def downgrade() -> None:
    for name, _columns in reversed(INDEXES):
        op.drop_index(name, table_name='audit_events')
