"""``GET /docs``: interactive API docs, Swagger UI over ``GET /openapi.json``.

Swagger UI's files come from the installed package (``swagger_ui_bundle``, the official
``swagger-ui-dist`` repackaged) and are served here from ``/docs/<file>``: the page loads
nothing from any other host. The page and its files hold no data, so, like the document
they read, they need no token (``app/auth.py``); Swagger's Authorize button takes one for
the calls made with "Try it out".
"""

import base64
import functools
import hashlib

from flask import Blueprint, send_from_directory, url_for
from markupsafe import escape
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import NotFound

bp = Blueprint("docs", __name__)

#: The kinds of file of Swagger UI's distribution served, with the type each is served as. Its
#: HTML pages are not: its ``index.html`` opens the Petstore example from the network.
ASSET_TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}
#: The files the page itself loads.
CSS, SCRIPT, ICON = "swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"

# Reads its settings from the page, so it is the same text whatever the URLs: the CSP allows it by its hash.
# No validatorUrl: Swagger UI would send the document to validator.swagger.io for a badge.
_START = (
    'const root = document.getElementById("swagger-ui");'
    'window.ui = SwaggerUIBundle({url: root.dataset.url, domNode: root, validatorUrl: null, deepLinking: true});'
)

#: Scripts: Swagger UI's file and the start above; styles and images from here (Swagger UI's icons
#: are data: URIs); requests only back to the gateway (the document, and "Try it out").
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        f"script-src 'self' 'sha256-{base64.b64encode(hashlib.sha256(_START.encode()).digest()).decode()}'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>datajobs API</title>
<link rel="stylesheet" href="{css}">
<link rel="icon" type="image/png" href="{icon}">
</head>
<body>
<div id="swagger-ui" data-url="{document}"></div>
<script src="{script}"></script>
<script>{start}</script>
</body>
</html>
"""


@functools.cache
def served_files():
    """``{name: media type}`` of the Swagger UI files ``/docs/<file>`` serves (the installed package's, read once)."""
    paths = sorted(swagger_ui_path.iterdir(), key=lambda path: path.name)
    return {path.name: ASSET_TYPES[path.suffix] for path in paths if path.is_file() and path.suffix in ASSET_TYPES}


def _asset_url(name):
    return escape(url_for("docs.asset", filename=name))


@bp.get("/docs")
def page():
    """The Swagger UI page, reading ``/openapi.json``."""
    html = _PAGE.format(
        css=_asset_url(CSS),
        icon=_asset_url(ICON),
        script=_asset_url(SCRIPT),
        document=escape(url_for("openapi.openapi")),
        start=_START,
    )
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}
    return html, 200, {"Content-Type": "text/html; charset=utf-8", **headers}


@bp.get("/docs/<filename>")
def asset(filename):
    """One file of Swagger UI's distribution; any other name is 404 ``not_found``."""
    media_type = served_files().get(filename)
    if media_type is None:
        raise NotFound()
    response = send_from_directory(swagger_ui_path, filename, mimetype=media_type)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
