"""The dashboard page (``GET /``) and its files: open without a token, nothing from elsewhere, data kept out of markup.

What the page does in a browser is tested in ``tests/faults/test_dashboard.py`` (headless Chromium).
"""

import re
from html.parser import HTMLParser

import pytest

from app import create_app, dashboard

TOKEN = "dashboard-token"


@pytest.fixture
def token_client(redis, celery):
    return create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "API_TOKENS": (TOKEN,)}).test_client()


class References(HTMLParser):
    """Every URL the page names in an attribute (``src``, ``href``...)."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in {"src", "href", "action", "srcset"} and value]


def references(html):
    parser = References()
    parser.feed(html)
    return parser.urls


def test_the_page_and_every_file_it_loads_answer_without_a_token(token_client):
    page = token_client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assets = [url for url in references(page.get_data(as_text=True)) if not url.startswith("data:")]
    assert sorted(assets) == ["/dashboard/dashboard.css", "/dashboard/dashboard.js"]
    types = {}
    for url in assets:
        response = token_client.get(url)
        assert response.status_code == 200, url
        types[url] = response.mimetype
    assert types == {"/dashboard/dashboard.css": "text/css", "/dashboard/dashboard.js": "text/javascript"}
    # ...while the API behind it still needs the token: the page holds no data itself.
    assert token_client.get("/workers").status_code == 401
    assert token_client.get("/jobs").status_code == 401


def test_the_page_loads_nothing_from_another_host(client):
    page = client.get("/")
    for url in references(page.get_data(as_text=True)):
        assert url.startswith(("/dashboard/", "data:")), url
    for name in dashboard.served_files():
        text = client.get(f"/dashboard/{name}").get_data(as_text=True)
        assert not re.search(r"\b(?:https?:)?//[a-z0-9.-]+\.[a-z]", text, re.IGNORECASE), f"{name} names a host"
    # The browser is told so too: scripts, styles and requests from this origin only, no inline script.
    policy = dict(part.strip().split(" ", 1) for part in page.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == policy["style-src"] == policy["connect-src"] == "'self'"


def test_an_unknown_file_is_a_json_404(client):
    for path in ("/dashboard/missing.js", "/dashboard/../auth.py", "/dashboard/%2e%2e/dashboard.py", "/index.html"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.get_json()["error"]["code"] == "not_found"


def test_the_script_puts_no_text_from_the_api_into_markup(client):
    script = client.get("/dashboard/dashboard.js").get_data(as_text=True)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert "textContent" in script


def test_the_document_lists_exactly_the_files_served(client):
    document = client.get("/openapi.json").get_json()
    asset = document["paths"]["/dashboard/{filename}"]["get"]
    assert asset["parameters"][0]["schema"]["enum"] == sorted(dashboard.served_files())
    assert document["paths"]["/"]["get"]["security"] == []
    for name in dashboard.served_files():
        assert client.get(f"/dashboard/{name}").status_code == 200
