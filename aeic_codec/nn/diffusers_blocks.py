"""diffusers' building blocks without the rest of diffusers.

The denoiser and the VAE decoder are made of diffusers' own blocks. Importing any
diffusers module first runs ``diffusers/__init__``, whose ``diffusers.utils`` scans
every installed distribution and imports ``torch._dynamo`` (``utils/torch_utils.py``,
for ``allow_in_graph``; torch itself loads it only for ``torch.compile``). The block
modules then run the initialisers of ``diffusers.models`` and its ``unets``,
``transformers`` and ``autoencoders`` packages, the last three of which import every
model of their kind and, through diffusers' model code, transformers, peft and
accelerate when installed. diffusers has no switch for any of this
(``DIFFUSERS_SLOW_IMPORT`` only makes ``diffusers.models`` eager too). Measured on a
2-core Xeon (diffusers 0.42, torch 2.14), wall seconds beyond ``import torch``: the
block modules imported the ordinary way 4.7 s (3.0 to 3.6 s without transformers, peft
and accelerate, as ``pip install .`` leaves them; ``torch._dynamo`` alone 1.45 s),
imported by ``import_module`` 0.5 to 0.6 s. ``import_module`` imports a block module
with those four package initialisers skipped and those optional integrations hidden
(diffusers checks for each and does without). The blocks are the same classes either
way.

Side effect, for the rest of the process: diffusers then believes transformers, peft
and accelerate are absent (it checks once). A program that needs them through diffusers
should import diffusers before building an aeic decoder; then the blocks come from the
already-imported package and nothing is hidden.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path

# Package initialisers that import every model of their kind; the blocks need none.
SKIPPED_INITS = (
    "diffusers.models",
    "diffusers.models.unets",
    "diffusers.models.transformers",
    "diffusers.models.autoencoders",
)
# Imported by diffusers when installed, used by none of the blocks at inference.
HIDDEN = ("torch._dynamo", "transformers", "peft", "accelerate")


def import_module(name: str) -> types.ModuleType:
    """Import the diffusers module ``name`` (e.g. the UNet blocks) at the cost of its own code.

    Once the real ``diffusers.models`` is loaded, a plain import (it costs nothing more).
    Should a diffusers version need something skipped or hidden here, the lean attempt
    is undone and the module imported the ordinary way: slower, never wrong.
    """
    if name in sys.modules or "diffusers.models" in sys.modules:
        return importlib.import_module(name)
    before = set(sys.modules)
    try:
        with _lean_imports():
            return importlib.import_module(name)
    except Exception:
        for key in set(sys.modules) - before:
            if key == "diffusers" or key.startswith("diffusers."):
                del sys.modules[key]
        return importlib.import_module(name)


@contextlib.contextmanager
def _lean_imports() -> Iterator[None]:
    """Bare stand-ins for SKIPPED_INITS and None for HIDDEN, removed again afterwards."""
    spec = importlib.util.find_spec("diffusers")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("No module named 'diffusers'")
    root = Path(spec.origin).parent
    added: list[str] = []
    try:
        for name in HIDDEN:
            if name not in sys.modules:
                sys.modules[name] = None  # type: ignore[assignment]  # import raises, find_spec: None
                added.append(name)
        for name in SKIPPED_INITS:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = package
            added.append(name)
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)
