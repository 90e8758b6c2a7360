"""Start-up without the garbage collector's passes over everything already loaded.

Importing torch and diffusers' blocks and building a model allocate about a million
long-lived objects and no garbage cycles, yet each of Python's full collections walks all
of them: in ``aeic decode`` of a 768x512 image on two cores they cost about 0.4 s (of
1.4 s beyond ``import torch``). A command defers collection until its first file is done,
then moves what start-up made into the permanent generation (``gc.freeze``) and collects
as usual from there, so a long batch frees its cycles like any program.
"""

from __future__ import annotations

import gc

_deferred = False


def defer_collection() -> None:
    """Turn the cyclic collector off for start-up (a no-op where someone else turned it off)."""
    global _deferred
    if gc.isenabled():
        gc.disable()
        _deferred = True


def resume_collection() -> None:
    """End start-up: freeze what it made and turn collection back on (once; cheap after)."""
    global _deferred
    if _deferred:
        gc.freeze()
        gc.enable()
        _deferred = False
