"""``GET /operations``: the catalogue, from the registry the workers use."""

from flask import Blueprint

from workers.operations import REGISTRY

bp = Blueprint("operations", __name__)


@bp.get("/operations")
def catalogue():
    """List every operation with its description and JSON Schema parameters."""
    return {"operations": REGISTRY.catalogue()}
