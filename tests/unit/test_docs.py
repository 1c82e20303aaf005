"""``GET /docs``: Swagger UI over ``/openapi.json``, every file of it served by the gateway itself."""

import re
from html.parser import HTMLParser

import pytest
from swagger_ui_bundle import swagger_ui_path

from app import create_app, docs

TOKEN = "docs-token"


class _Links(HTMLParser):
    """Every URL a page makes the browser load (``src`` and ``href``), its data attributes, and its inline scripts."""

    def __init__(self):
        super().__init__()
        self.urls, self.data, self.scripts, self._in_script = [], {}, [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [attrs[name] for name in ("src", "href") if name in attrs]
        self.data.update({name: value for name, value in attrs.items() if name.startswith("data-")})
        self._in_script = tag == "script" and "src" not in attrs

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.scripts.append(data)

    def handle_endtag(self, tag):
        self._in_script = False


def links(html):
    parser = _Links()
    parser.feed(html)
    return parser


def test_the_page_is_swagger_ui_over_the_document_with_every_file_from_the_gateway(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    page = links(response.get_data(as_text=True))
    assert page.data["data-url"] == "/openapi.json"
    assert sorted(page.urls) == ["/docs/favicon-32x32.png", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"]
    assert not re.search(r"(?i)\b(https?:)?//", response.get_data(as_text=True))  # no other host, not even a CDN
    for url in page.urls:  # and each of them is there
        assert client.get(url).status_code == 200, url


def test_the_pages_script_is_the_only_inline_one_and_the_csp_allows_it_alone(client):
    response = client.get("/docs")
    policy = dict(part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"  # the document and "Try it out" calls go to this gateway only
    [script] = links(response.get_data(as_text=True)).scripts
    assert script == docs._START and "validatorUrl: null" in script  # the document is not sent out for a badge
    sources = policy["script-src"].split()
    assert sources[0] == "'self'" and len(sources) == 2 and sources[1].startswith("'sha256-")


def test_swagger_ui_is_one_that_renders_openapi_3_1(client):
    # Swagger UI 4 answers an OpenAPI 3.1 document with "Unable to render this definition".
    assert re.fullmatch(r"swagger-ui-(\d+)\.\d+\.\d+", swagger_ui_path.name)
    assert int(swagger_ui_path.name.split("-")[2].split(".")[0]) >= 5
    assert client.get("/openapi.json").get_json()["openapi"].startswith("3.1")


def test_an_asset_is_served_from_the_package_with_its_type(client):
    script = client.get("/docs/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert script.mimetype in ("text/javascript", "application/javascript")
    assert script.get_data() == (swagger_ui_path / "swagger-ui-bundle.js").read_bytes()
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    style = client.get("/docs/swagger-ui.css")
    assert (style.status_code, style.mimetype) == (200, "text/css")


@pytest.mark.parametrize(
    "path",
    [
        "/docs/nope.js",
        "/docs/index.html",  # the distribution's own page opens the Petstore example from the network
        "/docs/index.j2",
        "/docs/swagger-ui.css.map",
        "/docs/..%2F__init__.py",
        "/docs/%2E%2E",
        "/docs/",
    ],
)
def test_anything_else_under_docs_is_404_in_the_error_shape(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_with_tokens_the_docs_and_the_document_need_none_but_the_api_does(redis, celery):
    client = create_app({"TESTING": True, "REDIS": redis, "CELERY": celery, "API_TOKENS": (TOKEN,)}).test_client()
    assert client.get("/docs").status_code == 200
    assert client.get("/docs/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs/nope.js").status_code == 404  # not 401: nothing behind it is secret
    assert client.get("/openapi.json").get_json()["paths"]["/docs"]["get"]["security"] == []
    assert client.get("/operations").status_code == 401
    assert client.get("/health", query_string={"deep": "true"}).status_code == 401  # the deep check still needs one
