"""Optional bearer tokens: who may call the gateway, and whose jobs they see.

With ``API_TOKENS`` empty (the default) the gateway is open and every job is
everyone's. With tokens set, every endpoint but ``/health``, ``/metrics``
(``METRICS_TOKEN`` guards it, ``app/metrics.py``), the API docs (``/docs``,
``/openapi.json``) and the dashboard (``/``, ``/dashboard/<file>``): no data in them, needs
``Authorization: Bearer <token>`` (401 otherwise), and a job belongs to the
token that created it: with any other token it does not exist (404). A job
record keeps only a digest of its owner's token, never the token.
"""

import hashlib
import hmac

from flask import current_app, g, request

from app.errors import error_response

#: Endpoints anyone may call: a load balancer's health check carries no token (its ``?deep=`` form needs one),
#: nor does a Prometheus scrape (``/metrics`` has a token of its own, ``METRICS_TOKEN``, when one is set).
#: The API docs page, its Swagger UI files and the OpenAPI document hold no data, and the page must load the
#: document before its Authorize button can take a token. The dashboard page and its files
#: (``app/dashboard.py``) hold none either: the page's script asks for a token and sends it with each call.
PUBLIC_ENDPOINTS = frozenset(
    {"health.health", "metrics.metrics", "docs.page", "docs.asset", "openapi.openapi", "dashboard.index",
     "dashboard.static"}
)


def digest(token):
    """The owner id stored in a job record for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def current_owner():
    """The owner id of this request's token ("" when tokens are off)."""
    return g.get("owner", "")


def _token_matches(token, tokens):
    # Compare fixed-length digests, every one of them: the time taken says
    # nothing about how much of the token, or which token, matched.
    presented = hashlib.sha256(token.encode()).digest()
    matched = False
    for candidate in tokens:
        matched |= hmac.compare_digest(presented, hashlib.sha256(candidate.encode()).digest())
    return matched


def require_token():
    tokens = current_app.config["API_TOKENS"]
    deep_health = request.endpoint == "health.health" and "deep" in request.args
    if not tokens or (request.endpoint in PUBLIC_ENDPOINTS and not deep_health):
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token and _token_matches(token, tokens):
        g.owner = digest(token)
        return None
    message = (
        "This gateway needs a valid token: send 'Authorization: Bearer <token>'."
        if not token
        else "The token in the Authorization header is not valid here."
    )
    return error_response(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="datajobs"'})


def init_app(app):
    app.before_request(require_token)
