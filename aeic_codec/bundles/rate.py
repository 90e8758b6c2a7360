"""Rate control: any lambda between the trained ones, and the best file within a byte budget.

A trained model codes y with quantisation step 1. Coding it with another step (qstep / 256,
format version 4) moves its rate without retraining, as QVRF (Tong et al., 2023) does
with a trained step table: coarser for fewer bytes, finer for more. A ladder puts the
bundles of one variant in order of lambda; each takes the part of the rate axis where its
pictures are the best of the ladder's, found from the rate curve each bundle carries
(``rate_curve`` metadata: bpp and PSNR against qstep on calibration images, written by
``aeic weights calibrate-rate``). A lambda between two bundles' maps to a target rate on
the log-log line between their rates, and so to one bundle and one step; a byte budget
is met by the finest fitting step of the bundle best at the budget's rate for the image
(``budget.fit_budget``), which hands over where that image's pictures cross (``HandoverRule``,
from each calibration image's own curve in ``rate_images``).
docs/architecture.md, section 11, explains the choices.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aeic_codec.format.container import QSTEP_ONE, QSTEP_RANGE
from aeic_codec.runtime.files import atomic_path

from .bundle import (
    BundleError,
    BundleInfo,
    bundles_at,
    find_bundle,
    iter_bundles,
    read_info,
    search_paths,
)

# The steps a bundle without neighbours covers (0.375 .. 4): beyond, the pictures of the
# shipped models stop improving (finer) or fall apart (coarser).
SOLO_RANGE = (96, 1024)
# The steps ``aeic weights calibrate-rate`` measures (0.375 .. 4, about 2**(1/3) apart).
CALIBRATION_STEPS = (96, 128, 160, 200, 256, 320, 400, 512, 640, 800, 1024)
# A handover rule needs this many images calibrated on both bundles; its slope is kept
# in 0 .. MAX_RULE_SLOPE (Kodak: 1.2 from lambda 12 to 64, 1.8 from 64 to 500).
MIN_RULE_IMAGES = 8
MAX_RULE_SLOPE = 3.0


class RateError(ValueError):
    """A rate setting the ladder cannot give (out of range, or no rate curves)."""


@dataclass(frozen=True)
class RateCurve:
    """A bundle's measured rate and quality against its quantisation step."""

    points: tuple[tuple[int, float, float], ...]  # (qstep, bpp, PSNR dB), qstep ascending

    @classmethod
    def from_list(cls, values: Sequence[Sequence[float]]) -> RateCurve:
        points = tuple(sorted((int(q), float(b), float(p)) for q, b, p in values))
        qs = [q for q, _, _ in points]
        if len(points) < 2 or len(set(qs)) != len(qs) or QSTEP_ONE not in qs:
            raise ValueError("a rate curve needs two or more distinct steps, 256 among them")
        if any(b <= 0 for _, b, _ in points):
            raise ValueError("a rate curve's bpp must be positive")
        if any(b2 > b1 for (_, b1, _), (_, b2, _) in itertools.pairwise(points)):
            raise ValueError("a rate curve's bpp must fall as the step grows")
        if points[-1][1] >= points[0][1]:
            raise ValueError("a rate curve's bpp must fall as the step grows")
        if not (QSTEP_RANGE[0] <= qs[0] and qs[-1] <= QSTEP_RANGE[1]):
            raise ValueError(f"rate curve steps must lie in {QSTEP_RANGE[0]}..{QSTEP_RANGE[1]}")
        return cls(points)

    @property
    def q_range(self) -> tuple[int, int]:
        return self.points[0][0], self.points[-1][0]

    @property
    def bpp_range(self) -> tuple[float, float]:
        return self.points[-1][1], self.points[0][1]

    def bpp_at(self, q: float) -> float:
        """bpp at step q, log-linear between the measured steps."""
        return math.exp(
            _interp(math.log(q), [(math.log(a), math.log(b)) for a, b, _ in self.points])
        )

    def psnr_at_bpp(self, bpp: float) -> float:
        return _interp(math.log(bpp), [(math.log(b), p) for _, b, p in reversed(self.points)])

    def q_at_bpp(self, bpp: float) -> float:
        pairs = [(math.log(b), math.log(q)) for q, b, _ in reversed(self.points)]
        return math.exp(_interp(math.log(bpp), pairs))


def _line(points: list[tuple[float, float]], x: float) -> float:
    """y(x) on the broken line through points sorted by x, its end segments extended."""
    if x <= points[0][0]:
        (x0, y0), (x1, y1) = points[0], points[1]
    elif x >= points[-1][0]:
        (x0, y0), (x1, y1) = points[-2], points[-1]
    else:
        (x0, y0), (x1, y1) = next(
            (a, b) for a, b in itertools.pairwise(points) if a[0] <= x <= b[0]
        )
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _interp(x: float, pairs: list[tuple[float, float]]) -> float:
    """Piecewise-linear y(x) through pairs sorted by x, clamped at the ends."""
    if x <= pairs[0][0]:
        return pairs[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(pairs):
        if x <= x1 and x1 > x0:  # equal rates at two steps: the first of them
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pairs[-1][1]


@dataclass(frozen=True)
class Rung:
    """One bundle's part of a ladder: steps q_lo (most bytes) to q_hi (fewest)."""

    info: BundleInfo | None  # None: a model given as such (Ladder.solo)
    q_lo: int
    q_hi: int
    lambda_: float = 0.0


def rate_curve(info: BundleInfo) -> RateCurve | None:
    """The rate curve a bundle carries in its metadata, None without one."""
    import json

    raw = info.metadata.get("rate_curve")
    if not raw:
        return None
    try:
        return RateCurve.from_list(json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{info.path}: malformed rate_curve metadata ({exc})") from exc


@dataclass(frozen=True)
class ImageRate:
    """One calibration image under one bundle: its rate probe and its own rate curve."""

    probe: float  # bpp of y's first quadtree step at step 256 (api._FileCoder.probe)
    curve: RateCurve


def image_rates(info: BundleInfo) -> dict[str, ImageRate] | None:
    """Each calibration image's probe and curve (``rate_images`` metadata), None without."""
    raw = info.metadata.get("rate_images")
    if not raw:
        return None
    try:
        rates = {
            name: ImageRate(float(entry["probe"]), RateCurve.from_list(entry["curve"]))
            for name, entry in json.loads(raw).items()
        }
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BundleError(f"{info.path}: malformed rate_images metadata ({exc})") from exc
    if any(not r.probe > 0 for r in rates.values()):
        raise BundleError(f"{info.path}: malformed rate_images metadata (a probe not above 0)")
    return rates


def mean_curve(images: dict[str, dict[str, Any]]) -> list[list[float]]:
    """[qstep, mean bpp, mean PSNR] of images measured at the same steps
    (``api.measure_rate_curve``'s entries)."""
    rows = [entry["curve"] for entry in images.values()]
    steps = [q for q, _, _ in rows[0]] if rows else []
    if not rows or any([q for q, _, _ in r] != steps for r in rows):
        raise ValueError("rate curves to average need one or more images at the same steps")
    return [
        [q, sum(r[k][1] for r in rows) / len(rows), sum(r[k][2] for r in rows) / len(rows)]
        for k, q in enumerate(steps)
    ]


@dataclass(frozen=True)
class HandoverRule:
    """Where one image's pictures become better from the next bundle than from this one.

    The bpp of that crossing, from the image's rate probe p with this bundle
    (``ImageRate.probe``): ln bpp = intercept + slope * ln p, fitted on the calibration
    images' own crossings and raised by the largest miss, so that no calibration image
    hands over below its crossing (a larger budget then never gives a worse picture
    there). ``typical`` is the calibration images' geometric mean probe.
    """

    intercept: float
    slope: float
    typical: float

    def bpp(self, probe: float) -> float:
        return math.exp(self.intercept + self.slope * math.log(probe))

    @classmethod
    def fit(cls, finer: dict[str, ImageRate], coarser: dict[str, ImageRate]) -> HandoverRule | None:
        """The rule from the images both bundles were calibrated on (None: too few)."""
        names = sorted(set(finer) & set(coarser))
        if len(names) < MIN_RULE_IMAGES:
            return None
        xs = [math.log(finer[n].probe) for n in names]
        ys = [math.log(_handover(finer[n].curve, coarser[n].curve)) for n in names]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        spread = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / spread
        slope = min(max(slope, 0.0), MAX_RULE_SLOPE) if spread > 0 else 0.0
        intercept = max(y - slope * x for x, y in zip(xs, ys, strict=True))
        return cls(intercept, slope, math.exp(mx))


class Ladder:
    """The bundles of one variant with an integer entropy path, in order of lambda.

    With one bundle the ladder is that bundle over SOLO_RANGE (no curve needed); with
    several, every bundle needs a rate curve, and each rung ends where the next bundle's
    pictures become the better ones at the same rate, where the next one starts (no rung
    leaves out its own step 256, so that ``--lambda`` at a bundle's lambda gives that
    bundle as before).
    """

    def __init__(self, bundles: Sequence[BundleInfo]) -> None:
        usable = [b for b in bundles if b.integer_identity and b.lambda_ is not None]
        if not usable:
            raise RateError("no bundle with an integer entropy path and a lambda to choose from")
        variants = {b.variant for b in usable}
        if len(variants) > 1:
            raise RateError(
                f"bundles of several variants ({', '.join(sorted(variants))}); choose one "
                "with --variant or --weights"
            )
        usable.sort(key=lambda b: b.lambda_ or 0.0)
        lambdas = [b.lambda_ for b in usable]
        if len(set(lambdas)) != len(lambdas):
            raise RateError("two bundles of one variant share a lambda; choose with --weights")
        self.curves: list[RateCurve] | None = None
        if len(usable) == 1:
            curve = rate_curve(usable[0])
            lo, hi = curve.q_range if curve else SOLO_RANGE
            self.rungs = [Rung(usable[0], lo, hi, usable[0].lambda_ or 0.0)]
            self.curves = [curve] if curve else None
            self.rules: list[HandoverRule | None] = []
            return
        curves = [rate_curve(b) for b in usable]
        missing = [str(b.path) for b, c in zip(usable, curves, strict=True) if c is None]
        if missing:
            raise RateError(
                "rates between the bundles' own need a rate curve in every bundle "
                f"(aeic weights calibrate-rate); none in {', '.join(missing)}"
            )
        self.curves = [c for c in curves if c is not None]
        handovers = [
            _handover(a, b) for a, b in itertools.pairwise(self.curves)
        ]  # bpp where rung i hands over to rung i + 1
        rungs = []
        for i, (info, curve) in enumerate(zip(usable, self.curves, strict=True)):
            lo, hi = curve.q_range
            if i > 0:
                lo = min(QSTEP_ONE, max(lo, round(curve.q_at_bpp(handovers[i - 1]))))
            if i < len(usable) - 1:
                hi = max(QSTEP_ONE, min(hi, round(curve.q_at_bpp(handovers[i]))))
            rungs.append(Rung(info, lo, hi, info.lambda_ or 0.0))
        self.rungs = rungs
        own = [image_rates(b) for b in usable]
        self.rules = [
            HandoverRule.fit(a, b) if a and b else None for a, b in itertools.pairwise(own)
        ]  # per image, where rung i hands over to rung i + 1 (None: at handovers[i])

    @classmethod
    def solo(cls, model: object) -> Ladder:
        """A ladder of one loaded model over SOLO_RANGE: budgets for a model given as such."""
        if getattr(model, "integer", None) is None:
            raise RateError("a byte budget needs a model with an integer entropy path")
        ladder = cls.__new__(cls)
        ladder.curves = None
        ladder.rungs = [Rung(None, *SOLO_RANGE, float(getattr(model, "lambda_", 0.0) or 0.0))]
        ladder.rules = []
        return ladder

    # ---------------------------------------------------------------- lambda axis
    def _anchors(self) -> list[tuple[float, float]]:
        """(ln lambda, ln bpp at step 256) of each bundle: the line a lambda maps onto."""
        assert self.curves is not None
        return [
            (math.log(r.lambda_), math.log(c.bpp_at(QSTEP_ONE)))
            for r, c in zip(self.rungs, self.curves, strict=True)
        ]

    def _target_bpp(self, lam: float) -> float:
        return math.exp(_line(self._anchors(), math.log(lam)))

    def _lambda_of_bpp(self, bpp: float) -> float:
        """The inverse of _target_bpp (the line is monotone: more lambda, fewer bits)."""
        return math.exp(_line([(y, x) for x, y in reversed(self._anchors())], math.log(bpp)))

    def lambda_range(self) -> tuple[float, float]:
        """The lambdas this ladder can give (a single bundle: its own only)."""
        if len(self.rungs) == 1:
            return self.rungs[0].lambda_, self.rungs[0].lambda_
        assert self.curves is not None
        first, last = self.rungs[0], self.rungs[-1]
        top = self.curves[0].bpp_at(first.q_lo)
        bottom = self.curves[-1].bpp_at(last.q_hi)
        return self._lambda_of_bpp(top), self._lambda_of_bpp(bottom)

    def setting(self, lam: float) -> tuple[BundleInfo, int]:
        """The bundle and step (in 1/256) that give lambda ``lam``."""
        for rung in self.rungs:
            if rung.lambda_ == lam:
                return rung.info, QSTEP_ONE
        lo, hi = self.lambda_range()
        if not lo <= lam <= hi:
            if lo == hi:
                raise RateError(
                    f"lambda {lam:g} needs a ladder of bundles with rate curves; the only "
                    f"bundle found has lambda {lo:g}"
                )
            own = ", ".join(f"{r.lambda_:g}" for r in self.rungs)
            raise RateError(
                f"lambda {lam:g} is outside the range {lo:.3g} .. {hi:.4g} of these bundles "
                f"(their own lambdas: {own})"
            )
        assert self.curves is not None
        bpp = self._target_bpp(lam)
        r = self.start_rung(bpp)
        rung, q = self.rungs[r], round(self.curves[r].q_at_bpp(bpp))
        return rung.info, min(max(q, rung.q_lo), rung.q_hi)

    def start_rung(self, bpp: float) -> int:
        """The rung whose calibrated rates hold ``bpp`` (the last for rates below all)."""
        if self.curves is None:
            return 0
        for i, (rung, curve) in enumerate(zip(self.rungs, self.curves, strict=True)):
            if bpp >= curve.bpp_at(rung.q_hi):
                return i
        return len(self.rungs) - 1


def _handover(finer: RateCurve, coarser: RateCurve) -> float:
    """The bpp below which the coarser bundle's pictures beat the finer one's.

    Scanned from the finer bundle's step-256 rate down on a fine log grid; where the two
    curves do not overlap, the handover sits at the coarser bundle's highest rate.
    """
    top = finer.bpp_at(QSTEP_ONE)
    bottom = max(finer.bpp_range[0], coarser.bpp_at(QSTEP_ONE))
    if bottom >= top:
        return top
    b_hi = coarser.bpp_range[1]
    steps = 200
    for k in range(steps + 1):
        bpp = top * (bottom / top) ** (k / steps)
        if bpp <= b_hi and coarser.psnr_at_bpp(bpp) > finer.psnr_at_bpp(bpp):
            return bpp
    return bottom


def find_ladder(
    weights: str | os.PathLike[str] | None = None, *, variant: str | None = None
) -> Ladder:
    """The ladder of the bundles found (``--weights``, else $AEIC_WEIGHTS and weights/).

    Without ``variant``, that of the default bundle when several variants are found.
    """

    if weights:
        found = bundles_at(weights)
    else:
        found = [b for b in iter_bundles(search_paths()) if isinstance(b, BundleInfo)]
    if variant is not None:
        found = [b for b in found if b.variant.lower() == variant.lower()]
    elif len({b.variant for b in found}) > 1:
        default = find_bundle(weights)  # the default bundle names the default variant
        found = [b for b in found if b.variant == default.variant]
    # A lambda found twice (an installed copy of weights/, or a bundle of one's own in
    # $AEIC_WEIGHTS): the first in search order, as find_bundle picks.
    first: dict[float | None, BundleInfo] = {}
    for b in found:
        first.setdefault(b.lambda_, b)
    return Ladder(list(first.values()))


def resolve_rate(
    weights: str | os.PathLike[str] | None = None,
    *,
    lambda_: float | None = None,
    variant: str | None = None,
) -> tuple[BundleInfo, int]:
    """The bundle and quantisation step (in 1/256) for a lambda, any in the ladder's range.

    A lambda that a bundle was trained at gives that bundle at its own step; another one
    needs a ladder with rate curves. No lambda: the default bundle.
    """
    try:
        return find_bundle(weights, lambda_=lambda_, variant=variant), QSTEP_ONE
    except BundleError as exc:
        if lambda_ is None:
            raise
        missing = exc
    try:
        ladder = find_ladder(weights, variant=variant)
    except RateError as exc:
        raise BundleError(f"{missing} Lambdas between bundles' own: {exc}") from None
    if len(ladder.rungs) == 1:
        raise BundleError(
            f"{missing} A lambda between bundles' own needs two or more bundles with rate curves."
        )
    return ladder.setting(lambda_)


def set_rate_curve(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    images: dict[str, dict[str, Any]],
    provenance: dict[str, Any] | None = None,
) -> str:
    """Write a copy of a bundle carrying measured rate curves; returns its identity.

    ``images`` holds each calibration image's probe and [qstep, bpp, PSNR] rows
    (``api.measure_rate_curve``); the copy carries their mean (``rate_curve``) and the
    images' own (``rate_images``, for the handover rules). The curves are metadata for the
    encoder's rate control: tensors and identity stay as they were, so the copy decodes
    every file the original made.
    """
    from safetensors.torch import load_file, save_file

    curve = mean_curve(images)
    RateCurve.from_list(curve)  # refuse what a ladder could not use
    for entry in images.values():
        RateCurve.from_list(entry["curve"])
        if not entry["probe"] > 0:
            raise ValueError("an image's rate probe must be above 0")
    info = read_info(path)
    try:
        tensors = load_file(str(info.path))
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise BundleError(f"{info.path}: cannot load bundle ({exc})") from exc
    meta = dict(info.metadata, rate_curve=json.dumps(curve), rate_images=json.dumps(images))
    meta["provenance"] = json.dumps(
        dict(info.provenance, rate_curve=provenance or {}), sort_keys=True
    )
    with atomic_path(output) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return info.identity
