"""``GET /``: the operator's dashboard, one page of plain HTML, JavaScript and CSS from ``app/dashboard/``.

No build step and nothing from elsewhere: the page loads its two files from ``/dashboard/<name>``
and talks to the API of this gateway only (``GET /jobs``, ``GET /jobs/<id>?wait=``, ``DELETE
/jobs/<id>``, ``GET /workers``); its Content-Security-Policy tells the browser to refuse anything
else, inline scripts included. The page and its files hold no data, so they need no token
(``app/auth.py``): with ``API_TOKENS`` set, the script asks for one when the API answers 401,
keeps it in ``sessionStorage`` and sends it as ``Authorization: Bearer``.
"""

import mimetypes
from pathlib import Path

from flask import Blueprint

#: The browser may run, style and fetch from this gateway only, and frame it nowhere.
#: ``img-src data:`` is for the empty favicon, which spares a request that would be a 404.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)

#: The page and the files it loads: the blueprint's static folder.
FILES = Path(__file__).with_name("dashboard")

bp = Blueprint("dashboard", __name__, static_folder=FILES, static_url_path="/dashboard")


def served_files():
    """``{name: media type}`` of the files ``/dashboard/<name>`` serves (the type Flask sends each with)."""
    return {path.name: mimetypes.guess_type(path.name)[0] for path in sorted(FILES.iterdir()) if path.is_file()}


@bp.get("/")
def index():
    """Serve the dashboard page (the same for everyone: what it shows, it fetches with the caller's token)."""
    return bp.send_static_file("index.html")


@bp.after_request
def _protect(response):
    # For the page and its files alike (this blueprint's static route too): a script can only come
    # from here, so text from the API that slipped into markup could still not run.
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
