"""The machine endpoints — discovery, JWKS, token, introspection and revocation —
served without Flask's per-request machinery.

Relying parties call these far more often than people open pages, and they use none
of what a Flask request context sets up for pages: the flow cookie, CSRF, the
language, URL building. Measured on the 2-core reference machine, that set-up cost
about as much CPU as everything else in a client_credentials grant except the RSA
signature. So this layer answers them directly:

* discovery and JWKS from bytes cached until the key set changes;
* the token, introspection and revocation endpoints through the same authlib
  AuthorizationServer, grants and endpoints, inside an application context (for the
  database session and settings), with the request built from the WSGI environ.
  Parameters come from the form body only: RFC 6749 §3.2, RFC 7662 §2.1 and RFC 7009
  §2.1 send them by POST, and a query string can leak into logs.

Everything else passes through to Flask unchanged.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from flask import Flask, g
from werkzeug.datastructures import EnvironHeaders, MultiDict

from identity.services import end_request_transaction

log = logging.getLogger("congvu")

MAX_FORM_BYTES = 64 * 1024
HTTP_STATUS = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}
JSON_HEADERS = [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                ("Pragma", "no-cache")]


class TokenRequest(OAuth2Request):
    """authlib's request for a form-posting endpoint, built from the WSGI environ."""

    def __init__(self, uri: str, environ: dict[str, Any], form: MultiDict) -> None:
        super().__init__(environ["REQUEST_METHOD"], uri, headers=EnvironHeaders(environ))
        self._form = form
        self.payload = TokenPayload(form)

    @property
    def args(self) -> MultiDict:
        return MultiDict()

    @property
    def form(self) -> MultiDict:
        return self._form


class TokenPayload(BasicOAuth2Payload):
    def __init__(self, form: MultiDict) -> None:
        self._data = form
        self._datalist = {key: form.getlist(key) for key in form}


def read_form(environ: dict[str, Any]) -> MultiDict | None:
    """The urlencoded body, or None when it is not one (or too large)."""
    content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length < 0 or length > MAX_FORM_BYTES:
        return None
    body = environ["wsgi.input"].read(length) if length else b""
    try:
        return MultiDict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        return None


def _json_response(start_response: Any, status: int, payload: dict[str, Any],
                   headers: Any = ()) -> list[bytes]:
    """A JSON answer: JSON_HEADERS, unless `headers` (authlib's) names them itself."""
    names = {name.lower() for name, _ in headers}
    body = json.dumps(payload).encode()
    start_response(HTTP_STATUS[status], [
        *(h for h in JSON_HEADERS if h[0].lower() not in names), *headers,
        ("Content-Length", str(len(body)))])
    return [body]


class MachineEndpoints:
    # path → authlib endpoint name (None: the token endpoint)
    FORM_ENDPOINTS = {"/token": None, "/introspect": "introspection", "/revoke": "revocation"}

    def __init__(self, app: Flask, inner: Any) -> None:
        self.app = app
        self.inner = inner
        self._documents: dict[str, tuple[Any, list[tuple[str, str]], bytes]] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        if method == "POST" and path in self.FORM_ENDPOINTS:
            return self.form_endpoint(path, environ, start_response)
        if method in ("GET", "HEAD") and path in ("/jwks", "/.well-known/openid-configuration"):
            return self.document(path, method, start_response)
        return self.inner(environ, start_response)

    def document(self, path: str, method: str, start_response: Any) -> list[bytes]:
        services = self.app.extensions["congvu"]
        if path == "/jwks":
            version: Any = services.keyring.jwks()  # the same object until the key set changes
        else:
            version = tuple(services.keyring.algorithms())
        cached = self._documents.get(path)
        if cached is None or cached[0] != version:
            cached = self._build(path, version)
        start_response("200 OK", cached[1])
        return [cached[2]] if method == "GET" else []

    def _build(self, path: str, version: Any) -> tuple[Any, list[tuple[str, str]], bytes]:
        from identity.oidc.views import discovery_document

        if path == "/jwks":
            body = json.dumps(version, separators=(",", ":")).encode()
            # Short: a key published as "next" must reach caches well before it signs.
            headers = [("Content-Type", "application/jwk-set+json"),
                       ("Cache-Control", "public, max-age=60")]
        else:
            with self.app.app_context():
                body = json.dumps(discovery_document(), separators=(",", ":")).encode()
            headers = [("Content-Type", "application/json"),
                       ("Cache-Control", "public, max-age=300")]
        headers.append(("Content-Length", str(len(body))))
        cached = (version, headers, body)
        self._documents[path] = cached
        return cached

    def form_endpoint(self, path: str, environ: dict[str, Any], start_response: Any) -> Any:
        form = read_form(environ)
        if form is None:
            return _json_response(start_response, 400, {
                "error": "invalid_request",
                "error_description": "Send the parameters as an application/x-www-form-urlencoded "
                                     "body of at most 64 KiB."})
        services = self.app.extensions["congvu"]
        with self.app.app_context():
            g.machine_endpoint = True  # the server then returns (status, payload, headers)
            g.audit_origin = (environ.get("REMOTE_ADDR"),
                              environ.get("HTTP_USER_AGENT", "")[:512] or None)
            try:
                request = TokenRequest(services.config.issuer + path, environ, form)
                server = self.app.extensions["congvu.oauth"]
                endpoint = self.FORM_ENDPOINTS[path]
                if endpoint is None:
                    status, payload, headers = server.create_token_response(request)
                else:
                    status, payload, headers = server.create_endpoint_response(endpoint, request)
                end_request_transaction(commit=True)
            except Exception:
                # Logged for operators with its traceback; the client gets the RFC 6749 code.
                log.exception("unhandled error at %s", path)
                end_request_transaction(commit=False)
                return _json_response(start_response, 500, {"error": "server_error"})
        return _json_response(start_response, status, payload, headers)
