"""WSGI entry point: `gunicorn wsgi:app`.

Settings come from `CONGVU_DATA_DIR` (and the congvu.toml in it) and `CONGVU_*`
variables. Run `congvu db upgrade` once before starting workers.
"""

from identity import create_app

app = create_app()
