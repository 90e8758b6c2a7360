"""The ``aeic`` command line and the batch plumbing beneath it."""

from __future__ import annotations

from aeic_codec.runtime.lazy import lazy_exports

from .app import main as main

_EXPORTS = {
    "COMMANDS": "app",
    "main": "app",
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
    "BatchOptions": "coding",
    "Coding": "coding",
    "Direction": "coding",
    "Reporter": "coding",
    "batch_options": "coding",
    "plan": "coding",
    "refuse_terminal": "coding",
    "DEVICES": "common",
    "INTERRUPTED": "common",
    "Refused": "common",
    "debug_option": "common",
    "device_option": "common",
    "error": "common",
    "fail_hard": "common",
    "on_terminal": "common",
    "refuse": "common",
    "shown": "common",
    "DECODING": "decode_command",
    "decode": "decode_command",
    "ENCODING": "encode_command",
    "LAMBDA_HELP": "encode_command",
    "encode": "encode_command",
    "info": "info_command",
    "train": "train_command",
    "weights": "weights_commands",
    "weights_calibrate_rate": "weights_commands",
    "weights_import": "weights_commands",
    "weights_integerize": "weights_commands",
    "weights_list": "weights_commands",
    "weights_set_grid": "weights_commands",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
