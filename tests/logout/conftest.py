"""Single-logout fixtures: real HTTP receivers on loopback standing in for applications'
back-channel logout endpoints (one answers, one fails once, one hangs, one is down), and
a browser signed in to several applications in one SSO session."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.helpers import PASSWORD, csrf_token, hidden_field, pkce_pair, query_of

REDIRECT = "https://rp.example/cb"
SSO_COOKIE = "__Host-congvu_sso"


@dataclass
class Received:
    logout_token: str
    at: float
    content_type: str


class Receiver:
    """An application's back-channel logout endpoint on a loopback port.

    behaviour: "ok" (200), "fail_once" (500, then 200), "hang" (answers only when the
    test ends: longer than any timeout)."""

    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.received: list[Received] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                token = parse_qs(body.decode())["logout_token"][0]
                with receiver._lock:
                    receiver.received.append(Received(token, time.monotonic(),
                                                      self.headers.get("Content-Type", "")))
                    count = len(receiver.received)
                if receiver.behaviour == "hang":
                    receiver.release.wait(30)
                status = 500 if receiver.behaviour == "fail_once" and count == 1 else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/backchannel-logout"

    def tokens(self) -> list[str]:
        with self._lock:
            return [r.logout_token for r in self.received]

    def wait_for(self, count: int, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.tokens()) >= count:
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def refused_uri() -> str:
    """A loopback URI where nothing listens: connection refused (an application that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/backchannel-logout"


@pytest.fixture
def receivers() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(behaviour: str = "ok") -> Receiver:
        receiver = Receiver(behaviour)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()


@dataclass
class SignedIn:
    """A browser (Flask test client) with one SSO session that several clients joined."""

    browser: Any
    sid: str
    id_tokens: dict[str, str] = field(default_factory=dict)


def sign_in(instance: Any, username: str = "canbo", browser: Any = None) -> Any:
    browser = browser or instance.client()
    html = browser.get("/login").get_data(as_text=True)
    response = browser.post("/login", data={"csrf_token": csrf_token(html), "username": username,
                                            "password": PASSWORD, "i": hidden_field(html, "i")})
    assert response.status_code == 303 and browser.get_cookie(SSO_COOKIE) is not None
    return browser


def authorize(instance: Any, browser: Any, client_id: str, secret: str | None = None) -> str | None:
    """Run the code flow for `client_id` in the signed-in browser; with the secret, also
    exchange the code and return the ID token."""
    verifier, challenge = pkce_pair()
    response = browser.get("/authorize", query_string={
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
        "scope": "openid", "state": "st", "nonce": "n", "code_challenge": challenge,
        "code_challenge_method": "S256"})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    code = query_of(response.headers["Location"])["code"]
    if secret is None:
        return None
    tokens = browser.post("/token", data={"grant_type": "authorization_code", "code": code,
                                          "redirect_uri": REDIRECT, "code_verifier": verifier},
                          auth=(client_id, secret))
    assert tokens.status_code == 200, tokens.get_data(as_text=True)
    return tokens.json["id_token"]


def current_sid(instance: Any, username: str = "canbo") -> str:
    from sqlalchemy import select

    from identity.models import SsoSession, User

    with instance.services.database.session() as session:
        return session.scalar(select(SsoSession.sid).join(User, User.id == SsoSession.user_id)
                              .where(User.username == username, SsoSession.ended_at.is_(None))
                              .order_by(SsoSession.created_at.desc()).limit(1))


def outbox(instance: Any) -> list[Any]:
    from sqlalchemy import select

    from identity.models import LogoutNotification

    with instance.services.database.session() as session:
        return list(session.scalars(select(LogoutNotification).order_by(LogoutNotification.id)))


def dispatcher_of(instance: Any) -> Any:
    return instance.app.extensions["congvu.logout"]
