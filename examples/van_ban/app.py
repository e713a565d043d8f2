"""Quản lý văn bản — document management, an example relying party.

Signs officials in through congvu and out everywhere at once (examples/rp_common.py has how).
From the repository root, beside `./dev.sh demo` (examples/README.md registers the client):

    VAN_BAN_CLIENT_SECRET=... .venv/bin/python -m examples.van_ban.app

then open http://127.0.0.1:5002/ . Settings: CONGVU_ISSUER (http://127.0.0.1:5000),
VAN_BAN_CLIENT_ID (van-ban), VAN_BAN_CLIENT_SECRET, VAN_BAN_PORT (5002), VAN_BAN_BASE_URL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from flask import Flask

from examples.rp_common import Settings, SignedIn, create_relying_party

HOME = """{% extends "layout.html" %}{% block content %}
<h2>Văn bản đến cần xử lý</h2>
<table><tr><th>Số, ký hiệu</th><th>Trích yếu</th><th>Nơi gửi</th><th>Hạn xử lý</th></tr>
{% for document in documents %}<tr><td>{{ document[0] }}</td><td>{{ document[1] }}</td>
<td>{{ document[2] }}</td><td>{{ document[3] }}</td></tr>{% endfor %}</table>
{% endblock %}"""

# Sample rows: a real application would list the documents assigned to this official.
DOCUMENTS = [
    ("125/UBND-VP", "Triển khai chính quyền địa phương hai cấp", "UBND tỉnh Phú Thọ", "30/11/2026"),
    ("48/SKHCN-CĐS", "Đăng nhập một lần cho các ứng dụng dùng chung", "Sở Khoa học và Công nghệ",
     "05/12/2026"),
]


def documents_for(_official: SignedIn) -> dict[str, object]:
    return {"documents": DOCUMENTS}


def create_app(environ: Mapping[str, str] = os.environ) -> Flask:
    settings = Settings.from_environ("VAN_BAN", default_client_id="van-ban", default_port=5002,
                                     environ=environ)
    app = create_relying_party(__name__, settings, title="Quản lý văn bản", colour="#8a1c1c",
                               tagline="Văn bản đến, văn bản đi và hồ sơ công việc của cơ quan.",
                               home_template=HOME, home_context=documents_for)
    app.config["PORT"] = settings.port
    return app


if __name__ == "__main__":
    application = create_app()
    application.run("127.0.0.1", application.config["PORT"])
