"""The example applications (examples/van_ban, examples/mot_cua) live on loopback ports,
registered at a live provider as `congvu client add` would register them, and a requests
"browser" that signs in to them. Shared by tests/examples/ and tests/browser/."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin

from flask import Flask
from werkzeug.serving import make_server

from examples.rp_common import LocalSessions
from tests.conftest import _LateApp
from tests.helpers import PASSWORD, Instance, LoopbackSession, login_via_form


@dataclass
class LiveRelyingParty:
    app: Flask
    base_url: str
    client_id: str

    @property
    def sessions(self) -> LocalSessions:
        return self.app.extensions["rp.sessions"]


def client_metadata(base_url: str) -> dict[str, object]:
    """What the application registers, as examples/README.md tells a newcomer to."""
    return {
        "redirect_uris": [f"{base_url}/callback"],
        "post_logout_redirect_uris": [f"{base_url}/signed-out"],
        "backchannel_logout_uri": f"{base_url}/backchannel-logout",
        "portal": {"client_uri": f"{base_url}/", "initiate_login_uri": f"{base_url}/login"},
    }


def register(provider: Instance, name: str, description: str, base_url: str) -> tuple[str, str]:
    from identity.clients import register_client

    metadata = client_metadata(base_url)
    with provider.services.database.session() as session:
        registered = register_client(
            session, provider.services.secret_hasher, name=name,
            redirect_uris=metadata["redirect_uris"],
            post_logout_redirect_uris=metadata["post_logout_redirect_uris"],
            backchannel_logout_uri=metadata["backchannel_logout_uri"],
            settings={**metadata["portal"], "description": description})
        assert registered.client_secret is not None
        return registered.client.client_id, registered.client_secret


@contextmanager
def running(provider: Instance, create_app: Callable[[Mapping[str, str]], Flask], *, prefix: str,
            name: str, description: str = "") -> Iterator[LiveRelyingParty]:
    """The application on a free loopback port (threaded), its client registered at
    `provider`; stopped afterwards."""
    dispatch = _LateApp()  # the client's URIs name the port, so the app comes after the socket
    server = make_server("127.0.0.1", 0, dispatch, threaded=True)
    base_url = f"http://127.0.0.1:{server.server_port}"
    client_id, secret = register(provider, name, description, base_url)
    dispatch.app = create_app({
        "CONGVU_ISSUER": provider.issuer, f"{prefix}_CLIENT_ID": client_id,
        f"{prefix}_CLIENT_SECRET": secret, f"{prefix}_PORT": str(server.server_port),
        f"{prefix}_BASE_URL": base_url})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield LiveRelyingParty(dispatch.app, base_url, client_id)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def sign_in(http: LoopbackSession, relying_party: LiveRelyingParty, username: str,
            password: str = PASSWORD) -> str:
    """Open the application's sign-in, fill the provider's form (no second factor), follow
    the redirects back; returns the application's page."""
    posted = login_via_form(http, f"{relying_party.base_url}/login", username, password)
    assert posted.status_code == 303, posted.status_code
    page = http.get(urljoin(posted.url, posted.headers["Location"]), timeout=10)
    assert page.status_code == 200 and page.url == f"{relying_party.base_url}/", (page.status_code, page.url)
    return page.text


def state_of(page_html: str) -> str:
    """"signed-in" or "signed-out", as the page's <main data-state> says."""
    marker = 'data-state="'
    start = page_html.index(marker) + len(marker)
    return page_html[start:page_html.index('"', start)]
