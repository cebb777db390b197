"""Finding a class by name among the modules this process has already imported,
running no module code (stored data never makes the process import anything)."""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any


def imported_class(module_name: str, qualname: str) -> type[Any] | None:
    """The class ``qualname`` of the already imported module ``module_name``, or None.

    The lookup is static, through modules and classes only: no module
    ``__getattr__`` (which may import), no property or descriptor code runs.
    """
    obj: Any = sys.modules.get(module_name)
    if obj is None:
        return None
    for part in qualname.split("."):
        if not isinstance(obj, (type, types.ModuleType)) or part.startswith("__"):
            return None
        obj = inspect.getattr_static(obj, part, None)
    return obj if isinstance(obj, type) else None
