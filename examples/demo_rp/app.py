"""A small relying party ("Ứng dụng mẫu") that signs in through congvu.

It uses authlib's standard Flask OIDC client and nothing specific to congvu: discovery,
the code flow with PKCE, ID-token validation against JWKS, userinfo, and RP-initiated
logout. Run it beside `congvu demo` (which prints this command with the secret):

    CONGVU_ISSUER=http://127.0.0.1:5000 DEMO_CLIENT_SECRET=... \
        .venv/bin/python examples/demo_rp/app.py

then open http://127.0.0.1:5001/ .
"""

from __future__ import annotations

import os
import secrets
from html import escape
from urllib.parse import urlencode

from authlib.integrations.flask_client import OAuth
from flask import Flask, redirect, session, url_for

ISSUER = os.environ.get("CONGVU_ISSUER", "http://127.0.0.1:5000")
PORT = int(os.environ.get("DEMO_RP_PORT", "5001"))
BASE = f"http://127.0.0.1:{PORT}"

app = Flask(__name__)
app.secret_key = secrets.token_bytes(32)  # a demo: sessions end when it restarts
oauth = OAuth(app)
oauth.register(
    "congvu",
    client_id=os.environ.get("DEMO_CLIENT_ID", "demo-rp"),
    client_secret=os.environ["DEMO_CLIENT_SECRET"],
    server_metadata_url=f"{ISSUER}/.well-known/openid-configuration",
    client_kwargs={"scope": "openid profile email groups", "code_challenge_method": "S256"},
)

PAGE = """<!doctype html><html lang="vi"><meta charset="utf-8">
<title>Ứng dụng mẫu</title><body style="font-family:sans-serif;max-width:40rem;margin:2rem auto">
<h1>Ứng dụng mẫu</h1>{body}</body></html>"""


@app.get("/")
def home():  # type: ignore[no-untyped-def]
    user = session.get("user")
    if not user:
        return PAGE.format(body='<p>Chưa đăng nhập.</p><p><a href="/login">Đăng nhập</a></p>')
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>"
                   for k, v in sorted(user.items()))
    return PAGE.format(body=f'<p>Đã đăng nhập.</p><table>{rows}</table>'
                            '<p><a href="/logout">Đăng xuất</a></p>')


@app.get("/login")
def login():  # type: ignore[no-untyped-def]
    return oauth.congvu.authorize_redirect(f"{BASE}/callback")


@app.get("/callback")
def callback():  # type: ignore[no-untyped-def]
    token = oauth.congvu.authorize_access_token()  # checks state, PKCE, ID token, nonce
    session["user"] = oauth.congvu.userinfo(token=token)
    session["id_token"] = token["id_token"]
    return redirect(url_for("home"))


@app.get("/logout")
def logout():  # type: ignore[no-untyped-def]
    id_token = session.pop("id_token", None)
    session.clear()
    metadata = oauth.congvu.load_server_metadata()
    query = urlencode({"id_token_hint": id_token or "", "post_logout_redirect_uri": f"{BASE}/"})
    return redirect(f"{metadata['end_session_endpoint']}?{query}")


if __name__ == "__main__":
    app.run("127.0.0.1", PORT)
