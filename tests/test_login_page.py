"""The sign-in pages (password, second factor) from their per-language copies
(identity/login.py `_plain_page`) are the pages the templates render, byte for byte, in
every language, with and without an interaction; every other page (a message, a name to
fill in, another query, an interaction id of another form) is rendered in full, escaped
as always."""

from __future__ import annotations

import html
from typing import Any

import pytest
from flask import render_template

from identity import login
from identity.i18n import LANG_COOKIE
from tests.helpers import csrf_token, hidden_field

TOKEN = "ImFiY2RlZiI.aGVsbG8.c2lnbmF0dXJl-_"  # the alphabet of Flask-WTF's signed tokens


def full_render(instance: Any, template: str, path: str, locale: str, interaction_id: str) -> str:
    with instance.app.test_request_context(path, headers={"Cookie": f"{LANG_COOKIE}={locale}"}):
        return render_template(template, interaction_id=interaction_id, username="", csrf_token=lambda: TOKEN)


def from_copy(instance: Any, template: str, path: str, locale: str, interaction_id: str,
              monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(login, "generate_csrf", lambda: TOKEN)
    with instance.app.test_request_context(path, headers={"Cookie": f"{LANG_COOKIE}={locale}"}):
        assert login._is_plain_page()
        return login._plain_page(template, interaction_id)


@pytest.mark.parametrize("locale", ["vi", "en"])
@pytest.mark.parametrize(("query", "interaction_id"), [
    ("", ""),
    ("?i=Ab-9_xYz", "Ab-9_xYz"),
    ("?i=" + "z" * 64, "z" * 64),
])
@pytest.mark.parametrize(("template", "page"), [("login.html", "/login"), ("login_mfa.html", "/login/mfa")])
def test_page_from_its_copy_is_the_full_render(instance: Any, monkeypatch: pytest.MonkeyPatch, locale: str,
                                               query: str, interaction_id: str, template: str,
                                               page: str) -> None:
    path = page + query
    expected = full_render(instance, template, path, locale, interaction_id)
    assert f'<html lang="{locale}">' in expected
    assert from_copy(instance, template, path, locale, interaction_id, monkeypatch) == expected  # made
    assert from_copy(instance, template, path, locale, interaction_id, monkeypatch) == expected  # reused
    assert "placeholder" not in expected


def test_each_page_gets_its_own_token_and_interaction(instance: Any) -> None:
    first = instance.client().get("/login?i=first-interaction").get_data(as_text=True)
    second = instance.client().get("/login?i=second-interaction").get_data(as_text=True)

    assert csrf_token(first) != csrf_token(second)
    assert hidden_field(first, "i") == "first-interaction"
    assert hidden_field(second, "i") == "second-interaction"
    assert 'data-submit="/login/passkey?i=second-interaction"' in second
    assert "first-interaction" not in second


@pytest.mark.parametrize(("path", "reason"), [
    ("/login?i=%22%3E%3Cscript%3Ealert(1)%3C/script%3E", "interaction id of another form"),
    ("/login?i=", "empty interaction id"),
    ("/login?i=" + "z" * 65, "interaction id too long"),
    ("/login?i=abc&lang=en", "another query"),
])
def test_other_pages_are_rendered_in_full(instance: Any, path: str, reason: str) -> None:
    with instance.app.test_request_context(path):
        assert not login._is_plain_page(), reason
    page = instance.client().get(path).get_data(as_text=True)
    assert "<script>alert" not in page
    assert "placeholder" not in page
    typed = path.partition("i=")[2].partition("&")[0]
    if typed.startswith("%22"):
        assert html.unescape(hidden_field(page, "i")) == '"><script>alert(1)</script>'


def test_each_script_root_gets_its_own_page(instance: Any) -> None:
    """Behind a proxy that mounts the service under a prefix (SCRIPT_NAME, which gunicorn
    also takes from a trusted peer's header), the page's links carry the prefix of its own
    request, whichever request came first."""
    http = instance.client()
    plain = http.get("/login").get_data(as_text=True)
    prefixed = http.get("/login", environ_overrides={"SCRIPT_NAME": "/sso"}).get_data(as_text=True)
    plain_again = http.get("/login").get_data(as_text=True)

    assert 'action="/login"' in plain and 'action="/login"' in plain_again
    assert 'action="/sso/login"' in prefixed and "/sso/" not in plain_again


def test_page_with_a_name_or_a_message_is_rendered_in_full(instance: Any) -> None:
    with instance.app.test_request_context("/login"):
        assert not login._is_plain_page("an.nv")
        from flask import flash

        flash("message", "error")
        assert not login._is_plain_page()
