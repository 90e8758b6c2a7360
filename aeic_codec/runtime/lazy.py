"""Packages that re-export their modules' names without importing them all up front.

Each layer's ``__init__`` names what it offers; importing ``aeic_codec.format`` must not
load numpy, nor ``aeic_codec.nn`` torch and diffusers, before a name is used: ``aeic
info`` imports no torch, and encode imports no diffusers (tests/test_startup.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package whose names live in its modules.

    ``exports`` maps each public name to the module (within ``package``) defining it.
    """

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def dir_() -> list[str]:
        return sorted(exports)

    return getattr_, dir_
