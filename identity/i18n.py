"""Vietnamese first, English on request.

The language is, in order: `?lang=` on this request (remembered in a cookie), the
`ui_locales` of the authorization request being served (kept for its login page), the
cookie, then the
configured default (vi). The browser's Accept-Language is deliberately not used:
officials' machines often run an English Windows while they work in Vietnamese.

Catalogs are kept as .po text in the repository and compiled into the instance folder
at start (a few milliseconds), so no build step or committed binary is needed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from urllib.parse import urlencode

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import Flask, g, has_app_context, request, session
from flask_babel import Babel, get_locale, get_translations

SUPPORTED_LOCALES = ("vi", "en")
LANG_COOKIE = "congvu_lang"
SOURCE = Path(__file__).parent / "translations"


def compile_catalogs(target: Path) -> Path:
    for po_path in SOURCE.glob("*/LC_MESSAGES/messages.po"):
        locale = po_path.parent.parent.name
        mo_path = target / locale / "LC_MESSAGES" / "messages.mo"
        if mo_path.exists() and mo_path.stat().st_mtime >= po_path.stat().st_mtime:
            continue
        mo_path.parent.mkdir(parents=True, exist_ok=True)
        with po_path.open("rb") as handle:
            catalog = read_po(handle, locale=locale)
        # A temporary file of this call's own (gunicorn's workers start together and each
        # compiles a stale catalog: with one shared name, the second rename found nothing
        # and that worker failed to boot), then an atomic rename: no one reads half a file.
        descriptor, temporary = tempfile.mkstemp(dir=mo_path.parent, prefix="messages.", suffix=".tmp")
        try:
            os.fchmod(descriptor, 0o644)  # as a plain open() would have made it
            with os.fdopen(descriptor, "wb") as handle:
                write_mo(handle, catalog)
            os.replace(temporary, mo_path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return target


def language_url(path: str, query: dict[str, str], code: str) -> str:
    """`path` with `query` and `lang=code`: a page's link to itself in another language."""
    return f"{path}?{urlencode({**query, 'lang': code})}"


def first_supported(value: str | None) -> str | None:
    for tag in (value or "").replace(",", " ").split():
        base = tag.split("-")[0].lower()
        if base in SUPPORTED_LOCALES:
            return base
    return None


def select_locale() -> str:
    from identity.services import services

    chosen = first_supported(request.args.get("lang"))
    if chosen:
        g.lang_cookie = chosen
        session.pop("ui_locales", None)  # the person's own choice outranks the application's
        return chosen
    # ui_locales of this authorization request, or of the one whose login page this is
    chosen = first_supported(request.args.get("ui_locales")) or first_supported(
        session.get("ui_locales"))
    if chosen:
        return chosen
    return first_supported(request.cookies.get(LANG_COOKIE)) or services().config["default_locale"]


def _request_translations():  # type: ignore[no-untyped-def]
    """flask_babel.get_translations(), kept in `g` with the locale it is for: a
    force_locale block gets its own, and the page after it the request's again."""
    if not has_app_context():
        return get_translations()
    locale = get_locale()
    cached = g.get("_congvu_translations")
    if cached is None or cached[0] is not locale:
        cached = g._congvu_translations = (locale, get_translations())
    return cached[1]


def init_i18n(app: Flask, instance_dir: Path) -> None:
    directory = compile_catalogs(instance_dir / "translations")
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(directory)
    app.config["BABEL_DEFAULT_LOCALE"] = "vi"
    Babel(app, locale_selector=select_locale)
    # Flask-Babel's template callables look the catalog up again for every message
    # (str(locale), then its cache): a page has a dozen. These keep it for the request.
    app.jinja_env.install_gettext_callables(
        gettext=lambda s: _request_translations().ugettext(s),
        ngettext=lambda s, p, n: _request_translations().ungettext(s, p, n),
        newstyle=True,
        pgettext=lambda c, s: _request_translations().upgettext(c, s),
        npgettext=lambda c, s, p, n: _request_translations().unpgettext(c, s, p, n))

    @app.after_request
    def _remember_language(response):  # type: ignore[no-untyped-def]
        chosen = g.get("lang_cookie")
        if chosen:
            response.set_cookie(LANG_COOKIE, chosen, max_age=365 * 86400, samesite="Lax",
                                secure=request.is_secure, httponly=True)
        return response
