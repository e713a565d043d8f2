"""Front-channel logout in a real browser: signing out loads the application's logout
page in a hidden frame (with iss and sid), under the page's Content-Security-Policy,
and then the browser goes on to the application's post-logout page."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import select

from identity.models import SsoSession
from tests.helpers import PASSWORD, pkce_pair


class Application:
    """A relying party's pages on loopback: the callback, the front-channel logout page
    (recording what it was asked) and the post-logout page."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        application = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                application.requests.append(self.path)
                body = b"<!doctype html><title>app</title><p>ok</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_signing_out_runs_the_frames_then_goes_on(site, page) -> None:  # type: ignore[no-untyped-def]
    application = Application()
    try:
        site.add_user("canbo")
        client_id, _ = site.add_client(
            redirect_uris=[f"{application.base}/cb"], post_logout_redirect_uris=[f"{application.base}/bye"],
            frontchannel_logout_uri=f"{application.base}/fc")
        page.goto(f"{site.base_url}/login")
        page.fill("#username", "canbo")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_load_state()
        _verifier, challenge = pkce_pair()
        page.goto(f"{site.base_url}/authorize?response_type=code&client_id={client_id}&scope=openid"
                  f"&redirect_uri={application.base}/cb&state=s&code_challenge={challenge}"
                  "&code_challenge_method=S256")
        page.wait_for_url(f"{application.base}/cb*")
        with site.services.database.session() as session:
            sid = session.scalar(select(SsoSession.sid).where(SsoSession.ended_at.is_(None)))

        page.goto(f"{site.base_url}/logout?client_id={client_id}"
                  f"&post_logout_redirect_uri={application.base}/bye&state=x")
        started = time.monotonic()
        page.click("button[name=confirm]")
        page.wait_for_url(f"{application.base}/bye*", timeout=10_000)
        # Gone on when the frame loaded, well before logout.frontchannel_wait_ms (3 s).
        assert time.monotonic() - started < 2.5
        assert parse_qs(urlsplit(page.url).query) == {"state": ["x"]}
        frames = [path for path in application.requests if path.startswith("/fc")]
        assert len(frames) == 1
        assert parse_qs(urlsplit(frames[0]).query) == {"iss": [site.issuer], "sid": [sid]}
        # The frame was loaded before the browser went on.
        assert application.requests.index(frames[0]) < application.requests.index(
            next(p for p in application.requests if p.startswith("/bye")))
    finally:
        application.close()
