"""Một cửa — the one-stop desk for administrative procedures, an example relying party.

Signs officials in through congvu and out everywhere at once (examples/rp_common.py has how).
From the repository root, beside `./dev.sh demo` (examples/README.md registers the client):

    MOT_CUA_CLIENT_SECRET=... .venv/bin/python -m examples.mot_cua.app

then open http://127.0.0.1:5003/ . Settings: CONGVU_ISSUER (http://127.0.0.1:5000),
MOT_CUA_CLIENT_ID (mot-cua), MOT_CUA_CLIENT_SECRET, MOT_CUA_PORT (5003), MOT_CUA_BASE_URL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask

from examples.rp_common import Settings, SignedIn, create_relying_party

HOME = """{% extends "layout.html" %}{% block content %}
<h2>Hồ sơ thủ tục hành chính đang chờ</h2>
<table><tr><th>Mã hồ sơ</th><th>Thủ tục</th><th>Người nộp</th><th>Trạng thái</th></tr>
{% for dossier in dossiers %}<tr><td>{{ dossier[0] }}</td><td>{{ dossier[1] }}</td>
<td>{{ dossier[2] }}</td><td>{{ dossier[3] }}</td></tr>{% endfor %}</table>
{% endblock %}"""

# Sample rows: a real desk would list the dossiers waiting for this official's unit.
DOSSIERS = [
    ("H25.01-261126-0001", "Chứng thực bản sao từ bản chính", "Trần Thị Bình", "Chờ tiếp nhận"),
    ("H25.01-261126-0002", "Đăng ký khai sinh", "Lê Văn Cường", "Đang xử lý"),
]


def dossiers_for(_official: SignedIn) -> dict[str, object]:
    return {"dossiers": DOSSIERS}


def create_app(environ: Mapping[str, str] = os.environ) -> Flask:
    settings = Settings.from_environ("MOT_CUA", default_client_id="mot-cua", default_port=5003,
                                     environ=environ)
    app = create_relying_party(__name__, settings, title="Một cửa", colour="#1c4f8a",
                               tagline="Tiếp nhận và trả kết quả hồ sơ thủ tục hành chính.",
                               home_template=HOME, home_context=dossiers_for)
    app.config["PORT"] = settings.port
    return app


if __name__ == "__main__":
    application = create_app()
    application.run("127.0.0.1", application.config["PORT"])
