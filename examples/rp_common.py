"""What the two example applications share: signing in and out through OpenID Connect.

Each application (`van_ban/`, `mot_cua/`) is only its own page; signing in and out lives
here because both integrate with the provider in exactly the same way, with nothing
specific to congvu:

- authlib's Flask client: discovery, the code flow with PKCE (S256), the ID token checked
  against the provider's JWKS (signature, iss, aud, exp, nonce), userinfo for name and groups;
- RP-initiated logout: the provider's end_session_endpoint with id_token_hint and a
  registered post_logout_redirect_uri;
- OpenID Connect Back-Channel Logout 1.0: the provider POSTs a signed logout token naming
  its session (`sid`). That request comes from the provider, not from the browser, so it
  carries no cookie: the application keeps its sessions server-side, indexed by `sid`, and
  ends the ones the token names.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.base_client import OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Flask, Response, abort, jsonify, redirect, render_template, request, session, url_for
from jinja2 import DictLoader
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# Accepted whatever a token's header says: never "none", never an HMAC keyed with a public key
# (authlib advisories CVE-2024-37568, CVE-2026-27962: always pass the algorithms explicitly).
ACCEPTED_ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA"]
LOGOUT_TOKEN_TYPES = {"logout+jwt", "application/logout+jwt"}
CLOCK_LEEWAY = 60  # seconds the provider's clock and ours may differ
SCOPE = "openid profile email groups"

log = logging.getLogger("examples.rp")


@dataclass(frozen=True)
class Settings:
    """Where the provider is and who this application is, read from the environment:
    CONGVU_ISSUER, and PREFIX_CLIENT_ID, PREFIX_CLIENT_SECRET, PREFIX_PORT, PREFIX_BASE_URL."""

    prefix: str
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    port: int
    base_url: str

    @classmethod
    def from_environ(cls, prefix: str, *, default_client_id: str, default_port: int,
                     environ: Mapping[str, str] = os.environ) -> Settings:
        secret = environ.get(f"{prefix}_CLIENT_SECRET")
        if not secret:
            raise SystemExit(f"{prefix}_CLIENT_SECRET is not set: `congvu client add` printed it "
                             "(see examples/README.md)")
        port = int(environ.get(f"{prefix}_PORT", default_port))
        return cls(prefix=prefix, issuer=environ.get("CONGVU_ISSUER", "http://127.0.0.1:5000").rstrip("/"),
                   client_id=environ.get(f"{prefix}_CLIENT_ID", default_client_id),
                   client_secret=secret, port=port,
                   base_url=environ.get(f"{prefix}_BASE_URL", f"http://127.0.0.1:{port}").rstrip("/"))

    @property
    def cookie_name(self) -> str:
        # Cookies ignore the port: two applications on 127.0.0.1 need two names.
        return f"{self.prefix.lower()}_session"


# -- this application's sessions ----------------------------------------------------------
@dataclass
class SignedIn:
    """One browser signed in to this application."""

    sub: str
    sid: str | None  # the provider's session (ID token `sid`): what a logout token names
    name: str
    username: str
    groups: list[str]
    id_token: str = field(repr=False)  # sent back as id_token_hint when signing out
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)


class LocalSessions:
    """Server-side sessions: the browser's cookie holds only a random key, and the provider's
    `sid` finds every key signed in under it.

    In memory behind a lock, which suits one process. An application with several workers
    keeps this in its database or Redis: the back-channel request may reach any worker.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, SignedIn] = {}
        self._keys_by_sid: dict[str, set[str]] = {}

    def start(self, signed_in: SignedIn) -> str:
        key = secrets.token_urlsafe(32)
        with self._lock:
            self._by_key[key] = signed_in
            if signed_in.sid:
                self._keys_by_sid.setdefault(signed_in.sid, set()).add(key)
        return key

    def get(self, key: str | None) -> SignedIn | None:
        if not key:
            return None
        with self._lock:
            return self._by_key.get(key)

    def end(self, key: str) -> None:
        with self._lock:
            self._forget(key)

    def end_provider_session(self, *, sid: str | None, sub: str | None) -> int:
        """End the sessions a logout token names: those under `sid` (and of `sub`, when both
        are given), or every session of `sub` when it names no `sid`. Returns how many."""
        with self._lock:
            if sid:
                keys = [key for key in self._keys_by_sid.get(sid, ())
                        if sub is None or self._by_key[key].sub == sub]
            elif sub:
                keys = [k for k, signed_in in self._by_key.items() if signed_in.sub == sub]
            else:
                keys = []
            for key in keys:
                self._forget(key)
            return len(keys)

    def all(self) -> list[SignedIn]:
        """Every open session (for an operator's page, or a test)."""
        with self._lock:
            return list(self._by_key.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_key)

    def _forget(self, key: str) -> None:
        signed_in = self._by_key.pop(key, None)
        if signed_in is not None and signed_in.sid:
            keys = self._keys_by_sid.get(signed_in.sid, set())
            keys.discard(key)
            if not keys:
                self._keys_by_sid.pop(signed_in.sid, None)


# -- Back-Channel Logout 1.0, section 2.6 ------------------------------------------------
class LogoutTokenError(Exception):
    """A logout token this application refuses. The message names the rule it broke and is
    safe to log and to answer: it never quotes the token."""


def check_logout_token(token: str, jwks: Callable[[bool], dict[str, Any]], *, issuer: str,
                       client_id: str, algorithms: list[str] = ACCEPTED_ALGORITHMS,
                       now: float | None = None) -> dict[str, Any]:
    """Validate a logout token as Back-Channel Logout 1.0 §2.6 says; return its claims.

    `jwks(force)` returns the provider's key set; it is asked again with force=True when the
    token names a key the cached set lacks (the provider rotated its keys).
    """
    now = time.time() if now is None else now
    try:
        header = jws.extract_compact(token.encode()).headers()  # read before trusting, for typ only
    except (JoseError, ValueError, UnicodeError) as error:
        raise LogoutTokenError("not a signed JWT") from error
    # Explicit typing keeps an ID token or access token from passing for a logout token.
    if str(header.get("typ", "")).lower() not in LOGOUT_TOKEN_TYPES:
        raise LogoutTokenError("typ is not logout+jwt")
    # 2. The signature, by the provider's published key, with our own list of algorithms.
    try:
        try:
            verified = jwt.decode(token, KeySet.import_key_set(jwks(False)), algorithms=algorithms)
        except InvalidKeyIdError:
            verified = jwt.decode(token, KeySet.import_key_set(jwks(True)), algorithms=algorithms)
    except BadSignatureError as error:
        raise LogoutTokenError("bad signature") from error
    except (JoseError, ValueError) as error:
        raise LogoutTokenError("signature cannot be verified (unknown key or algorithm)") from error
    claims = verified.claims
    # 3. iss, aud, iat and exp, as for an ID token.
    if claims.get("iss") != issuer:
        raise LogoutTokenError("wrong issuer")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    if client_id not in audiences:
        raise LogoutTokenError("wrong audience")
    issued_at, expires_at = claims.get("iat"), claims.get("exp")
    if not isinstance(issued_at, int | float) or issued_at > now + CLOCK_LEEWAY:
        raise LogoutTokenError("iat missing or in the future")
    if not isinstance(expires_at, int | float) or expires_at < now - CLOCK_LEEWAY:
        raise LogoutTokenError("expired (or no exp)")
    # 4. It names a session, a subject, or both.
    sid, sub = claims.get("sid"), claims.get("sub")
    if sid is None and sub is None:
        raise LogoutTokenError("neither sid nor sub")
    if any(value is not None and not (isinstance(value, str) and value) for value in (sid, sub)):
        raise LogoutTokenError("sid or sub is not a string")
    # 5. The back-channel logout event, an object.
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
        raise LogoutTokenError("events lacks the back-channel logout event")
    # 6. No nonce: that is an ID token's claim.
    if "nonce" in claims:
        raise LogoutTokenError("nonce present")
    if not isinstance(claims.get("jti"), str):
        raise LogoutTokenError("jti missing")
    # 7. (optional) A replayed jti is not refused: it can only end sessions that already ended.
    return claims


# -- the application ---------------------------------------------------------------------
LAYOUT = """<!doctype html>
<html lang="vi"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
 body{font-family:system-ui,sans-serif;margin:0;color:#1c2430}
 header{background:{{ colour }};color:#fff;padding:.8rem 1.5rem;display:flex;align-items:center;gap:1rem}
 header h1{font-size:1.25rem;margin:0;flex:1} header button{font:inherit;cursor:pointer}
 main{max-width:46rem;margin:1.5rem auto;padding:0 1rem}
 dl{display:grid;grid-template-columns:9rem 1fr;gap:.3rem 1rem} dt{font-weight:600}
 table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:.35rem;border-bottom:1px solid #dde}
 .button{display:inline-block;background:{{ colour }};color:#fff;padding:.5rem 1rem;border-radius:.3rem;
  text-decoration:none} .notice{background:#eef6ee;padding:.5rem 1rem;border-radius:.3rem}
</style></head>
<body><header><h1>{{ title }}</h1>
{% if user %}<span>{{ user.name }}</span>
<form method="post" action="{{ url_for('sign_out') }}">
<input type="hidden" name="csrf" value="{{ user.csrf }}">
<button type="submit" id="sign-out">Đăng xuất</button></form>{% endif %}
</header>
<main data-state="{{ 'signed-in' if user else 'signed-out' }}">
{% if error %}<h2>Không đăng nhập được</h2><p>{{ error }}</p>
<p><a class="button" href="{{ url_for('home') }}">Về trang chủ</a></p>
{% elif user %}
<section><h2>Cán bộ đang đăng nhập</h2><dl>
 <dt>Họ và tên</dt><dd id="official-name">{{ user.name }}</dd>
 <dt>Tài khoản</dt><dd id="official-username">{{ user.username }}</dd>
 <dt>Nhóm</dt><dd id="official-groups">{{ user.groups | join(", ") or "(không thuộc nhóm nào)" }}</dd>
</dl></section>
{% block content %}{% endblock %}
{% else %}
{% if signed_out %}
<p class="notice">Bạn đã đăng xuất khỏi {{ title }} và khỏi tài khoản công vụ.</p>{% endif %}
<h2>Chưa đăng nhập</h2>
<p>{{ tagline }}</p>
<p><a class="button" id="sign-in" href="{{ url_for('sign_in') }}">Đăng nhập bằng tài khoản công vụ</a></p>
{% endif %}
</main></body></html>"""


def create_relying_party(import_name: str, settings: Settings, *, title: str, tagline: str, colour: str,
                         home_template: str,
                         home_context: Callable[[SignedIn], dict[str, Any]] = lambda _user: {}) -> Flask:
    """A Flask application signed in through the provider; `home_template` extends
    "layout.html" and fills `content`, shown to a signed-in official."""
    app = Flask(import_name)
    # Signs only the short-lived sign-in state (state, nonce, PKCE verifier) that authlib
    # keeps in Flask's cookie; who is signed in lives server-side, in LocalSessions.
    app.secret_key = secrets.token_bytes(32)
    app.config.update(SESSION_COOKIE_NAME=settings.cookie_name, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=settings.base_url.startswith("https:"))
    app.jinja_loader = DictLoader({"layout.html": LAYOUT, "home.html": home_template})
    oauth = OAuth(app)
    provider = oauth.register(
        "congvu", client_id=settings.client_id, client_secret=settings.client_secret,
        server_metadata_url=f"{settings.issuer}/.well-known/openid-configuration",
        client_kwargs={"scope": SCOPE, "code_challenge_method": "S256"},
    )
    sessions = LocalSessions()
    app.extensions["rp.sessions"] = sessions
    page = {"title": title, "tagline": tagline, "colour": colour}

    def signed_in() -> SignedIn | None:
        return sessions.get(session.get("rp_session"))

    @app.get("/")
    def home() -> str:
        user = signed_in()
        return render_template("home.html", user=user, **page, **(home_context(user) if user else {}))

    @app.get("/login")
    def sign_in() -> Response | tuple[str, int]:
        # Also the initiate_login_uri the provider's portal links to (OIDC Core §4): it names
        # the issuer, and a link naming another issuer must not start a sign-in there.
        named_issuer = request.args.get("iss")
        if named_issuer is not None and named_issuer.rstrip("/") != settings.issuer:
            return render_template("layout.html", user=None, error="Nhà cung cấp định danh không đúng.",
                                   **page), 400
        return provider.authorize_redirect(f"{settings.base_url}/callback")

    @app.get("/callback")
    def callback() -> Response | tuple[str, int]:
        try:
            # Checks state and PKCE, then the ID token: signature, iss, aud, exp, nonce.
            token = provider.authorize_access_token()
            claims = token["userinfo"]  # authlib's name for the ID token's validated claims
            info = provider.userinfo(token=token)
        except (OAuthError, JoseError) as error:
            reason = getattr(error, "description", None) or getattr(error, "error", None) or "lỗi giao thức"
            log.warning("sign-in failed: %s", type(error).__name__)
            return render_template("layout.html", user=None, error=reason, **page), 400
        if info.get("sub") != claims["sub"]:  # OIDC Core 5.3.2: userinfo must be about the same person
            return render_template("layout.html", user=None, error="userinfo sub mismatch", **page), 400
        session.clear()
        session["rp_session"] = sessions.start(SignedIn(
            sub=claims["sub"], sid=claims.get("sid"),
            name=info.get("name") or info.get("preferred_username") or claims["sub"],
            username=info.get("preferred_username", ""), groups=sorted(info.get("groups") or []),
            id_token=token["id_token"]))
        return redirect(url_for("home"))

    @app.post("/logout")
    def sign_out() -> Response:
        key = session.get("rp_session")
        user = sessions.get(key)
        if user is None:
            return redirect(url_for("home"), 303)
        if not hmac.compare_digest(request.form.get("csrf", ""), user.csrf):
            abort(400)  # a cross-site form must not sign an official out
        sessions.end(key)
        session.clear()
        # The provider ends its session and tells every other application (back-channel).
        return provider.logout_redirect(post_logout_redirect_uri=f"{settings.base_url}/signed-out",
                                        id_token_hint=user.id_token)

    @app.get("/signed-out")
    def signed_out() -> str | Response:
        try:
            provider.validate_logout_response()  # the state we sent: this sign-out was ours
        except OAuthError:
            return redirect(url_for("home"))
        return render_template("home.html", user=None, signed_out=True, **page)

    @app.post("/backchannel-logout")
    def backchannel_logout() -> tuple[Response, int]:
        try:
            claims = check_logout_token(request.form.get("logout_token", ""), provider.fetch_jwk_set,
                                        issuer=settings.issuer, client_id=settings.client_id)
        except LogoutTokenError as error:
            log.warning("logout token refused: %s", error)
            response = jsonify(error="invalid_request", error_description=str(error))
            response.headers["Cache-Control"] = "no-store"
            return response, 400
        ended = sessions.end_provider_session(sid=claims.get("sid"), sub=claims.get("sub"))
        log.info("back-channel logout ended %d local session(s)", ended)
        return Response(headers={"Cache-Control": "no-store"}), 200

    return app
