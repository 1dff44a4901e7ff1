"""Lazy package attributes (PEP 562): a package names what it exports, the module loads on first use.

Used by ``hivlp_milvus``, ``hivlp_milvus.model`` and ``training`` so importing them stays cheap (no
torch, timm, transformers or pymilvus until a name that needs them is touched). Imports nothing heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, table: dict[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of a package with lazily imported names.

    Args:
        package: the package's ``__name__`` (named in the ``AttributeError``).
        table: exported name -> the module that defines it.
        namespace: the package's ``globals()`` (its eager names, listed by ``dir()`` too).

    Returns:
        ``(__getattr__, __dir__)``, to bind at module level in the package.
    """

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(list(namespace) + list(table))

    return __getattr__, __dir__
