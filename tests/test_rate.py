"""Rate control: ladders of bundles, lambdas between theirs, byte budgets (rate.py, api)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aeic_codec import api
from aeic_codec.bundles.budget import fit_budget, q_grid
from aeic_codec.bundles.bundle import BundleError, BundleInfo, load_bundle, read_info
from aeic_codec.bundles.rate import (
    MIN_RULE_IMAGES,
    SOLO_RANGE,
    Ladder,
    RateCurve,
    RateError,
    find_ladder,
    mean_curve,
    resolve_rate,
)
from aeic_codec.codec.metrics import psnr_u8
from aeic_codec.format.container import unpack
from aeic_codec.nn.config import tiny_config
from tests.conftest import make_image

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "weights").glob("*.safetensors"))
KODIM23 = ROOT / "docs" / "kodim23.png"


def curve_for(lam: float) -> list[list[float]]:
    """A made-up rate curve: bpp falls as q**-0.8 from 0.4 / lam**0.5; PSNR with log bpp."""
    top = 0.4 / lam**0.5
    points = []
    for q in (96, 128, 192, 256, 384, 512, 768, 1024):
        bpp = top * (q / 256) ** -0.8
        points.append([q, bpp, 30 + 3 * math.log(bpp) - 0.2 * math.log(lam)])
    return points


def info(
    lam: float,
    curve: list[list[float]] | None,
    variant: str = "tiny",
    images: dict[str, list[list[float]]] | None = None,
) -> BundleInfo:
    meta = {"integer_identity": f"{int(lam):08x}"}
    if curve is not None:
        meta["rate_curve"] = json.dumps(curve)
    if images is not None:
        meta["rate_images"] = json.dumps(images)
    cfg = dataclasses.replace(tiny_config(), name=variant)
    return BundleInfo(Path(f"b{lam:g}"), f"{int(lam) + 1:08x}", cfg, lam, {}, 0, meta)


def three() -> Ladder:
    return Ladder([info(lam, curve_for(lam)) for lam in (500.0, 12.0, 64.0)])


def test_rate_curves_are_checked() -> None:
    with pytest.raises(ValueError, match="256 among them"):
        RateCurve.from_list([[128, 0.02, 20.0], [512, 0.01, 18.0]])
    with pytest.raises(ValueError, match="must fall"):
        RateCurve.from_list([[128, 0.02, 20.0], [256, 0.03, 18.0]])
    with pytest.raises(ValueError, match="must lie in"):
        RateCurve.from_list([[8, 0.04, 21.0], [256, 0.03, 18.0]])
    with pytest.raises(ValueError, match="must lie in"):
        RateCurve.from_list([[256, 0.03, 21.0], [8192, 0.001, 12.0]])
    curve = RateCurve.from_list(curve_for(12.0))
    assert curve.q_at_bpp(curve.bpp_at(300)) == pytest.approx(300)


def test_a_ladder_gives_each_bundle_its_own_lambda() -> None:
    ladder = three()
    assert [r.lambda_ for r in ladder.rungs] == [12.0, 64.0, 500.0]
    for rung in ladder.rungs:
        assert rung.q_lo <= 256 <= rung.q_hi
        assert ladder.setting(rung.lambda_) == (rung.info, 256)
    lo, hi = ladder.lambda_range()
    assert lo < 12 and hi > 500
    # In lambda order the settings run through the rungs, each from fine to coarse steps.
    order = [
        (ladder.rungs.index(next(r for r in ladder.rungs if r.info is b)), q)
        for b, q in (ladder.setting(lam) for lam in np.geomspace(lo, hi, 60))
    ]
    assert order == sorted(order)
    with pytest.raises(RateError, match="outside the range"):
        ladder.setting(hi * 1.5)


def test_a_ladder_needs_curves_and_one_variant() -> None:
    with pytest.raises(RateError, match="need a rate curve"):
        Ladder([info(12.0, curve_for(12.0)), info(64.0, None)])
    with pytest.raises(RateError, match="several variants"):
        Ladder([info(12.0, curve_for(12.0)), info(64.0, curve_for(64.0), "other")])
    solo = Ladder([info(64.0, None)])
    assert (solo.rungs[0].q_lo, solo.rungs[0].q_hi) == SOLO_RANGE
    with pytest.raises(RateError, match="needs a ladder"):
        solo.setting(30.0)


@pytest.mark.parametrize("scale", [0.4, 1.0, 2.5])
def test_a_budget_gets_the_finest_step_that_fits(scale: float) -> None:
    """Files ``scale`` times the curves' rates: the search stays in the bundle the budget's
    rate picks where that bundle can meet it, takes the finest fitting step of the bundle's
    whole range, and moves to earlier bundles and finer steps only as the budget grows."""
    ladder, pixels = three(), 768 * 512
    assert ladder.curves is not None

    def size(r: int, q: int) -> int:
        return int(pixels * scale * ladder.curves[r].bpp_at(q) / 8) + 20

    choices = []
    for budget in np.geomspace(40, 30000, 45).astype(int):
        made: set[tuple[int, int]] = set()

        def encode(r: int, q: int, made: set[tuple[int, int]] = made) -> bytes:
            made.add((r, q))
            return bytes(size(r, q))

        grids = [q_grid(*c.q_range) for c in ladder.curves]
        if all(size(r, g[-1]) > budget for r, g in enumerate(grids)):
            smallest = size(2, grids[2][-1])
            with pytest.raises(RateError, match=f"smallest file has {smallest} bytes"):
                fit_budget(ladder, int(budget), pixels, encode, ratio=scale)
            continue
        fit = fit_budget(ladder, int(budget), pixels, encode, ratio=scale)
        grid = grids[fit.rung]
        assert len(fit.data) == size(fit.rung, fit.qstep) <= budget
        assert all(size(fit.rung, q) > budget for q in grid if q < fit.qstep)
        start = ladder.start_rung(8 * budget / pixels / scale)
        if size(start, grids[start][-1]) <= budget < size(start, grids[start][0]):
            assert fit.rung == start  # the bundle the rate picks can meet the budget
        assert fit.trials == len(made) <= 8
        assert len({r for r, _ in made}) <= 2
        choices.append((fit.rung, fit.qstep))
    assert choices == sorted(choices, reverse=True) and len(set(choices)) > 10


def test_a_budget_at_the_top_stays_in_the_first_rung() -> None:
    ladder, pixels = three(), 768 * 512
    fit = fit_budget(ladder, 10**6, pixels, lambda r, q: bytes(100 + 1000 // (r + 1)))
    assert (fit.rung, fit.qstep) == (0, ladder.rungs[0].q_lo)


# Two made-up bundles whose pictures cross where an image's own rate says: an image of
# rate scale s has bpp s * TOP[b] * (q / 256)**-0.8 and PSNR 30 + SLOPE[b] * ln(bpp) + OFFSET[b]
# + LIFT[b] * ln s, so the crossing lies at 0.014 * s**1.8, not proportional to s.
TOP, SLOPE, LIFT = (0.03, 0.008), (3.0, 2.0), (0.0, 1.8)
OFFSET = (0.0, math.log(0.014))


def made_up(b: int, s: float, q: float) -> tuple[float, float]:
    bpp = s * TOP[b] * (q / 256) ** -0.8
    return bpp, 30 + SLOPE[b] * math.log(bpp) + OFFSET[b] + LIFT[b] * math.log(s)


def probe_of(b: int, s: float) -> float:
    """A made-up rate probe: a quarter of the bpp at step 256 (as y's first step)."""
    return made_up(b, s, 256)[0] / 4


def made_up_ladder(scales: list[float], per_image: bool) -> Ladder:
    steps = (96, 128, 160, 200, 256, 320, 400, 512, 640, 800, 1024)
    bundles = []
    for b, lam in enumerate((64.0, 500.0)):
        images = {
            f"i{k}": {"probe": probe_of(b, s), "curve": [[q, *made_up(b, s, q)] for q in steps]}
            for k, s in enumerate(scales)
        }
        bundles.append(info(lam, mean_curve(images), images=images if per_image else None))
    return Ladder(bundles)


def budget_quality(ladder: Ladder, s: float, ratio: float) -> tuple[list[float], list[int]]:
    """PSNR of the file each of many budgets gives a 768 x 512 image of scale s, and
    how many probes each search ran."""
    pixels, quality, measured = 768 * 512, [], []
    for budget in np.geomspace(400, 3000, 60).astype(int):
        made: set[tuple[int, int]] = set()

        def encode(r: int, q: int, made: set[tuple[int, int]] = made) -> bytes:
            made.add((r, q))
            return bytes(int(pixels * made_up(r, s, q)[0] / 8))

        probed: list[int] = []

        def probe(r: int, probed: list[int] = probed) -> float:
            probed.append(r)
            return probe_of(r, s)

        fit = fit_budget(ladder, int(budget), pixels, encode, ratio, probe)
        quality.append(made_up(fit.rung, s, fit.qstep)[1])
        measured.append(len(probed))
    return quality, measured


def test_handover_rules_keep_quality_monotone_where_a_mean_handover_does_not() -> None:
    calibration = list(np.geomspace(0.7, 1.3, 9))
    rule = made_up_ladder(calibration, per_image=True)
    assert rule.rules[0] is not None and rule.rules[0].slope == pytest.approx(1.8, abs=0.05)
    for k, s in enumerate(calibration):  # no calibration image hands over below its crossing
        assert rule.rules[0].bpp(probe_of(0, s)) >= 0.014 * s**1.8 * 0.98, k
    mean = made_up_ladder(calibration, per_image=False)
    assert mean.rules == [None]
    drops = {"rule": 0, "mean": 0}
    measured = 0
    for s in (0.75, 0.9, 1.05, 1.2, 1.28):
        for ratio in (s / 1.25, s, s * 1.25):  # rate_ratio misses the image's rate by 25 %
            for name, ladder in (("rule", rule), ("mean", mean)):
                quality, m = budget_quality(ladder, s, ratio)
                drops[name] += any(b < a - 1e-9 for a, b in itertools.pairwise(quality))
                measured += sum(m) if name == "rule" else 0
                assert max(m) <= 1 and (name == "rule" or sum(m) == 0)
    assert drops == {"rule": 0, "mean": drops["mean"]} and drops["mean"] >= 3
    assert measured > 0  # budgets near the handover probed the image with the finer bundle


def test_rate_images_metadata_is_checked() -> None:
    good = {"a": {"probe": 0.01, "curve": curve_for(500.0)}}
    for bad in (
        {"a": {"probe": 0.01, "curve": [[256, 0.01]]}},
        {"a": {"curve": curve_for(64.0)}},
        {"a": {"probe": 0.0, "curve": curve_for(64.0)}},
    ):
        with pytest.raises(BundleError, match="malformed rate_images"):
            Ladder(
                [
                    info(64.0, curve_for(64.0), images=bad),
                    info(500.0, curve_for(500.0), images=good),
                ]
            )
    few = {f"i{k}": {"probe": 0.01, "curve": curve_for(64.0)} for k in range(MIN_RULE_IMAGES - 1)}
    ladder = Ladder(
        [info(64.0, curve_for(64.0), images=few), info(500.0, curve_for(500.0), images=few)]
    )
    assert ladder.rules == [None]
    with pytest.raises(ValueError, match="same steps"):
        mean_curve({"a": {"curve": curve_for(64.0)}, "b": {"curve": curve_for(64.0)[1:]}})


# ------------------------------------------------------------------ shipped bundles


def test_a_bundle_found_twice_counts_once(tmp_path: Path, monkeypatch) -> None:
    """An installed copy of weights/ (or one's own bundle of a shipped lambda) in the
    search path: the first found serves that lambda, as find_bundle picks it."""
    l64 = next(p for p in SHIPPED if p.stem.endswith("l64"))
    (tmp_path / l64.name).write_bytes(l64.read_bytes())
    monkeypatch.setenv("AEIC_WEIGHTS", str(tmp_path))
    ladder = find_ladder()
    assert [r.lambda_ for r in ladder.rungs] == [12.0, 64.0, 500.0]
    assert ladder.rungs[1].info is not None and ladder.rungs[1].info.path.parent == tmp_path
    assert resolve_rate(lambda_=30.0)[1] != 256


def test_a_lambda_beside_a_single_bundle_names_what_it_needs() -> None:
    l12 = next(p for p in SHIPPED if p.stem.endswith("l12"))
    with pytest.raises(BundleError) as caught:
        resolve_rate(l12, lambda_=64.0)
    assert str(caught.value) == (
        f"no bundle with lambda 64 found; searched: {l12}. Available: aeic-small@12. A "
        "lambda between bundles' own needs two or more bundles with rate curves."
    )


@pytest.fixture(scope="module")
def kodim23() -> np.ndarray:
    return np.asarray(Image.open(KODIM23).convert("RGB"))


@pytest.fixture(scope="module")
def l12():
    return load_bundle(next(p for p in SHIPPED if p.stem.endswith("l12")))


def test_shipped_bundles_carry_rate_curves() -> None:
    ladder = Ladder([read_info(p) for p in SHIPPED])
    lo, hi = ladder.lambda_range()
    assert lo <= 8 and hi >= 800
    for lam in (12.0, 64.0, 500.0):
        assert ladder.setting(lam)[1] == 256
    assert len(ladder.rules) == 2 and all(rule is not None for rule in ladder.rules)


def test_a_step_travels_in_the_file(l12, kodim23) -> None:
    image = kodim23[:256, :384]
    own = api.encode_image(image, l12)
    coarse = api.encode_image(image, l12, qstep=448)
    fine = api.encode_image(image, l12, qstep=160)
    assert unpack(own.data).version == 3 and unpack(coarse.data).qstep == 448
    assert len(fine.data) > len(own.data) > len(coarse.data)
    decoded = [api.decode(r.data, l12, precision="fp32") for r in (fine, own, coarse)]
    quality = [psnr_u8(image, d) for d in decoded]
    assert quality[0] > quality[1] > quality[2]
    with pytest.raises(ValueError, match="integer entropy path"):
        api.encode_image(image, l12, qstep=448, integer=False)


def test_budgets_are_never_exceeded_and_more_never_looks_worse(kodim23) -> None:
    ladder = api.load_ladder()
    sizes, quality = [], []
    for budget in (300, 450, 700, 1000, 1500, 2300):
        result = api.encode_image(kodim23, ladder, size=budget)
        assert len(result.data) <= budget
        assert len(result.data) >= 0.85 * budget
        decoder = load_bundle(
            next(p for p in SHIPPED if read_info(p).integer_identity == result.model_id),
            encoder=False,
        )
        sizes.append(len(result.data))
        quality.append(psnr_u8(kodim23, api.decode(result.data, decoder, precision="fp32")))
    assert sizes == sorted(sizes) and quality == sorted(quality)
    small = make_image(100, 150, seed=3)
    for budget in range(60, 400, 23):
        try:
            data = api.encode_image(small, ladder, bpp=8 * budget / (100 * 150)).data
        except RateError as exc:
            assert "smallest file has" in str(exc)
            continue
        assert len(data) <= budget


def _aeic(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aeic_codec.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def test_cli_budget_lambda_and_info(tmp_path: Path) -> None:
    src = tmp_path / "img.png"
    Image.fromarray(make_image(128, 192, seed=2)).save(src)
    out = tmp_path / "img.aeic"
    done = _aeic("encode", str(src), "-o", str(out), "--size", "20", cwd=ROOT)
    assert done.returncode == 1 and not out.exists()
    assert done.stderr.count("\n") == 1 and "smallest file has" in done.stderr
    done = _aeic("encode", str(src), "-o", str(out), "--size", "200", "--lambda", "12", cwd=ROOT)
    assert done.returncode == 2 and not out.exists()
    done = _aeic("encode", str(src), "-o", str(out), "--lambda", "30", "--json", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["qstep"] > 1 and unpack(out.read_bytes()).version == 4
    shown = _aeic("info", str(out), cwd=ROOT).stdout
    assert f"quant. step     {record['qstep']:g}" in shown
    done = _aeic("encode", str(src), "-o", str(out), "-f", "--bpp", "0.05", "--json", cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["bytes"] <= 0.05 * 128 * 192 / 8
    done = _aeic("encode", str(src), "-o", str(out), "-f", "--lambda", "100000", cwd=ROOT)
    assert done.returncode == 2 and "outside the range" in done.stderr


def test_calibrate_rate_keeps_the_identity(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(make_image(64, 96, seed=1)).save(folder / "a.png")
    src = next(p for p in SHIPPED if p.stem.endswith("l500"))
    out = tmp_path / "calibrated.safetensors"
    done = _aeic(
        "weights", "calibrate-rate", str(src), "-o", str(out), "--images", str(folder), cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    before, after = read_info(src), read_info(out)
    assert after.identity == before.identity
    assert after.integer_identity == before.integer_identity
    curve = json.loads(after.metadata["rate_curve"])
    assert [q for q, _, _ in curve] == [96, 128, 160, 200, 256, 320, 400, 512, 640, 800, 1024]
    images = json.loads(after.metadata["rate_images"])
    assert list(images) == ["a.png"] and images["a.png"]["curve"] == curve  # its own = the mean
    assert 0 < images["a.png"]["probe"] < curve[4][1]  # a part of the bpp at step 256
