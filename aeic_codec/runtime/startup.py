"""Start-up without the garbage collector's passes over everything already loaded.

Importing torch and diffusers' blocks and building a model allocate about a million
long-lived objects and no garbage cycles, yet each of Python's full collections walks all
of them: in ``aeic decode`` of a 768x512 image on two cores they cost about 0.4 s (of
1.4 s beyond ``import torch``). A command defers collection until its first file is done,
then moves what start-up made into the permanent generation (``gc.freeze``) and collects
as usual from there, so a long batch frees its cycles like any program.

Building a model also initialises every weight at random (Kaiming-uniform draws for the
9 M parameters of the shipped decoder) before the bundle overwrites them all;
``skipped_init`` builds modules without those draws.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Any

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


@contextlib.contextmanager
def skipped_init() -> Iterator[None]:
    """Build torch modules inside without default initialisation: their tensors hold garbage.

    Only for a caller that then fills every parameter and buffer (``bundle.load_bundle``
    checks that the bundle has them all). Works through torch's documented override
    mechanism (a TorchFunctionMode sees every torch call made inside and turns the
    initialisers' fills and draws into no-ops); the modules themselves are untouched.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    init = torch.nn.init
    fills = {
        init.uniform_,
        init.normal_,
        init.trunc_normal_,
        init.constant_,
        init.kaiming_uniform_,
        init.kaiming_normal_,
        init.xavier_uniform_,
        init.xavier_normal_,
        torch.Tensor.uniform_,
        torch.Tensor.normal_,
        torch.Tensor.fill_,
        torch.Tensor.zero_,
    }

    class SkipFills(TorchFunctionMode):
        def __torch_function__(
            self,
            func: Callable[..., Any],
            types: tuple[type, ...],
            args: tuple[Any, ...] = (),
            kwargs: dict[str, Any] | None = None,
        ) -> Any:
            kwargs = kwargs or {}
            if func in fills:  # the tensor to fill: the first argument, or named
                return args[0] if args else kwargs["tensor"]
            return func(*args, **kwargs)

    with SkipFills():
        yield
