"""What an administrator sets on a client beside its protocol metadata: who may use it
(access policy) and how the application portal shows it.

One validation for every way in (admin API, CLI, `congvu demo`): `apply_client_settings`
takes the changed items by their metadata names, checks each, and sets them on the row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from identity.clients import ClientRegistrationError, _is_loopback_ip, split_uri
from identity.models import Client
from identity.sso import ACR_MULTI_FACTOR, ACR_SINGLE_FACTOR
from policies.access import ROLES

# The provider's acr values, weakest first (policies.access.acr_requirement compares them).
ACR_LEVELS = (ACR_SINGLE_FACTOR, ACR_MULTI_FACTOR)
MAX_DESCRIPTION = 500
MAX_URI = 2000

# Metadata name → column; the names follow RFC 7591 / OIDC Registration where one exists.
SETTINGS = ("allowed_groups", "allowed_roles", "required_acr", "description", "logo_uri",
            "client_uri", "initiate_login_uri", "show_in_portal", "first_party")


def web_uri(value: Any, field: str) -> str | None:
    """An https URL (http only on a loopback IP, for development) or None: these are put
    in links and images of the portal, so no other scheme (javascript:, data:) gets in."""
    if value is None or value == "":
        return None
    parts = split_uri(value, field, max_length=MAX_URI)
    if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+", parts.netloc):
        # Hosts (punycode), IP literals and ports only: the origin goes into the portal's
        # Content-Security-Policy, where a ";" or user information must never get in.
        raise ClientRegistrationError(field, "must name a host (no user information or unusual characters)")
    if parts.scheme == "https" and parts.hostname:
        return value
    if parts.scheme == "http" and _is_loopback_ip(parts.hostname):
        return value
    raise ClientRegistrationError(field, "must be an https URL (http only on 127.0.0.1 or [::1])")


def _names(value: Any, field: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ClientRegistrationError(field, "must be a list of strings")
    return sorted({v.strip() for v in value if v.strip()})


def apply_client_settings(client: Client, changes: Mapping[str, Any]) -> list[str]:
    """Validate and set the items of `changes` (names in SETTINGS); returns the names set.
    Nothing is set when any item is refused."""
    unknown = sorted(set(changes) - set(SETTINGS))
    if unknown:
        raise ClientRegistrationError(unknown[0], "cannot be changed here")
    values: dict[str, Any] = {}
    for name, value in changes.items():
        if name == "allowed_groups":
            values[name] = _names(value, name)
        elif name == "allowed_roles":
            values[name] = _names(value, name)
            if bad := [role for role in values[name] if role not in ROLES]:
                raise ClientRegistrationError(name, f"{bad[0]!r} is not a role (only {', '.join(ROLES)})")
        elif name == "required_acr":
            if value not in (None, "", *ACR_LEVELS):
                raise ClientRegistrationError(name, f"must be one of {', '.join(ACR_LEVELS)}, or null")
            values[name] = value or None
        elif name == "description":
            if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
                raise ClientRegistrationError(name, f"must be a text of at most {MAX_DESCRIPTION} characters")
            values[name] = value.strip()
        elif name in ("logo_uri", "client_uri", "initiate_login_uri"):
            values[name] = web_uri(value, name)
        else:  # show_in_portal, first_party: "false" or 0 must not be read as true
            if not isinstance(value, bool):
                raise ClientRegistrationError(name, "must be true or false")
            values[name] = value
    for name, value in values.items():
        setattr(client, name, value)
    return sorted(values)

