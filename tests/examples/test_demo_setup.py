"""`congvu demo` registers the example applications itself (identity/demo.py): a newcomer
runs the commands it prints and gets single sign-on and single logout across "Quản lý văn
bản" and "Một cửa" with no registration step of their own.

Here the same set-up runs against a live provider, the applications on free loopback ports,
each started with the settings its printed command carries; then sign in once, the other
application opens without a password, sign out in one, and the other is signed out by the
provider's back-channel logout.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import urljoin

import pytest
from werkzeug.serving import make_server

from examples.mot_cua.app import create_app as create_mot_cua
from examples.van_ban.app import create_app as create_van_ban
from identity.demo import DEMO_PASSWORD, DemoApplication, demo_applications, prepare_demo
from identity.models import Client
from tests.conftest import _LateApp
from tests.examples.relying_parties import LiveRelyingParty, sign_in, state_of
from tests.helpers import Instance, LoopbackSession, hidden_field, post_login

pytestmark = pytest.mark.e2e

BACKCHANNEL_WAIT_SECONDS = 15


def printed_settings(command: str) -> dict[str, str]:
    """The VAR=value words in front of the printed command: what the application reads."""
    words = shlex.split(command)
    return dict(word.split("=", 1) for word in words[:next(i for i, w in enumerate(words) if "=" not in w)])


@contextmanager
def free_port() -> Iterator[tuple[_LateApp, object, str]]:
    dispatch = _LateApp()
    server = make_server("127.0.0.1", 0, dispatch, threaded=True)
    try:
        yield dispatch, server, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.server_close()


@contextmanager
def serving(server) -> Iterator[None]:  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_the_demo_registers_the_examples_with_logout_and_portal_metadata(live: Instance) -> None:
    applications = demo_applications()
    first = prepare_demo(live.services, applications)
    again = prepare_demo(live.services, applications)  # a second `congvu demo`: new secrets, same clients
    assert set(first) == set(again) == {"demo-rp", "van-ban", "mot-cua"}
    assert all(first[client_id] != again[client_id] for client_id in first)
    with live.services.database.session() as session:
        clients = {c.client_id: c for c in session.query(Client).filter(Client.client_id.in_(first))}
        for client_id in ("van-ban", "mot-cua"):
            client = clients[client_id]
            base = client.client_uri.rstrip("/")
            assert client.backchannel_logout_uri == f"{base}/backchannel-logout"
            assert client.post_logout_redirect_uris == [f"{base}/signed-out"]
            assert client.initiate_login_uri == f"{base}/login"
            assert client.description and client.show_in_portal
            # Only the latest printed secret works.
            assert live.services.secret_hasher.verify(again[client_id], client.secret_hash)
            assert not live.services.secret_hasher.verify(first[client_id], client.secret_hash)
        assert clients["demo-rp"].backchannel_logout_uri is None  # demo_rp has no such endpoint
        cards = {client_id: (c.name, c.initiate_login_uri) for client_id, c in clients.items()}
    # The portal shows them to the demo official, each card starting its sign-in.
    http = live.client()
    assert post_login(http, "canbo.demo", DEMO_PASSWORD).status_code == 303
    portal = http.get("/portal").get_data(as_text=True)
    for name, initiate_login_uri in cards.values():
        assert name in portal and f"{initiate_login_uri}?iss=" in portal


def test_the_printed_commands_give_single_sign_on_and_single_logout(live: Instance) -> None:
    with ExitStack() as stack:
        (van_ban_dispatch, van_ban_server, van_ban_url) = stack.enter_context(free_port())
        (mot_cua_dispatch, mot_cua_server, mot_cua_url) = stack.enter_context(free_port())
        applications = demo_applications(van_ban_url=van_ban_url, mot_cua_url=mot_cua_url)
        client_secrets = prepare_demo(live.services, applications)
        by_id: dict[str, DemoApplication] = {app.client_id: app for app in applications}
        running = {}
        for client_id, dispatch, server, create_app in (
                ("van-ban", van_ban_dispatch, van_ban_server, create_van_ban),
                ("mot-cua", mot_cua_dispatch, mot_cua_server, create_mot_cua)):
            command = by_id[client_id].start_command(live.issuer, client_secrets[client_id])
            assert command.endswith(f"-m {by_id[client_id].module}")
            dispatch.app = create_app(printed_settings(command))
            stack.enter_context(serving(server))
            running[client_id] = LiveRelyingParty(dispatch.app, by_id[client_id].base_url, client_id)
        van_ban, mot_cua = running["van-ban"], running["mot-cua"]

        http = LoopbackSession()
        sign_in(http, van_ban, "canbo.demo", DEMO_PASSWORD)
        # The second application: no password asked, the provider's session is there.
        page = http.get(f"{mot_cua.base_url}/login", timeout=10)
        assert page.url == f"{mot_cua.base_url}/" and state_of(page.text) == "signed-in"
        assert len(van_ban.sessions) == len(mot_cua.sessions) == 1

        # Sign out at "Một cửa": RP-initiated logout at the provider, back to its signed-out page.
        signed_out = http.post(f"{mot_cua.base_url}/logout", data={"csrf": hidden_field(page.text, "csrf")},
                               timeout=10)
        assert signed_out.url.startswith(f"{mot_cua.base_url}/signed-out"), signed_out.url
        # "Quản lý văn bản" was told over the back channel by the provider.
        deadline = time.monotonic() + BACKCHANNEL_WAIT_SECONDS
        while len(van_ban.sessions) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(van_ban.sessions) == 0
        home = http.get(f"{van_ban.base_url}/", timeout=10)
        assert state_of(home.text) == "signed-out"
        # Signed out for real: the next sign-in asks for the password.
        again = http.get(f"{van_ban.base_url}/login", timeout=10)
        assert urljoin(again.url, "/login") == f"{live.base_url}/login" and 'name="password"' in again.text
