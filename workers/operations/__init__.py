"""The operations catalogue: every transform a job can apply, by name.

Importing this package registers the built-in operations (``builtins.py``).
"""

from workers.operations import builtins  # noqa: F401  (registers the built-ins)
from workers.operations.registry import REGISTRY, Operation, operation, require_columns

__all__ = ["REGISTRY", "Operation", "operation", "require_columns"]
