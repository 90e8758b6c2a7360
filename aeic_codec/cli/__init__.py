"""The ``aeic`` command line and the batch plumbing beneath it.

Public here are the click group ``main`` and its commands; the modules (``app``, ``common``,
``coding``, ``*_command``, ``batch``) are the plumbing between them and ``aeic_codec.api``.
"""

from __future__ import annotations

from aeic_codec.runtime.lazy import lazy_exports

from .app import main as main

_EXPORTS = {
    "main": "app",
    "decode": "decode_command",
    "encode": "encode_command",
    "info": "info_command",
    "train": "train_command",
    "weights": "weights_commands",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
