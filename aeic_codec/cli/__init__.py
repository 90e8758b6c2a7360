"""The ``aeic`` command line and the batch plumbing beneath it."""

from __future__ import annotations

from aeic_codec.runtime.lazy import lazy_exports

from .app import main as main

_EXPORTS = {
    "DEVICES": "app",
    "INTERRUPTED": "app",
    "LAMBDA_HELP": "app",
    "decode": "app",
    "encode": "app",
    "info": "app",
    "main": "app",
    "train": "app",
    "weights": "app",
    "weights_calibrate_rate": "app",
    "weights_import": "app",
    "weights_integerize": "app",
    "weights_list": "app",
    "weights_set_grid": "app",
    "DecodeWork": "batch",
    "EXPECTED": "batch",
    "EncodeWork": "batch",
    "Outcome": "batch",
    "Task": "batch",
    "TaskFailed": "batch",
    "preflight": "batch",
    "read_source": "batch",
    "run": "batch",
    "write_target": "batch",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
