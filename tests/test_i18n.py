"""Vietnamese first, English on request; the Vietnamese catalog is complete."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.pofile import read_po

from tests.helpers import PASSWORD, csrf_token, hidden_field, pkce_pair

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "identity" / "translations" / "vi" / "LC_MESSAGES" / "messages.po"
REDIRECT_URI = "https://rp.example/cb"


def page_language(html: str) -> str:
    match = re.search(r'<html lang="([^"]+)"', html)
    assert match, "no lang attribute on <html>"
    return match.group(1)


def read_catalog():  # type: ignore[no-untyped-def]
    with CATALOG.open("rb") as handle:
        return read_po(handle, locale="vi")


def translation_of(msgid: str) -> str:
    message = read_catalog().get(msgid)
    assert message is not None and message.string, msgid
    return message.string


# -- choosing the language -----------------------------------------------------------------------
def test_login_page_is_vietnamese_by_default(instance) -> None:  # type: ignore[no-untyped-def]
    response = instance.client().get("/login", headers={"Accept-Language": "en-US,en;q=0.9"})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert page_language(html) == "vi"
    assert "Đăng nhập" in html and "Mật khẩu" in html
    assert ">Sign in<" not in html and ">Password<" not in html
    # Accept-Language is deliberately ignored: no cookie is set either.
    assert "congvu_lang" not in response.headers.get("Set-Cookie", "")


def test_lang_parameter_switches_and_is_remembered(instance) -> None:  # type: ignore[no-untyped-def]
    browser = instance.client()
    response = browser.get("/login?lang=en")
    html = response.get_data(as_text=True)
    assert page_language(html) == "en"
    assert "Sign in" in html and "Password" in html and "Đăng nhập" not in html
    cookie = browser.get_cookie("congvu_lang")
    assert cookie is not None and cookie.value == "en"

    # Without the parameter, the cookie keeps English, on other pages too.
    html = browser.get("/login").get_data(as_text=True)
    assert page_language(html) == "en" and "Sign in" in html
    assert page_language(browser.get("/logout").get_data(as_text=True)) == "en"

    # And back.
    html = browser.get("/login?lang=vi").get_data(as_text=True)
    assert page_language(html) == "vi" and "Đăng nhập" in html
    assert page_language(browser.get("/login").get_data(as_text=True)) == "vi"


def test_force_locale_inside_a_request_gets_its_own_catalog(instance) -> None:  # type: ignore[no-untyped-def]
    """Page texts come from a catalog kept for the request (identity/i18n.py): a
    force_locale block (a mail in the recipient's language) must not get a stale one, and
    the page after it must not keep the forced one."""
    from flask import render_template_string
    from flask_babel import force_locale

    with instance.app.test_request_context("/login?lang=vi"):
        assert render_template_string("{{ _('Sign in') }}") == "Đăng nhập"
        with force_locale("en"):
            assert render_template_string("{{ _('Sign in') }}") == "Sign in"
        assert render_template_string("{{ _('Sign in') }}") == "Đăng nhập"


def test_workers_compiling_the_catalogs_at_once_all_start(tmp_path: Path) -> None:
    """gunicorn's workers start together, and each compiles the catalogs when the instance
    folder's copy is missing or older than the source: none may fail (a shared temporary
    file name once made the second rename fail and its worker not boot)."""
    import threading

    from babel.messages.mofile import read_mo

    from identity.i18n import compile_catalogs

    for attempt in range(5):
        target = tmp_path / f"attempt-{attempt}"
        start = threading.Barrier(8)
        errors: list[Exception] = []

        def compile_now(target: Path = target, start: threading.Barrier = start,
                        errors: list[Exception] = errors) -> None:
            start.wait()
            try:
                compile_catalogs(target)
            except Exception as error:  # noqa: BLE001 - collected and asserted below
                errors.append(error)

        threads = [threading.Thread(target=compile_now) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        mo_path = target / "vi" / "LC_MESSAGES" / "messages.mo"
        with mo_path.open("rb") as handle:
            assert read_mo(handle).get("Sign in").string == translation_of("Sign in")
        assert sorted(path.name for path in mo_path.parent.iterdir()) == ["messages.mo"]


def test_unsupported_lang_falls_back_to_vietnamese(instance) -> None:  # type: ignore[no-untyped-def]
    browser = instance.client()
    html = browser.get("/login?lang=fr").get_data(as_text=True)
    assert page_language(html) == "vi"
    assert browser.get_cookie("congvu_lang") is None


def test_language_links_keep_the_query(instance) -> None:  # type: ignore[no-untyped-def]
    html = instance.client().get("/login?i=abc").get_data(as_text=True)
    assert 'hreflang="en"' in html
    link = re.search(r'href="([^"]+)"[^>]*hreflang="en"', html)
    assert link and "i=abc" in link.group(1) and "lang=en" in link.group(1)


def authorize(browser, client_id: str, **extra: str):  # type: ignore[no-untyped-def]
    _verifier, challenge = pkce_pair()
    return browser.get("/authorize", query_string={
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI,
        "scope": "openid", "state": "s", "code_challenge": challenge,
        "code_challenge_method": "S256", **extra})


@pytest.mark.parametrize("ui_locales, expected", [
    ("en", "en"), ("en-GB vi", "en"), ("fr-FR en", "en"), ("vi", "vi"), ("fr", "vi"),
])
def test_ui_locales_chooses_the_login_page_language(instance, ui_locales: str,
                                                    expected: str) -> None:  # type: ignore[no-untyped-def]
    client_id, _secret = instance.add_client(redirect_uris=[REDIRECT_URI])
    browser = instance.client()
    response = authorize(browser, client_id, ui_locales=ui_locales)
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    html = browser.get(response.headers["Location"]).get_data(as_text=True)
    assert page_language(html) == expected
    assert ("Sign in" if expected == "en" else "Đăng nhập") in html
    # ui_locales is the application's wish for this request, not a remembered choice.
    assert browser.get_cookie("congvu_lang") is None
    assert page_language(instance.client().get("/login").get_data(as_text=True)) == "vi"


def test_persons_choice_outranks_ui_locales(instance) -> None:  # type: ignore[no-untyped-def]
    client_id, _secret = instance.add_client(redirect_uris=[REDIRECT_URI])
    browser = instance.client()
    login_url = authorize(browser, client_id, ui_locales="en").headers["Location"]
    assert page_language(browser.get(login_url).get_data(as_text=True)) == "en"
    html = browser.get(login_url + "&lang=vi").get_data(as_text=True)
    assert page_language(html) == "vi"
    assert page_language(browser.get(login_url).get_data(as_text=True)) == "vi"


FAILED_SIGN_IN = ("The username or password is incorrect, or sign-in is paused after too many "
                  "attempts. Try again in a few minutes.")


def test_failed_sign_in_message_is_translated(instance) -> None:  # type: ignore[no-untyped-def]
    instance.add_user("canbo")
    browser = instance.client()
    page = browser.get("/login").get_data(as_text=True)
    response = browser.post("/login", data={"csrf_token": csrf_token(page), "username": "canbo",
                                            "password": PASSWORD + "x", "i": hidden_field(page, "i")})
    assert response.status_code == 303
    html = browser.get(response.headers["Location"]).get_data(as_text=True)
    assert translation_of(FAILED_SIGN_IN) in html
    assert FAILED_SIGN_IN not in html

    browser = instance.client()
    page = browser.get("/login?lang=en").get_data(as_text=True)
    response = browser.post("/login", data={"csrf_token": csrf_token(page), "username": "canbo",
                                            "password": PASSWORD + "x", "i": hidden_field(page, "i")})
    html = browser.get(response.headers["Location"]).get_data(as_text=True)
    assert FAILED_SIGN_IN in html


def test_error_pages_are_translated(instance) -> None:  # type: ignore[no-untyped-def]
    vietnamese = instance.client().get("/no-such-page")
    assert vietnamese.status_code == 404
    assert translation_of("Page not found") in vietnamese.get_data(as_text=True)
    english = instance.client().get("/no-such-page?lang=en")
    assert "Page not found" in english.get_data(as_text=True)


# -- the catalog ------------------------------------------------------------------------------------
def test_every_message_has_a_vietnamese_translation() -> None:
    catalog = read_catalog()
    messages = [m for m in catalog if m.id]
    assert len(messages) >= 20
    for message in messages:
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert all(s and s.strip() for s in strings), f"untranslated: {message.id!r}"
        assert not message.fuzzy, f"fuzzy (not used at run time): {message.id!r}"
    # Placeholders such as %(name)s agree between msgid and msgstr.
    problems = [(m.id, errors) for m, errors in catalog.check()]
    assert problems == []


def test_catalog_has_every_message_of_the_source() -> None:
    """Every string marked for translation in identity/ is in the catalog (run
    `pybabel extract -F babel.cfg` and `pybabel update` when this fails)."""
    method_map = [("identity/**.py", "python"), ("identity/templates/**.html", "jinja2")]
    mapping = (ROOT / "babel.cfg").read_text(encoding="utf-8")
    for pattern, method in method_map:
        assert f"[{method}: {pattern}]" in mapping
    extracted = {}
    for filename, _lineno, message, _comments, _context in extract_from_dir(
            str(ROOT), method_map, keywords=DEFAULT_KEYWORDS):
        msgid = message if isinstance(message, str) else message[0]
        extracted.setdefault(msgid, filename)
    assert len(extracted) >= 20  # the extraction itself works
    known = {m.id if isinstance(m.id, str) else m.id[0] for m in read_catalog() if m.id}
    missing = {msgid: where for msgid, where in extracted.items() if msgid not in known}
    assert missing == {}, "strings not in the Vietnamese catalog"
