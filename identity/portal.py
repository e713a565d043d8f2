"""The application portal: after sign-in, the applications an official may open.

An application is listed when it is marked for the portal, has somewhere to open it
(`initiate_login_uri`, else `client_uri`) and its access policy (policies.access,
groups and roles) lets this official in; an application that needs MFA is listed with
a note, since a step-up opens it. The link to `initiate_login_uri` carries `iss` (OIDC
Core §4, third-party initiated login), so the application starts its own sign-in, which
here needs no password: the official is signed in already.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from authlib.common.urls import add_params_to_uri
from flask import Blueprint, Response, render_template
from sqlalchemy import select
from sqlalchemy.orm import Session

from identity import sso
from identity.account import signed_in
from identity.app import SECURITY_HEADERS
from identity.config import Config
from identity.models import Client, User
from identity.roles import group_names, roles_of
from identity.services import db, services
from policies.access import client_access

bp = Blueprint("portal", __name__)

# Colours of the initial-letter icons (classes in congvu.css): the page's CSP allows no
# inline style, and a fixed palette keeps the contrast checked.
ICON_TONES = 6
# What may stand for a logo's host in the CSP (client_settings.web_uri accepts no other).
SAFE_NETLOC = re.compile(r"[A-Za-z0-9.\-\[\]:]+")


@dataclass(frozen=True)
class PortalApplication:
    client_id: str
    name: str
    description: str
    url: str
    logo_uri: str | None
    initial: str
    tone: int
    needs_mfa: bool


def start_url(client: Client, issuer: str) -> str | None:
    if client.initiate_login_uri:
        return add_params_to_uri(client.initiate_login_uri, [("iss", issuer)])
    return client.client_uri or None


def portal_applications(session: Session, user: User, config: Config) -> list[PortalApplication]:
    groups = group_names(user)
    roles = roles_of(user, config, groups)
    listed = []
    query = select(Client).where(Client.show_in_portal.is_(True)).order_by(Client.name)
    for client in session.scalars(query):
        url = start_url(client, config.issuer)
        if url is None or not client_access(user_groups=groups, allowed_groups=client.allowed_groups or (),
                                            user_roles=roles, allowed_roles=client.allowed_roles or ()):
            continue
        name = client.name.strip()
        tone = hashlib.sha256(client.client_id.encode()).digest()[0] % ICON_TONES
        listed.append(PortalApplication(
            client_id=client.client_id, name=name, description=client.description or "", url=url,
            logo_uri=client.logo_uri, initial=name[:1].upper() or "?", tone=tone,
            needs_mfa=client.required_acr == sso.ACR_MULTI_FACTOR))
    return listed


def content_security_policy(applications: list[PortalApplication]) -> str:
    """The site's policy, with the logos' origins added to img-src (and nothing else)."""
    origins = sorted({f"{parts.scheme}://{parts.netloc}" for app in applications if app.logo_uri
                      for parts in [urlsplit(app.logo_uri)]
                      if parts.scheme in ("http", "https") and SAFE_NETLOC.fullmatch(parts.netloc)})
    policy = SECURITY_HEADERS["Content-Security-Policy"]
    return policy.replace("img-src 'self' data:", " ".join(["img-src 'self' data:", *origins]))


def portal_page(active: sso.ActiveSession) -> Response:
    applications = portal_applications(db(), active.user, services().config)
    return Response(render_template("portal.html", active=active, applications=applications),
                    headers={"Cache-Control": "no-store",
                             "Content-Security-Policy": content_security_policy(applications)})


@bp.get("/portal")
@signed_in
def portal(active: sso.ActiveSession) -> Response:
    return portal_page(active)
