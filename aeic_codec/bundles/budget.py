"""Byte budgets: the best file of a ladder's bundles within a number of bytes.

A budget is met by the finest fitting step of one bundle: the bundle best at the budget's
rate for the image, found rung by rung from the finest (``_choose_rung``: where a ladder
has handover rules, ``rate.HandoverRule``, at the image's own crossing, which a probe of
the image with the finer bundle tells), then a search over that bundle's steps that runs
g_a once and only the entropy coding per step (``fit_budget``, ``_search_rung``).
docs/architecture.md, section 11, explains the choices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aeic_codec.format.container import QSTEP_ONE

from .rate import Ladder, RateCurve, RateError

# How far an image's rate probe may lie from the one rate_ratio expects (Kodak: 0.79 to
# 1.41 times): a budget whose handover could lie on either side of it within that spread
# probes the image with the finer bundle before choosing.
RATIO_SPREAD = 1.5
# The settings a budget search tries are these steps: ratio 2**(1/16) apart (about 3 % of
# the bytes; on Kodak a file used 93.8 % of its budget at least), so that a search needs
# few trials (on Kodak 3.1 on average; 3.4 with steps half as far apart).
GRID_PER_OCTAVE = 16


def q_grid(q_lo: int, q_hi: int) -> list[int]:
    """The steps a search tries between q_lo and q_hi: 256 * 2**(k/16), both ends included."""
    k_lo = math.ceil(GRID_PER_OCTAVE * math.log2(q_lo / QSTEP_ONE) - 1e-9)
    k_hi = math.floor(GRID_PER_OCTAVE * math.log2(q_hi / QSTEP_ONE) + 1e-9)
    steps = [round(QSTEP_ONE * 2 ** (k / GRID_PER_OCTAVE)) for k in range(k_lo, k_hi + 1)]
    return sorted({q_lo, *steps, q_hi})


@dataclass
class Fit:
    """The outcome of a budget search: the rung, the step, the file and how many were made."""

    rung: int
    qstep: int
    data: bytes
    trials: int


_FINER, _COARSER = -1, -2  # what _search_rung answers when the fit lies in another rung


def rate_ratio(image: Any) -> float:
    """How many bytes an image is expected to need against the calibration images' mean.

    From the mean luma gradient of the image shrunk 4x: on the 24 Kodak images
    ln(bytes) = 0.343 ln(gradient) + c, which leaves 11 % of spread where the images'
    own is 18 %. Clamped to [0.5, 2]. It only chooses the bundle a budget search runs.
    """
    import numpy as np
    from PIL import Image

    h, w = image.shape[:2]
    small = Image.fromarray(image).convert("L")
    small = small.resize((max(2, w // 4), max(2, h // 4)), Image.Resampling.BOX)
    y = np.asarray(small, dtype=np.float64)
    gradient = np.abs(np.diff(y, axis=0)).mean() + np.abs(np.diff(y, axis=1)).mean()
    ratio = math.exp(_GRADIENT_SLOPE * (math.log(max(gradient, 1e-3)) - _GRADIENT_MEAN_LOG))
    return min(max(ratio, 0.5), 2.0)


_GRADIENT_SLOPE = 0.343  # d ln(bytes) / d ln(gradient), fitted on Kodak (aeic-small-l64)
_GRADIENT_MEAN_LOG = 2.851  # the mean ln(gradient) of the 24 Kodak images


def fit_budget(
    ladder: Ladder,
    budget: int,
    pixels: int,
    encode: Callable[[int, int], bytes],
    ratio: float = 1.0,
    probe: Callable[[int], float] | None = None,
) -> Fit:
    """The finest step of one bundle whose file has at most ``budget`` bytes.

    ``encode(rung, qstep)`` returns the file of a setting (the caller runs g_a once per
    bundle and only the entropy coding per step); ``probe(rung)`` the image's rate probe
    with a bundle (``ImageRate.probe``; without it, handovers sit at the mean curves'
    crossings). The bundle is chosen by ``_choose_rung`` from the budget's rate, the
    image's expected rate (``ratio``, from ``rate_ratio``) and, near a handover with a
    rule, its probe. The search covers the bundle's whole measured step range, beyond its
    rung, so it stays in that bundle unless the budget lies outside the range: when even
    the finest step fits it moves to the bundle before (the better pictures), and when not
    even the coarsest does to the bundle after. A larger budget therefore never chooses a
    later bundle or a coarser step. Raises RateError naming the smallest file when
    nothing fits.
    """
    files: dict[tuple[int, int], bytes] = {}

    def file(r: int, i: int) -> bytes:
        q = _grid(ladder, r)[i]
        if (r, q) not in files:
            files[r, q] = encode(r, q)
        return files[r, q]

    r = _choose_rung(ladder, 8 * budget / pixels, ratio, probe)
    bpp = 8 * budget / pixels / ratio
    last = len(ladder.rungs) - 1
    found = _search_rung(ladder, r, budget, bpp, file, r > 0)
    if found == _FINER:
        while found == _FINER:  # move towards more bytes until a rung's coarsest fails
            r -= 1
            found = _search_rung(ladder, r, budget, bpp, file, r > 0)
        if found == _COARSER:
            r, found = r + 1, 0
    else:
        while found == _COARSER and r < last:
            r += 1
            found = _search_rung(ladder, r, budget, bpp, file, False)
    if found < 0:
        raise RateError(
            f"a budget of {budget} bytes is too small for this image: its smallest file "
            f"has {len(file(r, len(_grid(ladder, r)) - 1))} bytes"
        )
    q = _grid(ladder, r)[found]
    return Fit(r, q, files[r, q], len(files))


def _choose_rung(
    ladder: Ladder, bpp: float, ratio: float, probe: Callable[[int], float] | None
) -> int:
    """The rung a budget of ``bpp`` starts in.

    Rung by rung from the finest: a handover without a rule (or without ``probe``) sits
    at the mean curves' crossing, scaled by ``ratio``; with a rule (``HandoverRule``) at
    the image's own crossing, which needs its probe with the finer bundle (its g_a, h_s
    and one context step). The probe runs only when the crossing could lie on either side
    of the budget for probes within RATIO_SPREAD of the expected one; the crossing found
    is clamped to that range, so the choice stays a threshold on the budget and a larger
    budget never starts in a later rung.
    """
    if ladder.curves is None:
        return 0
    for k, (rule, curve) in enumerate(zip(ladder.rules, ladder.curves, strict=False)):
        if rule is None or probe is None:
            if bpp / ratio >= curve.bpp_at(ladder.rungs[k].q_hi):
                return k
            continue
        expected = rule.typical * ratio
        lo, hi = rule.bpp(expected / RATIO_SPREAD), rule.bpp(expected * RATIO_SPREAD)
        if bpp >= hi:
            return k
        if bpp >= lo and bpp >= min(max(rule.bpp(probe(k)), lo), hi):
            return k
    return len(ladder.rungs) - 1


def _grid(ladder: Ladder, r: int) -> list[int]:
    """The steps a budget search tries in rung r's bundle: its whole measured range."""
    rung = ladder.rungs[r]
    lo, hi = ladder.curves[r].q_range if ladder.curves is not None else (rung.q_lo, rung.q_hi)
    return q_grid(lo, hi)


def _search_rung(
    ladder: Ladder,
    r: int,
    budget: int,
    bpp: float,
    file: Callable[[int, int], bytes],
    finer: bool,
) -> int:
    """The grid index of rung r's finest fitting step, or _FINER / _COARSER (see fit_budget).

    The first trial is the step the bundle's curve expects for ``bpp`` (the budget's rate
    scaled to the calibration images' by ``rate_ratio``). Then a secant on
    log bytes against the grid index (the curve's slope until two trials give one) aims
    at the budget, inside the bracket of the known fitting and non-fitting steps; two
    trials in a row on one side of it give a bisection instead, which bounds the search.
    Three to five files find most steps.
    """
    grid = _grid(ladder, r)
    curve = ladder.curves[r] if ladder.curves is not None else None
    k = _nearest(grid, curve.q_at_bpp(bpp) if curve is not None else QSTEP_ONE)
    # d ln(bytes) / d index: bytes fall by the curve's slope per octave of the step.
    default = -(0.7 if curve is None else _slope(curve, grid[k])) * math.log(2) / GRID_PER_OCTAVE
    lo, hi = -1, len(grid)  # the largest index known not to fit, the least known to fit
    seen: list[tuple[int, float, bool]] = []
    while True:
        miss = math.log(len(file(r, k)) / budget)
        fits = miss <= 0
        seen.append((k, miss, fits))
        if fits:
            hi = min(hi, k)
        else:
            lo = max(lo, k)
        if hi - lo <= 1:
            break
        slope = default
        if len(seen) >= 2 and seen[-1][0] != seen[-2][0]:
            measured = (seen[-1][1] - seen[-2][1]) / (seen[-1][0] - seen[-2][0])
            slope = measured if measured < 0 else default
        if (
            len(seen) >= 3
            and seen[-1][2] == seen[-2][2] == seen[-3][2]
            and 0 <= lo < hi < len(grid)
        ):
            k = (lo + hi) // 2  # the secant keeps landing on one side: halve the bracket
        else:
            k = math.ceil(k - miss / slope - 1e-9)  # the first index expected to fit
        k = min(max(k, lo + 1, 0), hi - 1, len(grid) - 1)
    if hi == 0:
        return _FINER if finer else 0
    if hi == len(grid):
        return _COARSER
    return hi


def _nearest(grid: list[int], q: float) -> int:
    """The index of the grid step nearest to q (in ratio)."""
    return min(range(len(grid)), key=lambda i: abs(math.log(grid[i] / q)))


def _slope(curve: RateCurve, q: float) -> float:
    """-d ln bpp / d ln q of the curve near q (at least 0.2)."""
    a, b = q / 1.1, q * 1.1
    return max(0.2, math.log(curve.bpp_at(a) / curve.bpp_at(b)) / math.log(b / a))
