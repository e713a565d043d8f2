"""The sentence a refused official reads for each reason code of the access policy.

The reason code (`access.group_required`) is what the audit log records and what the page
shows beside the sentence, so that the help desk knows at once which rule refused.
"""

from __future__ import annotations

from flask import Response, render_template
from flask_babel import gettext

from identity.models import Client


def access_message(reason: str, app: str) -> str:
    match reason:
        case "access.group_required":
            return gettext("Your account is not in a group allowed to use %(app)s. Ask the unit that "
                           "runs it to grant access.", app=app)
        case "access.role_required":
            return gettext("%(app)s is for administrators or security auditors only.", app=app)
        case "access.mfa_not_enrolled":
            return gettext("%(app)s requires two-step verification, and your account has none yet. "
                           "Set it up on your account page, then open the application again.", app=app)
        case _:
            return gettext("You may not use %(app)s.", app=app)


def access_refusal_page(reason: str, client: Client) -> Response:
    """403: a translated page naming the reason (the application is told nothing)."""
    return Response(render_template("access_denied.html", client=client, reason=reason,
                                    message=access_message(reason, client.name)),
                    status=403, headers={"Cache-Control": "no-store"})
