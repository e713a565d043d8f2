"""`congvu`: the command line for operators and scripts.

Every command takes the instance folder from `--data DIR` or `CONGVU_DATA_DIR`
(default ./instance); every command that prints data accepts `--json`. Passwords are
read from standard input (`--password-stdin`), never from an argument, so they stay
out of shell history and `ps`.
"""

from __future__ import annotations

import gc
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from identity.config import ConfigError, load_config, settings_reference_markdown


class Context:
    def __init__(self, data_dir: str | None) -> None:
        self.data_dir = data_dir
        self._services = None
        self._logout: Any = None

    @property
    def services(self):  # type: ignore[no-untyped-def]
        if self._services is None:
            from identity.app import build_services

            try:
                config = load_config(self.data_dir)
            except ConfigError as error:
                raise click.ClickException(f"invalid setting {error}") from None
            for warning in config.warnings:
                click.secho(f"warning: {warning}", fg="yellow", err=True)
            self._services = build_services(config)
            from identity.oidc.logout import LogoutDispatcher

            # A command that ends sessions (user disable, set-password, logout, directory
            # sync) tells their applications as it commits; close() waits for those sends.
            self._logout = LogoutDispatcher(self._services).attach()
        return self._services

    def record(self, event: str, target: str | None = None, **details: Any) -> None:
        """Audit an operator's change made from this command line, after it committed.
        The actor is the operating-system account that ran the command."""
        self.services.audit.append(event, "success", actor_username=f"cli:{_os_user()}",
                                   target=target, details=details or None)

    def close(self) -> None:
        """Release the database connections a command opened."""
        if self._logout is not None:
            # Back-channel logouts this command caused: sent before exiting, each bounded by
            # its timeout; what fails is retried by the app processes (or `logout dispatch`).
            self._logout.wait_idle(timeout=2 * self._logout.timeout + 5)
            self._logout.stop()
            self._logout = None
        if self._services is not None:
            self._services.database.dispose()
            for directory in self._services.directories.values():
                directory.close()


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        return str(os.getuid())


pass_context = click.make_pass_decorator(Context)


def emit(data: Any, as_json: bool, human: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
    elif human is not None:
        click.echo(human)
    elif isinstance(data, list):
        for row in data:
            click.echo("  ".join(f"{k}={v}" for k, v in row.items()))
    else:
        for key, value in data.items():
            click.echo(f"{key}: {value}")


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def read_password_stdin() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise click.ClickException("no password on standard input")
    return password


class _Main(click.Group):
    """Database failures (server unreachable, schema missing) end with a one-line
    message, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import DBAPIError

        try:
            return super().invoke(ctx)
        except DBAPIError as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            raise click.ClickException(
                f"database: {reason} (is the database reachable, and has "
                "`congvu db upgrade` been run?)") from None


@click.group(cls=_Main)
@click.option("--data", "data_dir", envvar="CONGVU_DATA_DIR", default=None,
              help="Instance folder: database, keys, congvu.toml (env CONGVU_DATA_DIR).")
@click.pass_context
def main(ctx: click.Context, data_dir: str | None) -> None:
    """congvu: the province's sign-in and official-mail platform."""
    ctx.obj = Context(data_dir)
    ctx.call_on_close(ctx.obj.close)


# -- running ----------------------------------------------------------------------------
# The access line: client, method, path (never the query: authorization answers carry
# codes), status, bytes, milliseconds.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(M)sms'


def _access_logger_class():  # type: ignore[no-untyped-def]
    """gunicorn's logger, with the access line's fields taken straight from the request.
    Its own `atoms` builds some twenty fields, every request and response header among
    them, and formats the time, for each line: about a fifth of gunicorn's own CPU per
    request here, for the six fields ACCESS_LOG_FORMAT shows."""
    from gunicorn.glogging import Logger

    class AccessLogger(Logger):  # type: ignore[misc]
        def atoms(self, resp, req, environ, request_time):  # type: ignore[no-untyped-def]
            status = resp.status
            sent = getattr(resp, "sent", None)
            return {"h": environ.get("REMOTE_ADDR", "-"), "m": environ.get("REQUEST_METHOD"),
                    "U": environ.get("PATH_INFO"),
                    "s": status.split(None, 1)[0] if isinstance(status, str) else status,
                    "b": "-" if sent is None else str(sent),
                    "M": request_time.seconds * 1000 + request_time.microseconds // 1000}

    return AccessLogger


def _run_gunicorn(app_factory, bind: str, workers: int, worker_class: str = "sync",  # type: ignore[no-untyped-def]
                  threads: int = 4) -> None:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", bind)
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", worker_class)
            if worker_class == "gthread":
                self.cfg.set("threads", threads)
            self.cfg.set("accesslog", "-")
            self.cfg.set("access_log_format", ACCESS_LOG_FORMAT)
            self.cfg.set("logger_class", _access_logger_class())

        def load(self):  # type: ignore[no-untyped-def]
            app = app_factory()
            # The app's own objects (SQLAlchemy's metadata, templates, catalogs) live as long
            # as the worker: frozen, the collector's full passes no longer walk them (one
            # such pass took over 100 ms every few thousand sign-ins).
            gc.collect()
            gc.freeze()
            return app

    Server().run()


@main.command()
@click.option("--bind", default="127.0.0.1:5000", show_default=True)
@click.option("--workers", default=lambda: 2 * (os.cpu_count() or 1), show_default="2 × cores",
              type=click.IntRange(1, 256))
@click.option("--worker-class", type=click.Choice(["sync", "gthread"]), default="sync",
              show_default=True,
              help="sync: most requests per CPU (measured in bench/); put a buffering reverse "
                   "proxy in front. gthread: keep-alive and slow clients without a proxy.")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Threads per worker, with --worker-class gthread.")
@pass_context
def serve(obj: Context, bind: str, workers: int, worker_class: str, threads: int) -> None:
    """Run the identity server under gunicorn (migrates and makes keys first)."""
    from identity.app import create_app, prepare_instance

    prepare_instance(obj.services)
    config = obj.services.config
    _run_gunicorn(lambda: create_app(config), bind, workers, worker_class, threads)


@main.command()
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@pass_context
def demo(obj: Context, port: int) -> None:
    """The whole platform on embedded defaults, on 127.0.0.1, with demo accounts and the
    example applications' clients registered (identity/demo.py)."""
    os.environ.setdefault("CONGVU_ISSUER", f"http://127.0.0.1:{port}")
    if obj.data_dir is None:
        obj.data_dir = os.path.abspath("instance/demo")
    from identity.app import create_app, prepare_instance
    from identity.demo import DEMO_PASSWORD, demo_applications, prepare_demo

    services = obj.services
    prepare_instance(services)
    applications = demo_applications()
    client_secrets = prepare_demo(services, applications)
    issuer = services.config.issuer
    mail_command = (f"CONGVU_ISSUER={issuer} CONGVU_MAILGW__SUBMISSION_PORT=2587 "
                    f"CONGVU_MAILGW__SMTPS_PORT=2465 .venv/bin/congvu --data {services.config.data_dir} "
                    "mailgw serve")
    starts = "\n".join(f"  # {app.name}: {app.base_url}/\n"
                       f"  {app.start_command(issuer, client_secrets[app.client_id])}"
                       for app in applications)
    click.echo(f"""
congvu demo — the identity provider on embedded defaults (SQLite, generated keys)
  data folder      {services.config.data_dir}
  issuer           {issuer}
  discovery        {issuer}/.well-known/openid-configuration
  sign-in page     {issuer}/login
  portal           {issuer}/portal
  official         canbo.demo / {DEMO_PASSWORD}
  administrator    quantri.demo / {DEMO_PASSWORD}

The example applications are registered (new client secrets at every start). Run each in a
terminal of its own, from the repository root, then open it; examples/README.md walks
through single sign-on and single logout with "Quản lý văn bản" and "Một cửa":
{starts}

The official-mail gateway, in a terminal of its own (ports above 1024, so no root; with no
relay set, accepted mail stays in the queue: `congvu mailgw queue list`). Send as
canbo.demo: `swaks --server 127.0.0.1:2587 --tls --auth PLAIN --auth-user canbo.demo
--from canbo-demo@phutho.gov.vn --to lan@phutho.gov.vn` (it asks for the password):
  {mail_command}
""")
    config = services.config
    # gthread: a browser talks to the demo directly, with keep-alive and no proxy in front.
    _run_gunicorn(lambda: create_app(config), f"127.0.0.1:{port}", workers=2,
                  worker_class="gthread")


# -- database and configuration ---------------------------------------------------------
@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_context
def db_upgrade(obj: Context) -> None:
    """Apply migrations and create the first signing keys."""
    from identity.app import prepare_instance

    prepare_instance(obj.services)
    click.echo("database is up to date")


@main.group()
def config() -> None:
    """Configuration."""


@config.command("check")
@pass_context
def config_check(obj: Context) -> None:
    """Validate the settings and print the insecure ones."""
    click.echo(f"configuration is valid (issuer {obj.services.config.issuer})")


@config.command("docs")
def config_docs() -> None:
    """Print the configuration reference (docs/configuration.md)."""
    click.echo(settings_reference_markdown())


# -- users --------------------------------------------------------------------------------
@main.group()
def user() -> None:
    """Local accounts."""


@user.command("add")
@click.argument("username")
@click.option("--name", default="")
@click.option("--email", default=None)
@click.option("--phone", default=None)
@click.option("--group", "groups", multiple=True)
@click.option("--admin", is_flag=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@json_option
@pass_context
def user_add(obj: Context, username: str, name: str, email: str | None, phone: str | None,
             groups: tuple[str, ...], admin: bool, password_stdin: bool, as_json: bool) -> None:
    from identity.accounts import AccountError, create_user, describe_user

    password = read_password_stdin() if password_stdin else None
    try:
        with obj.services.database.session() as session:
            created = create_user(session, obj.services.passwords, username=username,
                                  password=password, name=name, email=email, phone_number=phone,
                                  groups=list(groups), is_admin=admin)
            described = describe_user(created)
    except AccountError as error:
        raise click.ClickException(str(error)) from None
    obj.record("admin.user.created", username, sub=described["sub"], is_admin=admin,
               groups=list(groups))
    emit(described, as_json)


@user.command("list")
@json_option
@pass_context
def user_list(obj: Context, as_json: bool) -> None:
    from identity.accounts import describe_user
    from identity.models import User

    with obj.services.database.session() as session:
        query = select(User).options(selectinload(User.groups)).order_by(User.username)
        users = [describe_user(u) for u in session.scalars(query)]
    emit(users, as_json, "\n".join(
        f"{u['username']:<24} {u['name']:<32} {'disabled' if u['disabled'] else 'active'}"
        for u in users) or "(no users)")


def _with_user(obj: Context, username: str, action) -> dict:  # type: ignore[no-untyped-def]
    from identity.accounts import describe_user, find_user

    with obj.services.database.session() as session:
        found = find_user(session, username)
        if found is None:
            raise click.ClickException(f"no user {username!r}")
        action(session, found)
        return describe_user(found)


@user.command("show")
@click.argument("username")
@json_option
@pass_context
def user_show(obj: Context, username: str, as_json: bool) -> None:
    emit(_with_user(obj, username, lambda s, u: None), as_json)


@user.command("disable")
@click.argument("username")
@json_option
@pass_context
def user_disable(obj: Context, username: str, as_json: bool) -> None:
    """Disable an account: it can no longer sign in; its sessions and tokens end now."""
    from identity.accounts import set_disabled

    ended: list[str] = []
    described = _with_user(obj, username, lambda s, u: ended.extend(set_disabled(s, u, True)))
    obj.record("account.disabled", username, sub=described["sub"],
               **({"sessions_ended": ended} if ended else {}))
    emit(described, as_json)


@user.command("enable")
@click.argument("username")
@json_option
@pass_context
def user_enable(obj: Context, username: str, as_json: bool) -> None:
    from identity.accounts import set_disabled

    described = _with_user(obj, username, lambda s, u: set_disabled(s, u, False))
    obj.record("account.enabled", username, sub=described["sub"])
    emit(described, as_json)


@user.command("unlock")
@click.argument("username")
@pass_context
def user_unlock(obj: Context, username: str) -> None:
    """Lift a brute-force lock (temporary, or past the hard cap) from an account."""
    from identity.accounts import find_user

    with obj.services.database.session() as session:
        found = find_user(session, username)
        if found is None:
            raise click.ClickException(f"no user {username!r}")
        was_locked = obj.services.throttle.unlock(session, found.username)
    obj.record("account.unlocked", found.username, sub=found.sub, was_locked=was_locked)
    click.echo(f"{found.username} unlocked" if was_locked else f"{found.username} was not locked")


@user.command("sessions")
@click.argument("username")
@json_option
@pass_context
def user_sessions(obj: Context, username: str, as_json: bool) -> None:
    """The user's open sessions: sid, times, address, browser, applications."""
    from identity import session_admin

    def describe(session, user):  # type: ignore[no-untyped-def]
        rows = session_admin.active_sessions(session, user, obj.services.config.session_policy)
        return session_admin.describe_sessions(session, rows)

    rows = _in_user(obj, username, describe)
    stamp = lambda epoch: time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))  # noqa: E731
    emit(rows, as_json, "\n".join(
        f"{r['sid']}  {stamp(r['created_at'])}  {stamp(r['last_seen_at'])}  {r['ip'] or '-':<15}  "
        f"{', '.join(r['applications']) or '-'}  {r['user_agent'] or ''}" for r in rows)
        or "(no open sessions)")


@user.command("logout")
@click.argument("username")
@click.option("--sid", default=None, help="End only this session (default: all of them).")
@json_option
@pass_context
def user_logout(obj: Context, username: str, sid: str | None, as_json: bool) -> None:
    """End the user's sessions (or one), with every application's grants and tokens."""
    from identity import session_admin

    ended = _in_user(obj, username, lambda session, user: session_admin.end_sessions(
        session, user, reason="revoked_by_admin", sid=sid))
    if ended is None:
        raise click.ClickException(f"{username} has no open session {sid!r}")
    from identity.audit.log import AuditEntry

    obj.services.audit.append_many([AuditEntry(
        "session.revoked", "success", actor_username=f"cli:{_os_user()}", target=username,
        reason="session.revoked_by_admin", details={"sid": ended_sid}) for ended_sid in ended])
    emit({"username": username, "ended": ended}, as_json, f"{len(ended)} session(s) of {username} ended")


def _in_user(obj: Context, username: str, action):  # type: ignore[no-untyped-def]
    """Run `action(session, user)` in one transaction; its result (not the user) comes back."""
    from identity.accounts import find_user

    with obj.services.database.session() as session:
        found = find_user(session, username)
        if found is None:
            raise click.ClickException(f"no user {username!r}")
        return action(session, found)


@user.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, required=True,
              help="Read the password from standard input (required).")
@pass_context
def user_set_password(obj: Context, username: str, password_stdin: bool) -> None:
    from identity.accounts import set_password
    from identity.sso import end_user_sessions

    password = read_password_stdin()
    ended: list[str] = []
    def reset(session, user):  # type: ignore[no-untyped-def]
        set_password(user, obj.services.passwords, password, session=session,
                     keep_history=obj.services.config.password_policy.history_count)
        # Whoever holds a session under the old password (why passwords get reset) is
        # signed out, and their applications told.
        ended.extend(end_user_sessions(session, user, reason="password_reset"))
        # A reset by an operator also lifts a lock, as NIST's hard cap intends.
        return obj.services.throttle.unlock(session, user.username)

    described = _with_user(obj, username, reset)
    obj.record("password.reset", username, sub=described["sub"],
               **({"sessions_ended": ended} if ended else {}))
    click.echo(f"password of {username} changed")


# -- clients ------------------------------------------------------------------------------
@main.group()
def client() -> None:
    """Relying parties (applications)."""


def client_settings_options(command: Any) -> Any:
    """Access policy and portal options, the same for `client add` and `client set`
    (identity/client_settings.py validates them). Unset options change nothing."""
    options = [
        click.option("--allowed-role", "allowed_roles", multiple=True,
                     type=click.Choice(["admin", "auditor"]),
                     help="Holders of this role may sign in too (repeat for both)."),
        click.option("--require-mfa/--no-require-mfa", "require_mfa", default=None,
                     help="Every sign-in to it needs a second factor (acr urn:congvu:acr:2)."),
        click.option("--description", default=None, help="Shown in the application portal."),
        click.option("--logo-uri", default=None, help="https URL of the portal icon (\"\": none)."),
        click.option("--client-uri", default=None, help="https home page of the application."),
        click.option("--initiate-login-uri", default=None,
                     help="https URL that starts a sign-in at the application (the portal's link)."),
        click.option("--portal/--no-portal", "show_in_portal", default=None,
                     help="List it in the application portal (default: yes)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def client_settings_changes(options: dict[str, Any]) -> dict[str, Any]:
    """The client settings the options given on the command line change."""
    changes = {name: options[name] for name in ("description", "logo_uri", "client_uri",
                                                 "initiate_login_uri", "show_in_portal")
               if options.get(name) is not None}
    if options.get("allowed_roles"):
        changes["allowed_roles"] = list(options["allowed_roles"])
    if options.get("require_mfa") is not None:
        changes["required_acr"] = "urn:congvu:acr:2" if options["require_mfa"] else None
    return changes


@client.command("add")
@click.option("--name", required=True)
@click.option("--redirect-uri", "redirect_uris", multiple=True)
@click.option("--post-logout-redirect-uri", "post_logout", multiple=True)
@click.option("--grant-type", "grant_types", multiple=True,
              type=click.Choice(["authorization_code", "refresh_token", "client_credentials"]))
@click.option("--public", is_flag=True, help="A public client (native or browser app, PKCE).")
@click.option("--auth-method", type=click.Choice(
    ["client_secret_basic", "client_secret_post", "private_key_jwt"]), default=None)
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The client's public keys, for private_key_jwt.")
@click.option("--scope", default=None)
@click.option("--third-party", is_flag=True, help="Show the consent screen to users.")
@click.option("--allowed-group", "allowed_groups", multiple=True,
              help="Only members of this group may sign in to it (repeat for several; none: everyone).")
@click.option("--backchannel-logout-uri", default=None,
              help="Where logout tokens are POSTed when a session ends (Back-Channel Logout 1.0).")
@click.option("--frontchannel-logout-uri", default=None,
              help="Loaded in a hidden frame when the official signs out (Front-Channel Logout 1.0).")
@click.option("--logout-session-required/--no-logout-session-required", "logout_session_required",
              default=True, show_default=True,
              help="The client needs `sid` (and `iss`) in logout tokens and frame URLs.")
@client_settings_options
@json_option
@pass_context
def client_add(obj: Context, name: str, redirect_uris: tuple[str, ...], post_logout: tuple[str, ...],
               grant_types: tuple[str, ...], public: bool, auth_method: str | None,
               jwks_file: str | None, scope: str | None, third_party: bool, allowed_groups: tuple[str, ...],
               backchannel_logout_uri: str | None, frontchannel_logout_uri: str | None,
               logout_session_required: bool, as_json: bool, **settings: Any) -> None:
    """Register a client; prints client_id and, this once, client_secret."""
    from identity.clients import ClientRegistrationError, describe_client, register_client

    jwks = None
    if jwks_file:
        try:
            jwks = json.loads(Path(jwks_file).read_text(encoding="utf-8"))
        except (ValueError, OSError) as error:
            raise click.ClickException(f"jwks: cannot read {jwks_file} as JSON ({error})") from None
    try:
        with obj.services.database.session() as session:
            registered = register_client(
                session, obj.services.secret_hasher, name=name, redirect_uris=list(redirect_uris),
                post_logout_redirect_uris=list(post_logout), grant_types=list(grant_types),
                public=public, auth_method=auth_method, scope=scope, jwks=jwks,
                first_party=not third_party, allowed_groups=list(allowed_groups),
                settings=client_settings_changes(settings),
                backchannel_logout_uri=backchannel_logout_uri,
                backchannel_logout_session_required=logout_session_required,
                frontchannel_logout_uri=frontchannel_logout_uri,
                frontchannel_logout_session_required=logout_session_required)
            data = describe_client(registered.client)
    except ClientRegistrationError as error:
        raise click.ClickException(str(error)) from None
    obj.record("client.created", data["client_id"], **{
        k: data.get(k) for k in ("client_name", "redirect_uris", "grant_types",
                                 "token_endpoint_auth_method", "scope", "allowed_groups", "allowed_roles",
                                 "required_acr")})
    if registered.client_secret:
        data["client_secret"] = registered.client_secret
    emit(data, as_json)


@client.command("list")
@json_option
@pass_context
def client_list(obj: Context, as_json: bool) -> None:
    from identity.clients import describe_client
    from identity.models import Client

    with obj.services.database.session() as session:
        rows = [describe_client(c) for c in session.scalars(select(Client).order_by(Client.name))]
    emit(rows, as_json, "\n".join(f"{c['client_id']:<26} {c['client_name']}" for c in rows)
         or "(no clients)")


def _with_client(obj: Context, client_id: str, action):  # type: ignore[no-untyped-def]
    from identity.models import Client

    with obj.services.database.session() as session:
        found = session.get(Client, client_id)
        if found is None:
            raise click.ClickException(f"no client {client_id!r}")
        return action(session, found)


@client.command("show")
@click.argument("client_id")
@json_option
@pass_context
def client_show(obj: Context, client_id: str, as_json: bool) -> None:
    from identity.clients import describe_client

    emit(_with_client(obj, client_id, lambda s, c: describe_client(c)), as_json)


@client.command("set")
@click.argument("client_id")
@click.option("--allowed-group", "allowed_groups", multiple=True,
              help="Replace the allowed groups (repeat for several).")
@click.option("--open-to-all", is_flag=True, help="Remove every allowed group and role.")
@click.option("--first-party/--third-party", "first_party", default=None,
              help="Third-party clients show the consent screen (remembered until revoked).")
@client_settings_options
@json_option
@pass_context
def client_set(obj: Context, client_id: str, allowed_groups: tuple[str, ...], open_to_all: bool,
               first_party: bool | None, as_json: bool, **settings: Any) -> None:
    """Change a client's access policy and portal items."""
    from identity.client_settings import apply_client_settings
    from identity.clients import ClientRegistrationError, describe_client

    changes = client_settings_changes(settings)
    if allowed_groups:
        changes["allowed_groups"] = list(allowed_groups)
    if open_to_all:
        changes.update(allowed_groups=[], allowed_roles=[])
    if first_party is not None:
        changes["first_party"] = first_party
    if not changes:
        raise click.ClickException("nothing to change (see --help)")
    def change(_session, found):  # type: ignore[no-untyped-def]
        names = apply_client_settings(found, changes)
        return describe_client(found), names

    try:
        data, changed = _with_client(obj, client_id, change)
    except ClientRegistrationError as error:
        raise click.ClickException(str(error)) from None
    obj.record("client.changed", client_id, **{name: data[name] for name in changed})
    emit(data, as_json)


@client.command("rotate-secret")
@click.argument("client_id")
@json_option
@pass_context
def client_rotate_secret(obj: Context, client_id: str, as_json: bool) -> None:
    """Replace the client's secret; the old one stops working at once."""
    from identity.clients import ClientRegistrationError, rotate_secret

    try:
        secret = _with_client(obj, client_id,
                              lambda s, c: rotate_secret(s, obj.services.secret_hasher, c))
    except ClientRegistrationError as error:
        raise click.ClickException(str(error)) from None
    obj.record("client.secret_rotated", client_id)
    emit({"client_id": client_id, "client_secret": secret}, as_json)


@client.command("remove")
@click.argument("client_id")
@pass_context
def client_remove(obj: Context, client_id: str) -> None:
    _with_client(obj, client_id, lambda s, c: s.delete(c))
    obj.record("client.removed", client_id)
    click.echo(f"client {client_id} removed")


# -- single logout ------------------------------------------------------------------------
@main.group()
def logout() -> None:
    """Back-channel logout notifications (identity/oidc/logout.py)."""


@logout.command("dispatch")
@click.option("--every", "every", type=click.IntRange(1, 86400), default=None, metavar="SECONDS",
              help="Keep running (until SIGTERM or Ctrl-C), a pass every SECONDS: for deployments "
                   "that turn the app processes' own thread off (logout.background_worker).")
@json_option
@pass_context
def logout_dispatch(obj: Context, every: int | None, as_json: bool) -> None:
    """End the sessions past their idle or absolute timeout, then send every back-channel
    logout that is due (new ones and retries) and wait for the answers. Safe beside running
    app processes and other dispatchers: each notification is claimed by one of them."""
    import signal
    import threading

    from identity.oidc.logout import dispatch_now, pending_count

    def one_pass() -> None:
        services = obj.services  # builds this command's dispatcher, obj._logout
        sent, delivered = dispatch_now(obj._logout, wait_seconds=2 * obj._logout.timeout + 5)
        with services.database.session() as session:
            left = pending_count(session)
        emit({"sent": sent, "delivered": delivered, "pending": left}, as_json,
             f"{sent} sent, {delivered} delivered, {left} pending (retried later)")

    if every is None:
        one_pass()
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            one_pass()
            stop.wait(every)
    except KeyboardInterrupt:
        pass


# -- keys ---------------------------------------------------------------------------------
@main.group()
def keys() -> None:
    """Token-signing keys."""


def _key_rows(obj: Context) -> list[dict]:
    return [{"kid": r.kid, "alg": r.alg, "state": r.state,
             "created_at": r.created_at, "activated_at": r.activated_at,
             "retired_at": r.retired_at} for r in obj.services.keyring._store.list_keys()]


@keys.command("list")
@json_option
@pass_context
def keys_list(obj: Context, as_json: bool) -> None:
    rows = _key_rows(obj)
    emit(rows, as_json, "\n".join(f"{r['state']:<8} {r['alg']:<6} {r['kid']}" for r in rows)
         or "(no keys: run `congvu db upgrade`)")


@keys.command("rotate")
@click.option("--alg", type=click.Choice(["RS256", "ES256", "EdDSA"]), default=None,
              help="Algorithm of the new next key (signs after the following rotation).")
@json_option
@pass_context
def keys_rotate(obj: Context, alg: str | None, as_json: bool) -> None:
    """next → current, current → retired, new next; prune expired retired keys."""
    services = obj.services
    result = services.keyring.rotate(alg=alg)
    result["pruned"] = services.keyring.prune(max_token_lifetime=services.config.max_token_lifetime)
    obj.record("key.rotated", result.get("current"), **result)
    # Each key's own life in the log too, so a search by key id finds when it stopped signing
    # (retired: still verifies tokens it signed) and when it was removed from the key set.
    if result.get("retired"):
        obj.record("key.retired", result["retired"])
    for kid in result["pruned"]:
        obj.record("key.removed", kid)
    emit(result, as_json)


# -- DKIM selectors (keys/dkim.py) ----------------------------------------------------------
@main.group()
def dkim() -> None:
    """DKIM keys and selectors of the mail gateway's signing domains (dkim.domains)."""


def _dkim_keys(obj: Context):  # type: ignore[no-untyped-def]
    from identity.keystore import DatabaseDkimKeyStore
    from keys.dkim import DkimKeys

    services = obj.services
    return DkimKeys(DatabaseDkimKeyStore(services.database), services.config.master_key,
                    publish_grace=services.config["dkim.publish_grace_seconds"],
                    retired_keep=services.config["dkim.retired_keep_seconds"])


def _dkim_domain_option(command: Any) -> Any:
    return click.option("--domain", "domains", multiple=True,
                        help="Signing domain (repeatable). Default: every domain in dkim.domains.")(command)


@dkim.command("list")
@json_option
@pass_context
def dkim_list(obj: Context, as_json: bool) -> None:
    """Every selector with its state (next, current, retired)."""
    rows = [{"domain": r.domain, "selector": r.selector, "algorithm": r.algorithm, "state": r.state,
             "created_at": r.created_at, "activated_at": r.activated_at, "retired_at": r.retired_at}
            for r in _dkim_keys(obj).published()]
    emit(rows, as_json, "\n".join(f"{r['domain']:<24} {r['state']:<8} {r['algorithm']:<15} {r['selector']}"
                                  for r in rows) or "(no DKIM selectors: run `congvu dkim generate`)")


@dkim.command("generate")
@_dkim_domain_option
@json_option
@pass_context
def dkim_generate(obj: Context, domains: tuple[str, ...], as_json: bool) -> None:
    """Make the missing current and next selectors (RSA-2048 and Ed25519) per domain."""
    from mailgw.signing import configured_domains, record_generated

    config = obj.services.config
    try:
        made = _dkim_keys(obj).ensure_initialised(domains or configured_domains(config))
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    if made:
        record_generated(obj.services.database, config, made, audit_log=obj.services.audit,
                         actor=f"cli:{_os_user()}")
    rows = [{"domain": r.domain, "selector": r.selector, "algorithm": r.algorithm, "state": r.state}
            for r in made]
    emit(rows, as_json, "\n".join(f"made {r['state']} {r['algorithm']} {r['selector']}._domainkey."
                                  f"{r['domain']}" for r in rows)
         + ("\npublish them: congvu dkim dns" if rows else "nothing to make: every domain has its selectors"))


@dkim.command("rotate")
@_dkim_domain_option
@click.option("--force", is_flag=True,
              help="Promote even if the next selector was published less than "
                   "dkim.publish_grace_seconds ago (a leaked key).")
@json_option
@pass_context
def dkim_rotate(obj: Context, domains: tuple[str, ...], force: bool, as_json: bool) -> None:
    """next → current, current → retired, new next (publish it); forget old retired ones."""
    from keys.dkim import DkimRotationError
    from mailgw.signing import configured_domains

    keys = _dkim_keys(obj)
    results = []
    for domain in domains or configured_domains(obj.services.config):
        try:
            results += keys.rotate(domain, force=force)
        except (DkimRotationError, LookupError, ValueError) as error:
            obj.services.audit.append("dkim.rotated", "failure", actor_username=f"cli:{_os_user()}",
                                      target=domain, reason="dkim.rotation_refused",
                                      details={"forced": force})
            raise click.ClickException(str(error)) from None
    for result in results:
        obj.record("dkim.rotated", result["domain"], **result, forced=force)
    pruned = [f"{r.selector}._domainkey.{r.domain}" for r in keys.prune()]
    if pruned:
        obj.record("dkim.pruned", None, selectors=pruned)
    emit({"rotated": results, "pruned": pruned}, as_json,
         "\n".join(f"{r['domain']} {r['algorithm']}: current {r['current']}, next {r['next']}, "
                   f"retired {r['retired']}" for r in results)
         + "".join(f"\nforgotten (remove from DNS): {name}" for name in pruned)
         + "\npublish the new next selectors: congvu dkim dns")


@dkim.command("dns")
@_dkim_domain_option
@json_option
@pass_context
def dkim_dns(obj: Context, domains: tuple[str, ...], as_json: bool) -> None:
    """The TXT records to publish (zone-file syntax; values split into 255-byte strings)."""
    from keys.dkim import normalise_domain, txt_strings, zone_line

    wanted = {normalise_domain(d) for d in domains}
    records = [r for r in _dkim_keys(obj).published() if not wanted or r.domain in wanted]
    rows = [{"name": r.dns_name, "state": r.state, "algorithm": r.algorithm, "type": "TXT",
             "value": r.txt_value(), "strings": txt_strings(r.txt_value())} for r in records]
    emit(rows, as_json, "\n".join(f"; {r.state} {r.algorithm}\n{zone_line(r)}" for r in records)
         or "(no DKIM selectors: run `congvu dkim generate`)")


# -- admin tokens -------------------------------------------------------------------------
@main.group("admin-token")
def admin_token() -> None:
    """Bearer tokens for the admin API."""


@admin_token.command("create")
@click.option("--name", required=True)
@json_option
@pass_context
def admin_token_create(obj: Context, name: str, as_json: bool) -> None:
    """Create an admin API token; it is printed this once and stored hashed."""
    from identity.credentials import new_token, token_hash
    from identity.models import AdminToken

    value = new_token(32)
    with obj.services.database.session() as session:
        session.add(AdminToken(name=name, token_hash=token_hash(value),
                               created_at=int(time.time()), revoked_at=None))
    obj.record("admin_token.created", name)
    emit({"name": name, "token": value}, as_json)


# -- directories of officials ------------------------------------------------------------
@main.group()
def directory() -> None:
    """Directories of officials (OpenLDAP, Active Directory): test, sync."""


def _chosen_directories(obj: Context, name: str | None) -> list[Any]:
    configured = obj.services.directories
    if not configured:
        raise click.ClickException("no directory is configured ([directories.<name>] in congvu.toml)")
    if name is None:
        return list(configured.values())
    if name not in configured:
        raise click.ClickException(f"no directory {name!r} (configured: {', '.join(configured)})")
    return [configured[name]]


directory_name_option = click.option("--name", default=None,
                                     help="Only this directory (default: every configured one).")


@directory.command("test")
@directory_name_option
@pass_context
def directory_test(obj: Context, name: str | None) -> None:
    """Connect to each server, bind as the service account, count users and groups; say what
    works and what does not (no secret is printed). Exit status 1 if anything failed."""
    failed = False
    for configured in _chosen_directories(obj, name):
        settings = configured.settings
        click.echo(f"{configured.name}: {settings.kind}, {settings.mode} mode, tls {settings.tls}")
        for step in configured.check():
            failed = failed or not step.ok
            click.echo(f"  {'ok  ' if step.ok else 'FAIL'} {step.step}: {step.message}")
    if failed:
        sys.exit(1)


class _SyncProgress:
    """A click progress bar on standard error, drawn once the sync knows how many entries
    it will read."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled = label, enabled
        self.bar: Any = None
        self.done = 0

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled or not total:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr,
                                         show_pos=True)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _sync_once(obj: Context, configured: Any, *, full: bool, force: bool, as_json: bool) -> dict | None:
    from identity.directory.errors import DirectoryError
    from identity.directory.sync import sync_directory

    progress = _SyncProgress(f"{configured.name}", enabled=not as_json)
    try:
        report = sync_directory(obj.services.database, obj.services.audit, configured, full=full,
                                force=force, progress=progress, actor=f"cli:{_os_user()}")
    except DirectoryError as error:
        progress.close()
        click.secho(f"{configured.name}: sync failed ({error.reason}): {error.detail or error}",
                    fg="red", err=True)
        return None
    progress.close()
    details = report.details()
    emit(details, as_json, (
        f"{report.directory}: {'full' if report.full else 'incremental'} sync in {report.seconds:.1f} s: "
        f"{report.read} read, {report.created} created, {report.updated} updated, "
        f"{report.unchanged} unchanged, {report.disabled} disabled, {report.enabled} enabled"
        + (f", {report.conflicts} conflicts" if report.conflicts else "")
        + (f", {report.invalid} invalid entries" if report.invalid else "")))
    return details


def _full_sync_due(obj: Context, configured: Any) -> bool:
    from identity.models import DirectorySyncState

    with obj.services.database.session() as session:
        state = session.get(DirectorySyncState, configured.name)
        last_full = state.full_synced_at if state is not None else None
    return last_full is None or time.time() - last_full >= configured.settings.full_sync_every_hours * 3600


@directory.command("sync")
@click.option("--full", is_flag=True, help="Read every entry (default: only what changed since the "
              "last sync; the first sync is always full).")
@directory_name_option
@click.option("--every", "every", type=click.IntRange(10, 86400), default=None, metavar="SECONDS",
              help="Keep running (until SIGTERM or Ctrl-C): sync every SECONDS, incremental, with a "
                   "full sync once the last one is older than full_sync_every_hours.")
@click.option("--force", is_flag=True, help="Disable accounts even beyond max_disable_percent.")
@json_option
@pass_context
def directory_sync(obj: Context, full: bool, name: str | None, every: int | None, force: bool,
                   as_json: bool) -> None:
    """Import users and groups from the directory: creates and updates accounts, disables
    those removed or disabled there (their sessions and refresh tokens end), one audit
    record per sync. Exit status 1 if a directory could not be synced."""
    import signal
    import threading

    chosen = _chosen_directories(obj, name)
    if every is None:
        results = [_sync_once(obj, configured, full=full, force=force, as_json=as_json)
                   for configured in chosen]
        if any(result is None for result in results):
            sys.exit(1)
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.is_set():
            for configured in chosen:
                _sync_once(obj, configured, full=full or _full_sync_due(obj, configured), force=force,
                           as_json=as_json)
            full = False  # --full asks for one full sync, not for every one
            stop.wait(every)
    except KeyboardInterrupt:
        pass


# -- audit log ----------------------------------------------------------------------------
@main.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("verify")
@click.option("--checkpoints", "checkpoint_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Also check the off-host checkpoint file (audit.checkpoint_file) "
              "against the database: finds a log cut short after its last internal checkpoint.")
@json_option
@pass_context
def audit_verify(obj: Context, checkpoint_file: str | None, as_json: bool) -> None:
    """Recompute the hash chain and check the signed checkpoints; exit 1 on any change."""
    from identity.audit.checkpoint_file import (
        CheckpointFileError,
        read_checkpoint_file,
        verify_against_database,
    )

    log = obj.services.audit
    offhost = None
    if checkpoint_file is not None:
        # Read before the database: see verify_against_database.
        try:
            offhost = read_checkpoint_file(checkpoint_file)
        except CheckpointFileError as error:
            raise click.ClickException(f"audit log NOT verified: {checkpoint_file}: {error}") from None
    finding = log.verify()
    if finding is None and offhost is not None:
        finding = verify_against_database(log.database, offhost, obj.services.config.master_key)
    records, checkpoints = log.counts()
    counts: dict[str, Any] = {"records": records, "checkpoints": checkpoints}
    summary = f"{records} records, {checkpoints} checkpoints"
    if offhost is not None:
        counts["offhost_checkpoints"] = len(offhost)
        summary += f", {len(offhost)} off-host checkpoints"
    if finding is None:
        emit({"verified": True, **counts}, as_json, f"audit log verified: {summary}")
        return
    emit({"verified": False, **counts, **finding.as_dict()},
         as_json, f"audit log NOT verified: record {finding.seq}: {finding.kind} ({finding.detail})")
    sys.exit(1)


@audit.command("forward")
@click.option("--once", is_flag=True,
              help="Send what is pending, then exit (status 1 if a destination could not be reached).")
@pass_context
def audit_forward(obj: Context, once: bool) -> None:
    """Send the log off the host: every record and signed checkpoint to the SIEM
    (audit.forward.*: RFC 5424 syslog over TLS or TCP), each checkpoint to the off-host
    checkpoint file (audit.checkpoint_file). Runs until stopped (SIGTERM, Ctrl-C), as a
    process of its own, so that a slow or absent receiver never holds up a request."""
    import logging
    import signal
    import threading

    from identity.audit.forwarder import ForwarderSetupError, forwarder_from_config

    services = obj.services
    try:
        forwarder = forwarder_from_config(services.config, services.database, services.audit)
    except ForwarderSetupError as error:
        raise click.ClickException(f"invalid setting {error}") from None
    # Its own handler, not the root logger's: the command says what it does, nothing else.
    logger = logging.getLogger("congvu.audit.forward")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        if once:
            try:
                failures = forwarder.forward_once()
            finally:
                forwarder.close()
            for name, status in forwarder.status().items():
                click.echo(f"{name}: {status.sent} sent" + (" (not reachable)" if name in failures else ""))
            if failures:
                sys.exit(1)
            return
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            forwarder.run(stop)
        except KeyboardInterrupt:
            pass
    finally:
        logger.removeHandler(handler)


@audit.command("prune")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@json_option
@pass_context
def audit_prune(obj: Context, dry_run: bool, as_json: bool) -> None:
    """Remove records older than [policies.audit_retention] keep_days (at least a year),
    up to a signed checkpoint; the rest still verifies from it."""
    from identity.audit.retention import plan_prune, prune

    keep_days = obj.services.config.audit_retention_policy.keep_days
    if dry_run:
        plan = plan_prune(obj.services.audit, keep_days)
    else:
        plan = prune(obj.services.audit, keep_days, actor=f"cli:{_os_user()}")
    data = {"dry_run": dry_run, "keep_days": keep_days, "cutoff": plan.cutoff, "records": plan.records,
            "first_seq": plan.first_seq, "through_seq": plan.through_seq}
    verb = "would remove" if dry_run else "removed"
    emit(data, as_json, f"{verb} {plan.records} records older than {plan.cutoff}"
         + (f" (records {plan.first_seq}..{plan.through_seq})" if plan.records else ""))


@audit.command("list")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True,
              help="How many of the newest records to show.")
@json_option
@pass_context
def audit_list(obj: Context, limit: int, as_json: bool) -> None:
    """The newest records, newest first."""
    rows = obj.services.audit.recent(limit)
    human = "\n".join(
        f"{r['seq']:>8} {r['ts']} {r['event']:<24} {r['outcome']:<8} "
        f"{r['actor_username'] or r['actor_sub'] or '-'} {r['target'] or ''}".rstrip()
        for r in rows) or "(no audit records)"
    emit(rows, as_json, human)


def audit_filter_options(command: Any) -> Any:
    """The console's filters, shared by `audit search` and `audit export`."""
    options = [
        click.option("--user", help="Username, subject or target: what a person did and what "
                                    "was done to their account."),
        click.option("--event", help="Event name, or a prefix ending in '.' or '*' (signin.)."),
        click.option("--outcome", help="success, failure, ..."),
        click.option("--client", "client_id", help="Client id."),
        click.option("--ip", "source_ip", help="Source IP address."),
        click.option("--since", help="From this time on (RFC 3339 with offset, e.g. "
                                     "2026-11-26T08:00:00+07:00)."),
        click.option("--until", help="Before this time (RFC 3339 with offset)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def audit_query(filters: dict[str, str | None]) -> Any:
    from identity.audit.search import AuditQuery, InvalidQuery

    try:
        return AuditQuery(**filters)
    except InvalidQuery as error:
        raise click.UsageError(str(error)) from None


@audit.command("search")
@audit_filter_options
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="Records per page.")
@click.option("--before", "before_seq", type=click.IntRange(min=1), default=None,
              help="Only records older than this seq: the next page.")
@json_option
@pass_context
def audit_search(obj: Context, limit: int, before_seq: int | None, as_json: bool,
                 **filters: str | None) -> None:
    """Matching records, newest first, a page at a time."""
    from identity.audit.search import search

    page = search(obj.services.database, audit_query(filters), limit, before_seq)
    lines = [f"{'seq':>8} {'time (UTC)':<27} {'event':<24} {'outcome':<8} {'user':<20} "
             f"{'client':<16} {'ip':<15} target"] if page.records else ["(no matching records)"]
    lines += [f"{r['seq']:>8} {r['ts']:<27} {r['event']:<24} {r['outcome']:<8} "
              f"{r['actor_username'] or r['actor_sub'] or '-':<20} {r['client_id'] or '-':<16} "
              f"{r['source_ip'] or '-':<15} {r['target'] or ''}".rstrip() for r in page.records]
    if page.next_before_seq is not None:
        lines.append(f"(older records: add --before {page.next_before_seq})")
    emit({"records": page.records, "next_before_seq": page.next_before_seq}, as_json, "\n".join(lines))


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), required=True,
              help="JSON lines (one record a line) or CSV with a header row.")
@audit_filter_options
@click.option("--output", type=click.Path(dir_okay=False), default=None,
              help="File to write (created readable by its owner only); default standard output.")
@pass_context
def audit_export(obj: Context, fmt: str, output: str | None, **filters: str | None) -> None:
    """Matching records, oldest first, as JSON lines or CSV; the export itself is audited."""
    from identity.audit.search import export

    query = audit_query(filters)

    def write_to(stream: Any) -> int:
        lines = 0
        for piece in export(obj.services.database, query, fmt):  # type: ignore[arg-type]
            stream.write(piece)
            lines += 1
        stream.flush()
        return lines

    if output is None:
        lines = write_to(sys.stdout)
    else:
        # The log names people and their addresses: a new export file is the owner's
        # alone. newline="": CSV lines end in CRLF as written, on every platform.
        descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(descriptor, "w", encoding="utf-8", newline="") as file:
            lines = write_to(file)
    records = max(lines - 1, 0) if fmt == "csv" else lines  # the CSV header is no record
    # Who took which records out of the system is itself worth knowing.
    obj.record("audit.exported", None, format=fmt, records=records,
               filters={k: v for k, v in query.__dict__.items() if v is not None})
    click.echo(f"exported {records} records" + (f" to {output}" if output else ""), err=True)


# -- mail gateway -------------------------------------------------------------------------
@main.group()
def mailgw() -> None:
    """The official-mail gateway (its own process: submission, policy, signing, queue)."""


@mailgw.command("serve")
@pass_context
def mailgw_serve(obj: Context) -> None:
    """Run the SMTP listeners (settings `mailgw.*`) and the delivery worker until stopped."""
    from mailgw.server import serve_forever

    serve_forever(obj.services, echo=click.echo)


@mailgw.group("queue")
def mailgw_queue() -> None:
    """The durable mail queue: what waits for delivery, and why."""


def _mail_queue(obj: Context) -> Any:
    from mailgw.queue import MailQueue

    return MailQueue(obj.services.database, obj.services.config)


def _unix_time(value: int | None) -> str:
    return "-" if value is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


@mailgw_queue.command("list")
@click.option("--all", "include_finished", is_flag=True,
              help="Also messages already delivered or bounced (kept mailgw.queue.keep_finished_seconds).")
@json_option
@pass_context
def mailgw_queue_list(obj: Context, include_finished: bool, as_json: bool) -> None:
    """Queued messages, oldest first, with their recipients counted by state."""
    queue = _mail_queue(obj)
    try:
        rows = queue.list_messages(include_finished=include_finished)
    finally:
        queue.close()
    human = "\n".join(
        f"{r['id']}  {_unix_time(r['created_at'])}  {r['size']:>9}  <{r['mail_from']}>  "
        + " ".join(f"{status}={count}" for status, count in r["recipients"].items() if count)
        + (f"  next {_unix_time(r['next_attempt_at'])}" if r["next_attempt_at"] is not None else "")
        for r in rows) or "(the mail queue is empty)"
    emit(rows, as_json, human)


@mailgw_queue.command("show")
@click.argument("queue_id")
@json_option
@pass_context
def mailgw_queue_show(obj: Context, queue_id: str, as_json: bool) -> None:
    """One message: envelope, each recipient's state and last answer, and its headers."""
    queue = _mail_queue(obj)
    try:
        shown = queue.show(queue_id)
    finally:
        queue.close()
    if shown is None:
        raise click.ClickException(f"no queued message {queue_id}")
    lines = [f"queue id:   {shown['id']}", f"from:       <{shown['mail_from']}>",
             f"received:   {_unix_time(shown['created_at'])}", f"size:       {shown['size']}",
             f"sender sub: {shown['sender_sub'] or '-'}", "recipients:"]
    lines += [f"  {r['recipient']}  {r['status']}  attempts={r['attempts']}"
              + (f"  next {_unix_time(r['next_attempt_at'])}"
                 if r["status"] in ("queued", "deferred") else "")
              + (f"  last: {r['last_error']}" if r["last_error"] else "") for r in shown["recipients"]]
    lines += ["headers:"] + [f"  {name}: {value}" for name, value in shown["headers"]]
    emit(shown, as_json, "\n".join(lines))


@mailgw_queue.command("retry")
@click.argument("queue_id", required=False)
@click.option("--all", "retry_all", is_flag=True, help="Every message waiting for a retry.")
@json_option
@pass_context
def mailgw_queue_retry(obj: Context, queue_id: str | None, retry_all: bool, as_json: bool) -> None:
    """Try a deferred message (or all) again now, instead of at its next retry time."""
    if bool(queue_id) == retry_all:
        raise click.UsageError("give a queue id or --all")
    queue = _mail_queue(obj)
    try:
        if queue_id is not None and queue.show(queue_id) is None:
            raise click.ClickException(f"no queued message {queue_id}")
        count = queue.retry(queue_id)
    finally:
        queue.close()
    obj.record("mail.queue.retried", queue_id or "all", recipients=count)
    emit({"queue_id": queue_id, "recipients": count}, as_json,
         f"{count} recipient(s) due now; the delivery worker sends them within mailgw.delivery.poll_seconds")


@mailgw_queue.command("remove")
@click.argument("queue_id")
@json_option
@pass_context
def mailgw_queue_remove(obj: Context, queue_id: str, as_json: bool) -> None:
    """Delete a message from the queue, without a bounce to its sender."""
    queue = _mail_queue(obj)
    try:
        removed = queue.remove(queue_id)
    finally:
        queue.close()
    if not removed:
        raise click.ClickException(f"no queued message {queue_id}")
    obj.record("mail.queue.removed", queue_id)
    emit({"queue_id": queue_id, "removed": True}, as_json, f"message {queue_id} removed")


if __name__ == "__main__":  # pragma: no cover
    main()
