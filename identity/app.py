"""The Flask application factory."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from flask import Flask, Response, jsonify, request
from flask.sessions import SecureCookieSessionInterface
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from identity.audit.log import AuditLog
from identity.clients import ClientCache
from identity.config import Config, load_config
from identity.credentials import Passwords, SecretHasher
from identity.db import Database
from identity.i18n import init_i18n, language_url
from identity.keystore import DatabaseKeyStore
from identity.mfa import SecondFactors
from identity.oidc.machine_endpoints import MachineEndpoints
from identity.oidc.tokens import TokenService, TokenSettings
from identity.passkeys import Passkeys
from identity.services import Services, end_request_transaction
from identity.throttle import LoginThrottle
from keys.ring import KeyRing

VIETNAM_TIME = timezone(timedelta(hours=7), "ICT")
log = logging.getLogger("congvu")

SECURITY_HEADERS = {
    # frame-ancestors 'none' on every answer: no page of ours can be framed (clickjacking).
    # No form-action: Chromium applies it to the redirect chain after a form post,
    # which would block the final redirect to the relying party.
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                               "object-src 'none'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}



def N_(message: str) -> str:
    """Marks a message for extraction; it is translated where it is shown."""
    return message


SCOPE_LABELS = {
    "openid": N_("Your identity (a stable identifier)"),
    "profile": N_("Your name and username"),
    "email": N_("Your official e-mail address"),
    "phone": N_("Your phone number"),
    "offline_access": N_("Access while you are signed out"),
    "groups": N_("Your units and groups"),
    "mail.send": N_("Send official mail in your name"),
}


class SecurityHeaders:
    """WSGI middleware adding SECURITY_HEADERS to every answer, and `no-store` to pages.

    Written as middleware rather than an after_request hook because werkzeug's header
    object costs tens of microseconds per header operation, on every request including
    the token endpoint's hot path; here it is one pass over a list.
    """

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response: Any) -> Any:
        def add_headers(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            present = {name.lower(): value for name, value in headers}
            for name, value in SECURITY_HEADERS.items():
                if name.lower() not in present:
                    headers.append((name, value))
            if present.get("content-type", "").startswith("text/html") and (
                    "cache-control" not in present):
                headers.append(("Cache-Control", "no-store"))
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, add_headers)


class FastSessionInterface(SecureCookieSessionInterface):
    """Flask builds a new signing serializer (and its HMAC key) on every request; the
    key never changes for an app, so build it once."""

    def get_signing_serializer(self, app: Flask):  # type: ignore[no-untyped-def]
        cached = getattr(self, "_serializer", None)
        if cached is None or cached[0] != app.secret_key:
            cached = self._serializer = (app.secret_key, super().get_signing_serializer(app))
        return cached[1]


def build_services(config: Config) -> Services:
    database = Database(config.database_url)
    keyring = KeyRing(DatabaseKeyStore(database), config.master_key,
                      cache_seconds=config["keys.cache_seconds"])
    tokens = TokenService(keyring, TokenSettings(
        issuer=config.issuer, access_token_ttl=config["tokens.access_token_ttl"],
        id_token_ttl=config["tokens.id_token_ttl"],
        refresh_token_ttl=config["tokens.refresh_token_ttl"]))
    return Services(config=config, database=database, keyring=keyring, tokens=tokens,
                    client_cache=ClientCache(config["clients.cache_seconds"]),
                    audit=AuditLog(database, config.master_key,
                                   checkpoint_every=config["audit.checkpoint_every"],
                                   checkpoint_seconds=config["audit.checkpoint_seconds"]),
                    secret_hasher=SecretHasher(config.master_key.derive("client-secret-pepper")),
                    passwords=Passwords(config.password_hash_policy),
                    mfa=SecondFactors(config.master_key,
                                      SecretHasher(config.master_key.derive("recovery-code-pepper")),
                                      issuer_name=config["mfa_issuer_name"],
                                      window_steps=config.mfa_policy.totp_window_steps),
                    throttle=LoginThrottle(config.lockout_policy),
                    passkeys=Passkeys(config.issuer, rp_name=config["mfa_issuer_name"]),
                    directories=build_directories(config))


def build_directories(config: Config) -> dict[str, Any]:
    """One LdapDirectory per `[directories.<name>]`; they connect on first use."""
    if not config.directories:
        return {}
    from identity.directory.ldap import LdapDirectory

    return {settings.name: LdapDirectory(settings) for settings in config.directories}


def prepare_instance(services: Services) -> None:
    """Migrate the schema and make the first keys. Run once, before workers start
    (`congvu db upgrade`, `congvu serve`, `congvu demo`), never by each worker."""
    services.database.upgrade()
    for record in services.keyring.ensure_initialised(services.config["signing_alg"]):
        services.audit.append("key.generated", "success", target=record.kid,
                              details={"alg": record.alg, "state": record.state})
    record_policy_change(services)


def record_policy_change(services: Services, actor: str = "startup") -> None:
    """Policies come from the configuration file; when the ones starting now differ from
    the last recorded, the audit log gets a `policy.changed` record with the new values."""
    from sqlalchemy import select

    from identity.audit.chain import canonical
    from identity.audit.log import events_table

    policies = services.config.policies()
    digest = hashlib.sha256(canonical(policies)).hexdigest()
    with services.database.engine.connect() as connection:
        last = connection.execute(select(events_table.c.details)
                                  .where(events_table.c.event == "policy.changed")
                                  .order_by(events_table.c.seq.desc()).limit(1)).scalar()
    if isinstance(last, dict) and last.get("digest") == digest:
        return
    # As one JSON text: the audit log hashes values under secret-like key names
    # ("password", "max_code_attempts"), and these are settings to be read, not secrets.
    services.audit.append("policy.changed", "success", actor_username=actor, target="policies",
                          details={"digest": digest, "values": canonical(policies).decode()})


def start_logout_dispatcher(app: Flask, services: Services) -> None:
    """Back-channel logout (identity/oidc/logout.py): this app's dispatcher, woken by every
    commit that ends a session. Its background thread (retries, the timeout sweep) starts
    with the first request of each worker process, so that it runs after gunicorn forks;
    not under app.testing, where tests start it themselves."""
    from identity.oidc.logout import LogoutDispatcher

    dispatcher = app.extensions["congvu.logout"] = LogoutDispatcher(services).attach()
    if not services.config["logout.background_worker"]:
        return

    @app.before_request
    def _start_logout_thread() -> None:
        if not app.testing:
            dispatcher.start_background()


def create_app(config: Config | None = None, *, prepare: bool = False, **overrides: Any) -> Flask:
    if config is None:  # otherwise whoever loaded the config has shown its warnings
        config = load_config(overrides=overrides or None)
        for warning in config.warnings:
            log.warning("insecure setting: %s", warning)
    services = build_services(config)
    if prepare:
        prepare_instance(services)
    else:
        # Started straight by a WSGI server (`gunicorn wsgi:app`) after an edited
        # configuration: its policies still reach the audit log. (Workers starting
        # together may each record the same change once.)
        try:
            record_policy_change(services)
        except SQLAlchemyError:
            log.warning("policies not recorded in the audit log: the database is not ready "
                        "(run `congvu db upgrade`)")

    app = Flask("identity", instance_path=str(config.data_dir))
    app.extensions["congvu"] = services
    start_logout_dispatcher(app, services)
    secure = config["secure_cookies"]
    app.config.update(
        SECRET_KEY=config.master_key.derive("flask-session"),
        SESSION_COOKIE_NAME="__Host-congvu_flow" if secure else "congvu_flow",
        SESSION_COOKIE_SECURE=secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_PATH="/",
        WTF_CSRF_TIME_LIMIT=None,  # bound to the session instead; a slow reader is no threat
        WTF_CSRF_SSL_STRICT=False,  # SameSite=Lax cookies and tokens already bind the origin
        # No page shows WTForms' own field messages (views flash their own, translated), and
        # Flask-WTF would look for and load WTForms' catalog from disk on every request that
        # builds a form: about a fifth of a millisecond each (bench/run_login.py).
        WTF_I18N_ENABLED=False,
        MAX_CONTENT_LENGTH=1024 * 1024,
        JSON_AS_ASCII=False,
    )
    app.session_interface = FastSessionInterface()
    app.wsgi_app = SecurityHeaders(MachineEndpoints(app, app.wsgi_app))  # type: ignore[method-assign]
    if config["trusted_proxy_count"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config["trusted_proxy_count"],
                                x_proto=config["trusted_proxy_count"])  # type: ignore[method-assign]

    init_i18n(app, config.data_dir)
    csrf = CSRFProtect(app)

    from identity.account import bp as account_bp
    from identity.admin_api import bp as admin_bp
    from identity.audit.console import bp as audit_console_bp
    from identity.login import bp as login_bp
    from identity.oidc import views as oidc_views
    from identity.oidc.server import build_authorization_server

    oauth_server, _protector = build_authorization_server(app)
    app.extensions["congvu.oauth"] = oauth_server
    app.register_blueprint(oidc_views.bp)
    app.register_blueprint(login_bp)
    app.register_blueprint(account_bp)
    app.register_blueprint(audit_console_bp)
    from identity.audit.quarantine_console import bp as quarantine_console_bp

    app.register_blueprint(quarantine_console_bp)  # /audit/quarantine: mail held by the policy
    app.register_blueprint(admin_bp)
    from identity.audit.session_console import bp as session_console_bp
    from identity.portal import bp as portal_bp

    app.register_blueprint(portal_bp)
    app.register_blueprint(session_console_bp)
    csrf.exempt(admin_bp)
    # Machine endpoints: called by relying parties with their own credentials, not by a
    # browser form of ours, so they carry no CSRF token.
    for view in (oidc_views.token, oidc_views.userinfo, oidc_views.introspect, oidc_views.revoke):
        csrf.exempt(view)

    @app.template_filter("isotime")
    def _isotime(epoch: float) -> str:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    @app.template_filter("localtime")
    def _localtime(epoch: float) -> str:
        # Viet Nam keeps UTC+7 all year (no daylight saving), so no tz database is needed.
        return datetime.fromtimestamp(epoch, VIETNAM_TIME).strftime("%d/%m/%Y %H:%M")

    @app.template_filter("rfc3339_local")
    def _rfc3339_local(stamp: str) -> str:
        moment = datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        return moment.astimezone(VIETNAM_TIME).strftime("%d/%m/%Y %H:%M:%S")

    @app.context_processor
    def _template_helpers() -> dict[str, Any]:
        def lang_url(code: str) -> str:
            return language_url(request.path, request.args.to_dict(), code)

        return {"current_locale": str(get_locale() or "vi"), "lang_url": lang_url,
                "scope_label": lambda scope: _(SCOPE_LABELS.get(scope, scope))}

    @app.after_request
    def _finish(response: Response) -> Response:
        end_request_transaction(commit=True)
        return response

    @app.teardown_request
    def _rollback(_error: BaseException | None) -> None:
        # Both only act if after_request did not run (an error): the request's work is
        # undone, what it recorded for the audit log is still written.
        end_request_transaction(commit=False)

    @app.errorhandler(CSRFError)
    def _csrf_error(_error: CSRFError) -> Response:
        from identity.oidc.views import error_page

        return error_page(_("This form has expired"),
                          _("Please go back, reload the page and try again."), 400)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        if request.path.startswith("/admin/api/"):
            return jsonify(error="not_found" if error.code == 404 else "invalid_request",
                           error_description=error.description), error.code or 500
        from identity.oidc.views import error_page

        titles = {404: _("Page not found"), 413: _("Request too large")}
        return error_page(titles.get(error.code or 500, _("Request not served")),
                          _("The address may be mistyped, or the page no longer exists.")
                          if error.code == 404 else _("The request could not be served."),
                          error.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # Logged for operators with its traceback; the person sees a plain page.
        log.exception("unhandled error on %s %s", request.method, request.path)
        from identity.oidc.views import error_page

        if request.path.startswith(("/token", "/introspect", "/revoke", "/userinfo", "/admin/api/")):
            return jsonify(error="server_error"), 500
        return error_page(_("Something went wrong"),
                          _("The service could not complete this request. Please try again."), 500)

    return app
