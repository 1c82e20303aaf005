"""The operations catalogue: every transform a job can apply, by name.

Importing this package registers the built-in operations (``builtins.py``).
More come from the modules named in the ``OPERATION_MODULES`` setting, which
register theirs with the same :func:`operation` decorator when
:func:`load_modules` imports them. The gateway and every worker load the same
list, so the catalogue they validate against is the one that runs.
"""

import importlib

from workers.operations import builtins  # noqa: F401  (registers the built-ins)
from workers.operations.registry import REGISTRY, Operation, operation, require_columns

__all__ = ["REGISTRY", "Operation", "load_modules", "operation", "require_columns"]


def load_modules(names):
    """Import each module in ``names`` (dotted paths), registering its operations. Idempotent."""
    for name in names:
        importlib.import_module(name)
