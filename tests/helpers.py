"""Shared test helpers: an instance wrapper, PKCE, filling the login form."""

from __future__ import annotations

import base64
import hashlib
import http.cookiejar
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from flask import Flask

from identity.accounts import create_user
from identity.clients import register_client
from identity.services import Services

PASSWORD = "mật-khẩu-thử-nghiệm-2026"  # noqa: S105 - test data


@dataclass
class Instance:
    app: Flask
    base_url: str = "https://127.0.0.1"
    _users: int = field(default=0)

    @property
    def services(self) -> Services:
        return self.app.extensions["congvu"]

    @property
    def issuer(self) -> str:
        return self.services.config.issuer

    def client(self):  # type: ignore[no-untyped-def]
        """Flask's test client over https, so Secure cookies flow as in a browser."""
        return self.app.test_client()

    def add_user(self, username: str = "canbo", password: str = PASSWORD, **kwargs: Any) -> Any:
        kwargs.setdefault("name", "Nguyễn Văn An")
        kwargs.setdefault("email", f"{username}@phutho.gov.vn")
        with self.services.database.session() as session:
            return create_user(session, self.services.passwords, username=username,
                               password=password, **kwargs)

    def add_client(self, **kwargs: Any) -> tuple[str, str | None]:
        kwargs.setdefault("name", "Quản lý văn bản")
        kwargs.setdefault("redirect_uris", ["https://rp.example/cb"])
        with self.services.database.session() as session:
            registered = register_client(session, self.services.secret_hasher, **kwargs)
            return registered.client.client_id, registered.client_secret


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or re.search(
        r'value="([^"]+)"[^>]*name="csrf_token"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def hidden_field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}"[^>]*value="([^"]*)"', html)
    return match.group(1) if match else ""


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


class LoopbackSecurePolicy(http.cookiejar.DefaultCookiePolicy):
    """Browsers send Secure cookies to http://127.0.0.1 (a potentially trustworthy
    origin); Python's cookiejar does not. This policy does what browsers do, on
    loopback only."""

    def return_ok_secure(self, cookie, request):  # type: ignore[no-untyped-def]
        host = urlsplit(request.get_full_url()).hostname
        if host in ("127.0.0.1", "localhost", "::1"):
            return True
        return super().return_ok_secure(cookie, request)


class LoopbackSession(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        self.cookies.set_policy(LoopbackSecurePolicy())

    def prepare_request(self, request):  # type: ignore[no-untyped-def]
        # requests merges cookies into a fresh jar with the default policy; give it
        # ours and compute the Cookie header again (redirects copy this jar, policy too).
        prepared = super().prepare_request(request)
        prepared._cookies.set_policy(self.cookies.get_policy())
        prepared.headers.pop("Cookie", None)
        prepared.prepare_cookies(prepared._cookies)
        return prepared


def login_via_form(http: Any, login_url: str, username: str, password: str) -> Any:
    """GET the login page (following the redirect chain), POST the form, return the
    final response after following redirects up to (not into) the relying party."""
    page = http.get(login_url)
    token = csrf_token(page.text)
    interaction = hidden_field(page.text, "i")
    return http.post(page.url.split("?")[0], data={
        "csrf_token": token, "username": username, "password": password, "i": interaction,
    }, allow_redirects=False)


def watch_driver_statements(monkeypatch: Any) -> list[str]:
    """Every statement psycopg's cursors run from now on, whitespace folded, lower case,
    and "commit" for each commit: the audit log's and the mail queue's writers talk to
    the driver's cursor, below SQLAlchemy's events."""
    import psycopg

    statements: list[str] = []

    def spy(original: Any) -> Any:
        def run(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            statements.append(" ".join(str(query).split()).lower())
            return original(self, query, *args, **kwargs)
        return run

    def commit(original: Any) -> Any:
        def run(self: Any) -> Any:
            statements.append("commit")
            return original(self)
        return run

    monkeypatch.setattr(psycopg.Cursor, "execute", spy(psycopg.Cursor.execute))
    monkeypatch.setattr(psycopg.Cursor, "executemany", spy(psycopg.Cursor.executemany))
    monkeypatch.setattr(psycopg.Connection, "commit", commit(psycopg.Connection.commit))
    return statements


VECTORS = Path(__file__).parent / "vectors"


def load_vectors(name: str) -> list[dict[str, Any]]:
    """Test vectors kept as data (tests/vectors/NAME.json, each file saying how it was made)."""
    with (VECTORS / f"{name}.json").open(encoding="utf-8") as handle:
        return json.load(handle)["vectors"]


def post_login(http: Any, username: str, password: str = PASSWORD, page_url: str = "/login") -> Any:
    """Fill the sign-in form as a browser would (its CSRF token and interaction id) and
    post it; returns the answer (a 303)."""
    page = http.get(page_url).get_data(as_text=True)
    return http.post("/login", data={"csrf_token": csrf_token(page), "username": username,
                                     "password": password, "i": hidden_field(page, "i")})
