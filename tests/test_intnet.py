"""The integer entropy path: exact against a numpy int64 reference, the same everywhere.

``NumpyOps`` recomputes every operation of docs/format.md ("Integer entropy path") with
numpy int64 and Python integers, summing in other orders than the torch path (reversed
inputs, tap by tap, ``math.isqrt`` per pixel); only the wiring of the blocks
(``intnet.hyper_synthesis`` / ``context_params``) is shared.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aeic_codec import api
from aeic_codec.bundles.bundle import BundleError, load_bundle, read_info, save_bundle
from aeic_codec.cli import main
from aeic_codec.codec.model import AEIC, latent_size
from aeic_codec.entropy_models import kernels, ops
from aeic_codec.entropy_models.intnet import context_params, hyper_synthesis
from aeic_codec.entropy_models.ops import Act, IntOps
from aeic_codec.format.coder import StreamDecoder, StreamEncoder
from aeic_codec.format.container import FormatError, pack, unpack
from aeic_codec.latent_codecs.base import hyper_size
from aeic_codec.nn.config import tiny_config
from aeic_codec.nn.context import STEPS, step_masks
from aeic_codec.tools.integerize import integer_cost, integerize_bundle, padded

from .conftest import make_image

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "weights").glob("*.safetensors"))
LO, HI = -(1 << 15), (1 << 15) - 1


def _np(a: Act) -> np.ndarray:
    return a.v.numpy().astype(np.int64)


def _act(v: np.ndarray, f: int) -> Act:
    return Act(torch.from_numpy(np.ascontiguousarray(v)), f)


def _exact(a: Act) -> Act:
    """IntOps' form of an activation: the same integers in float64."""
    return Act(a.v.double(), a.f)


def _round_shift(v: np.ndarray, k: int) -> np.ndarray:
    return (v + (1 << (k - 1))) >> k if k > 0 else v * (1 << -k)


class NumpyOps:
    """docs/format.md's integer operations in numpy int64, summed in other orders."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.t = {k: v.numpy().astype(np.int64) for k, v in tensors.items()}

    def exp(self, site: str) -> int:
        return int(self.t[f"exp.{site}"][0])

    def _requant(self, acc: np.ndarray, name: str) -> np.ndarray:
        mult, shift = self.t[f"{name}.multiplier"], self.t[f"{name}.shift"]
        return np.clip((acc * mult + (np.int64(1) << (shift - 1))) >> shift, LO, HI)

    def linear(self, name: str, x: Act, sites: tuple[str, ...]) -> list[Act]:
        w, b = self.t[f"{name}.weight"], self.t[f"{name}.bias"]
        acc = b + _np(x)[..., ::-1] @ w[:, ::-1].T  # int64 matmul, inputs reversed
        out = self._requant(acc, name)
        parts = np.split(out, len(sites), axis=-1)
        return [_act(p, self.exp(s)) for p, s in zip(parts, sites, strict=True)]

    def conv3x3(self, name: str, x: Act, site: str) -> Act:
        v = _np(x)
        n, h, w, c = v.shape
        weight = self.t[f"{name}.weight"].reshape(-1, 3, 3, c)
        p = np.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0)))
        acc = np.broadcast_to(self.t[f"{name}.bias"], (n, h, w, len(weight))).copy()
        for dy in (2, 1, 0):
            for dx in (2, 1, 0):
                acc += p[:, dy : dy + h, dx : dx + w] @ weight[:, dy, dx].T
        return _act(self._requant(acc, name), self.exp(site))

    def depthwise(self, name: str, x: Act, site: str) -> Act:
        v = _np(x)
        _, h, w, _ = v.shape
        weight = self.t[f"{name}.weight"]
        kh, kw = weight.shape[1:]
        p = np.pad(v, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
        acc = np.zeros_like(v)
        for dy in reversed(range(kh)):
            for dx in reversed(range(kw)):
                acc += p[:, dy : dy + h, dx : dx + w] * weight[:, dy, dx]
        return _act(self._requant(acc + self.t[f"{name}.bias"], name), self.exp(site))

    def layernorm(self, name: str, x: Act) -> Act:
        v = _np(x)
        c = v.shape[-1]
        eps = int(self.t[f"{name}.eps"][0])
        gain, offset = self.t[f"{name}.gain"], self.t[f"{name}.offset"]
        shift = int(self.t[f"{name}.shift"][0])
        out = np.empty_like(v)
        for idx in np.ndindex(*v.shape[:-1]):
            px = [int(a) for a in v[idx]]
            mu = (2 * sum(px) + c) // (2 * c)
            d = [a - mu for a in px]
            r = math.isqrt((1 << 48) * c // (sum(e * e for e in d) + c * eps))
            out[idx] = [
                min(max((e * r * int(g) + int(o) + (1 << (shift - 1))) >> shift, LO), HI)
                for e, g, o in zip(d, gain, offset, strict=True)
            ]
        return _act(out, self.exp(name))

    def gelu(self, x: Act) -> Act:
        return _act(self.t[f"gelu.{x.f}"][_np(x) + (1 << 15)], x.f)

    def mul(self, site: str, a: Act, b: Act) -> Act:
        f = self.exp(site)
        return _act(np.clip(_round_shift(_np(a) * _np(b), a.f + b.f - f), LO, HI), f)

    def rescale(self, site: str, x: Act) -> Act:
        f = self.exp(site)
        return _act(np.clip(_round_shift(_np(x), x.f - f), LO, HI), f)

    def add(self, site: str, x: Act, r: Act) -> Act:
        return _act(np.clip(_np(self.rescale(site, x)) + _np(r), LO, HI), r.f)


def reference_decode(model: AEIC, data: bytes) -> tuple[list[np.ndarray], np.ndarray, bytes]:
    """Decode a version 3 or 4 file's entropy parameters with NumpyOps, checking IntOps.

    Returns every step's (mean, scale) pairs concatenated, y_hat and the digest.
    """
    import hashlib

    f = unpack(data)
    ie = model.integer
    cfg = model.cfg
    ref = NumpyOps(ie.tensors)
    ops = IntOps(ie.tensors)
    y_size = latent_size(f.height, f.width)
    zh, zw = hyper_size(y_size)
    c = cfg.hyper_channels
    ids = np.repeat(np.arange(c), zh * zw)
    z_sym = StreamDecoder(f.streams[0]).decode(ids, model.z_tables).reshape(1, c, zh, zw)
    f_z, f_ctx = ref.exp("z"), ref.exp("ctx")
    med = ref.t["z_median"].reshape(1, -1, 1, 1)
    z_hat = np.clip(np.clip(z_sym, -(1 << 16), 1 << 16) * (1 << f_z) + med, LO, HI)
    z_act = _act(z_hat.transpose(0, 2, 3, 1), f_z)
    base = hyper_synthesis(ref, z_act, cfg, y_size)
    assert torch.equal(hyper_synthesis(ops, _exact(z_act), cfg, y_size).v, base.v.double())
    ctx = _np(base)  # NHWC
    masks = step_masks(cfg.latent_channels, *y_size, torch.device("cpu"))
    thresholds = ref.t["scale_thresholds"]
    digest = hashlib.sha256()
    y_hat = np.zeros(ctx.shape, dtype=np.float64)
    params = []
    for k in range(STEPS):
        mean, scale = context_params(ref, k, _act(ctx, f_ctx), cfg)
        mine = context_params(ops, k, _exact(_act(ctx, f_ctx)), cfg)
        assert torch.equal(mine[0].v, mean.v.double()) and torch.equal(mine[1].v, scale.v.double())
        mean, scale = _np(mean), _np(scale)
        mask = masks[k][0].permute(1, 2, 0).numpy()[None]
        # C order of (M, h, w): transpose NHWC to NCHW before selecting.
        m_sel = mean.transpose(0, 3, 1, 2)[mask.transpose(0, 3, 1, 2)]
        s_sel = scale.transpose(0, 3, 1, 2)[mask.transpose(0, 3, 1, 2)]
        digest.update(m_sel.astype("<i2").tobytes() + s_sel.astype("<i2").tobytes())
        # A step q / 256 divides the scales by q / 256: compare scale * 256 with t * q.
        q = f.qstep
        coded = s_sel * 256 >= thresholds[0] * q
        tables = (s_sel[coded, None] * 256 >= thresholds[None, 1:] * q).sum(1)
        values = StreamDecoder(f.streams[k + 1]).decode(tables, model.y_tables)
        sym = np.zeros(s_sel.shape, dtype=np.int64)
        sym[coded] = values
        sym_full = np.zeros(mean.transpose(0, 3, 1, 2).shape, dtype=np.int64)
        sym_full[mask.transpose(0, 3, 1, 2)] = sym
        sym_full = sym_full.transpose(0, 2, 3, 1)
        v = np.clip(sym_full, -(1 << 16), 1 << 16) * q  # sym * q / 256 at exponent f_ctx:
        v = v << (f_ctx - 8) if f_ctx >= 8 else (v + (1 << (7 - f_ctx))) >> (8 - f_ctx)
        ctx = np.where(mask, np.clip(v + mean, LO, HI), ctx)
        y_hat = np.where(mask, sym_full * (q / 256) + mean * 2.0**-f_ctx, y_hat)
        params += [m_sel, s_sel]
    return params, y_hat.transpose(0, 3, 1, 2).astype(np.float32), digest.digest()


# ------------------------------------------------------------------------- fixtures


def _calibration() -> list[np.ndarray]:
    return [make_image(96, 128, seed=s) for s in range(3)]


@pytest.fixture(
    scope="module",
    params=[("int8", "16"), ("fp32", "16"), ("fp32", "8")],
    ids=["int8", "w16", "w8"],
)
def int_bundle(request, tmp_path_factory) -> Path:
    """A tiny bundle with an integer path: the bundle's int8 weights used as they are, or
    float weights made 16-bit or 8-bit integers."""
    torch.manual_seed(5)
    dtype, plan = request.param
    folder = tmp_path_factory.mktemp(f"int-{dtype}-{plan}")
    src = folder / "float.safetensors"
    save_bundle(src, AEIC(tiny_config()), lambda_=8.0, encoder_dtype=dtype)
    out = folder / "tiny-l8.safetensors"
    integerize_bundle(src, out, _calibration(), source="generated", weights=plan)
    return out


def _encode(model: AEIC, image: np.ndarray, **kw) -> api.EncodeResult:
    return api.encode_image(image, model, **kw)


# ------------------------------------------------------------------------- exactness


def test_integer_path_equals_the_numpy_reference(int_bundle):
    model = load_bundle(int_bundle, decoder=False)
    image = make_image(150, 200, seed=9)
    result = _encode(model, image)
    assert unpack(result.data).version == 3
    params, y_hat, digest = reference_decode(model, result.data)
    assert digest == result.digest
    assert np.array_equal(y_hat, result.y_hat.numpy())
    assert sum(int((p != 0).sum()) for p in params) > 0  # not a vacuous comparison
    assert model.decompress(unpack(result.data).streams, latent_size(150, 200)).digest == digest


@pytest.mark.parametrize("qstep", [16, 100, 384, 4096])
def test_other_quantisation_steps_equal_the_numpy_reference(int_bundle, qstep):
    model = load_bundle(int_bundle, decoder=False)
    image = make_image(150, 200, seed=9)
    result = _encode(model, image, qstep=qstep)
    assert unpack(result.data).version == 4 and unpack(result.data).qstep == qstep
    _, y_hat, digest = reference_decode(model, result.data)
    assert digest == result.digest
    assert np.array_equal(y_hat, result.y_hat.numpy())
    assert _encode(model, image, qstep=qstep, verify=True).data == result.data


def test_shipped_bundles_equal_the_numpy_reference():
    assert len(SHIPPED) == 3
    image = np.asarray(Image.open(ROOT / "docs" / "kodim23.png").convert("RGB"))[:128, :192]
    for path in SHIPPED:
        model = load_bundle(path, decoder=False)
        assert model.integer is not None, f"{path.name} has no integer entropy path"
        for qstep in (256, 448):
            result = _encode(model, image, qstep=qstep)
            _, y_hat, digest = reference_decode(model, result.data)
            assert digest == result.digest, path.name
            assert np.array_equal(y_hat, result.y_hat.numpy()), path.name


@pytest.mark.parametrize("terms", [510, 2048])  # digits recombined in int32 / in float64
@pytest.mark.parametrize("weight_bits", [8, 16])
def test_digit_gemm_is_exact_at_the_extremes(weight_bits, terms):
    rng = np.random.default_rng(5)
    flat = rng.integers(-(1 << 15), 1 << 15, size=(33, terms))
    flat[0], flat[1], flat[2, ::2] = -(1 << 15), (1 << 15) - 1, -(1 << 15)
    top = 1 << (weight_bits - 1)
    w = rng.integers(-top + 1, top, size=(terms, 7))
    w[:, 0], w[:, 1], w[::2, 2] = -top + 1, top - 1, -top + 1
    bias = rng.integers(-(1 << 45), 1 << 45, size=7)
    expected = flat @ w + bias  # numpy int64: below 2**60, exact
    weights = kernels.byte_weights(torch.from_numpy(w).double(), torch.from_numpy(bias).double())
    assert weights.wide == (weight_bits == 16)
    got = kernels.digit_gemm(torch.from_numpy(flat).double(), weights)
    assert np.array_equal(got.long().numpy(), expected)


@pytest.mark.parametrize("shape", [(3, 3), (5, 5), (1, 11)])
@pytest.mark.parametrize("weight_bits", [8, 16])
def test_depthwise_is_exact_with_channels_on_both_sides_of_the_float32_bound(weight_bits, shape):
    """Channels whose input and kernel bound every float32 sum below 2**24 run as they are;
    the others (here every second channel, at the extremes) from byte digits."""
    rng = np.random.default_rng(7)
    channels = 12
    v = rng.integers(-3, 4, size=(1, 9, 14, channels))
    v[..., 1::2] = rng.choice([-(1 << 15), (1 << 15) - 1], size=v[..., 1::2].shape)
    top = 1 << (weight_bits - 1)
    w = rng.integers(-top + 1, top, size=(channels, *shape))
    w[1::2] = rng.choice([-top + 1, top - 1], size=w[1::2].shape)
    kernel = kernels.depthwise_kernel(torch.from_numpy(w))
    x = torch.from_numpy(v).double()
    beyond = x.abs().amax((0, 1, 2)) * kernel.l1 >= kernels.FLOAT32_EXACT
    assert beyond[1::2].all() and not beyond[0::2].any()
    expected = kernels.depthwise_sum(
        x, torch.from_numpy(w).double(), torch.zeros(channels).double()
    )
    got = kernels.depthwise_exact(x, kernel)
    assert got.dtype == torch.float64 and torch.equal(got, expected)


@pytest.mark.parametrize("weight_bits", [8, 16])
def test_digit_gemm_sums_in_int32_where_the_weights_allow(weight_bits):
    """1024 inputs: int32 digit sums for weights whose columns sum to little (here at most
    1024 * 15 in |w8|), float64 ones for a column of extremes; exact either way."""
    rng = np.random.default_rng(6)
    flat = rng.integers(-(1 << 15), 1 << 15, size=(17, 1024))
    flat[0], flat[1] = -(1 << 15), (1 << 15) - 1
    if weight_bits == 8:
        w = rng.integers(-15, 16, size=(1024, 5))
        w[:, 0], w[:, 1] = -15, 15
    else:  # high bytes in [-1, 0], low bytes in [113, 143] (less 128: [-15, 15])
        w = rng.integers(-15, 16, size=(1024, 5)) + 128 - 256 * rng.integers(0, 2, size=(1024, 5))
    bias = rng.integers(-(1 << 40), 1 << 40, size=5)
    for extremes in (False, True):
        if extremes:
            w[:, 2] = 127 if weight_bits == 8 else 1 << 14
        weights = kernels.byte_weights(
            torch.from_numpy(w).double(), torch.from_numpy(bias).double()
        )
        assert weights.wide == (weight_bits == 16) and weights.int32_sums == (not extremes)
        got = kernels.digit_gemm(torch.from_numpy(flat).double(), weights)
        assert np.array_equal(got.long().numpy(), flat @ w + bias)


def test_integer_layers_take_the_int8_gemm(int_bundle):
    if not kernels.use_int8_gemm():
        pytest.skip("no int8 dot products here, or an inexact int8 GEMM: float64's runs")
    for int_ops in (
        load_bundle(SHIPPED[0], decoder=False)._integer().ops,
        load_bundle(int_bundle, decoder=False)._integer().ops,
    ):
        int8 = int_ops.t["h_s.increase.1.fc1.weight"].dtype == torch.int8
        assert int_ops._bytes("h_s.increase.1.fc1").wide == (not int8)


def test_the_int8_and_float64_gemms_give_the_same_files(int_bundle, monkeypatch):
    """Which GEMM runs depends on the CPU (use_int8_gemm); the files must not."""
    if not kernels.int8_gemm_exact():
        pytest.skip("this CPU's int8 GEMM is not exact: only float64's can run")
    image = make_image(130, 190, seed=5)
    files = []
    for int8 in (True, False):
        monkeypatch.setattr(ops, "use_int8_gemm", lambda int8=int8: int8)
        for path in (SHIPPED[0], int_bundle):
            model = load_bundle(path, decoder=False)
            taken = model._integer().ops._bytes("h_s.increase.1.fc1") is not None
            assert taken == int8
            result = _encode(model, image)
            files.append((result.data, result.digest))
    assert files[:2] == files[2:]


def test_one_and_two_threads_give_the_same_files(int_bundle):
    model = load_bundle(int_bundle, decoder=False)
    image = make_image(130, 190, seed=4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [_encode(model, image, qstep=q) for q in (256, 200)]
        torch.set_num_threads(2)
        two = [_encode(model, image, qstep=q) for q in (256, 200)]
    finally:
        torch.set_num_threads(before)
    assert [(r.data, r.digest) for r in one] == [(r.data, r.digest) for r in two]


_CHILD = """
import json, sys
import numpy as np, torch
from PIL import Image
from aeic_codec import api
from aeic_codec.entropy_models import intnet
from aeic_codec.bundles.bundle import load_bundle
torch.set_num_threads(int(sys.argv[1]))
image = np.asarray(Image.open(sys.argv[2]).convert("RGB"))[:128, :192]
out = {}
for path in sys.argv[3:]:
    r = api.encode_image(image, load_bundle(path, decoder=False))
    out[path] = [r.data.hex(), r.entropy_digest]
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    "env",
    [
        {"ATEN_CPU_CAPABILITY": "default"},
        {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    ],
    ids=["scalar-kernels", "avx2"],
)
def test_other_kernels_give_the_same_files(env):
    """PyTorch's scalar or AVX2 kernels (and MKL's AVX2 GEMM) against this process's."""
    image_path = ROOT / "docs" / "kodim23.png"
    paths = [str(p) for p in SHIPPED]
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, "2", str(image_path), *paths],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(child.stdout)
    image = np.asarray(Image.open(image_path).convert("RGB"))[:128, :192]
    for path in paths:
        mine = _encode(load_bundle(path, decoder=False), image)
        assert theirs[path] == [mine.data.hex(), mine.entropy_digest], path


# ------------------------------------------------------------------------- files and bundles


def test_files_of_the_float_path_still_decode(int_bundle, tmp_path):
    model = load_bundle(int_bundle)
    image = make_image(64, 96, seed=2)
    old = _encode(model, image, integer=False)
    assert unpack(old.data).version == 1 and unpack(old.data).model_id_hex == model.identity
    new = _encode(model, image)
    assert unpack(new.data).model_id_hex == model.integer_identity != model.identity
    assert api.decode_image(old.data, model, precision="fp32").digest is None
    decoded = api.decode_image(new.data, model, precision="fp32")
    assert decoded.digest == new.digest and decoded.image.shape == (64, 96, 3)


def test_a_digest_mismatch_is_one_error_and_no_picture(int_bundle, tmp_path):
    model = load_bundle(int_bundle, decoder=False)
    f = unpack(_encode(model, make_image(64, 64, seed=1)).data)
    wrong = bytes([f.digest[0] ^ 1, f.digest[1]])
    bad = tmp_path / "bad.aeic"
    bad.write_bytes(
        pack(type(f)(f.width, f.height, f.model_id, f.streams, f.colour, f.grid, wrong))
    )
    with pytest.raises(api.DigestMismatch, match="entropy digest mismatch"):
        api.decode_latent(unpack(bad.read_bytes()), model)
    out = tmp_path / "bad.png"
    run = CliRunner().invoke(
        main, ["decode", str(bad), "-o", str(out), "--weights", str(int_bundle)]
    )
    assert run.exit_code == 1 and not out.exists()
    errors = [line for line in run.stderr.splitlines() if line.startswith("aeic: error")]
    assert len(errors) == 1 and "entropy digest mismatch" in errors[0]
    assert issubclass(api.DigestMismatch, FormatError)


def test_cli_prints_the_digest_and_the_path(int_bundle, tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(make_image(64, 80, seed=3)).save(src)
    weights = ["--weights", str(int_bundle)]
    enc = CliRunner().invoke(main, ["encode", str(src), "--json", *weights])
    assert enc.exit_code == 0, enc.stderr
    record = json.loads(enc.stdout)
    assert len(record["entropy_digest"]) == 64
    aeic = tmp_path / "a.aeic"
    out = tmp_path / "out.png"
    dec = CliRunner().invoke(main, ["decode", str(aeic), "-o", str(out), "--json", *weights])
    assert dec.exit_code == 0, dec.stderr
    assert json.loads(dec.stdout)["entropy_digest"] == record["entropy_digest"]
    info = CliRunner().invoke(main, ["info", str(aeic), *weights])
    assert f"integer (digest {record['entropy_digest'][:4]})" in info.stdout
    assert "(tiny lambda=8)" in info.stdout  # the integer identity names its bundle
    # One identity everywhere: the file's, as encode and info give it, is the bundle's listed one.
    listed = CliRunner().invoke(main, ["weights", "list", *weights]).stdout
    line = next(line for line in listed.splitlines() if line.endswith(str(int_bundle)))
    assert line.split()[0] == record["model"]
    assert f"model           {record['model']} (tiny lambda=8)" in info.stdout
    flt = CliRunner().invoke(
        main,
        ["encode", str(src), "-o", str(tmp_path / "b.aeic"), "--float-entropy", "--json", *weights],
    )
    assert json.loads(flt.stdout)["entropy_digest"] is None
    assert (
        "entropy path    float"
        in CliRunner().invoke(main, ["info", str(tmp_path / "b.aeic")]).stdout
    )


def test_verify_passes_good_files_and_catches_a_broken_coder(int_bundle, tmp_path, monkeypatch):
    model = load_bundle(int_bundle, decoder=False)
    image = make_image(64, 96, seed=8)
    plain = _encode(model, image)
    assert _encode(model, image, verify=True).data == plain.data
    floats = _encode(model, image, integer=False).data
    assert _encode(model, image, integer=False, verify=True).data == floats
    src = tmp_path / "a.png"
    Image.fromarray(image).save(src)
    weights = ["--weights", str(int_bundle)]
    good = tmp_path / "good.aeic"
    run = CliRunner().invoke(main, ["encode", str(src), "-o", str(good), "--verify", *weights])
    assert run.exit_code == 0, run.stderr
    assert good.read_bytes() == plain.data
    finish = StreamEncoder.finish

    def broken(self: StreamEncoder) -> bytes:  # a coder whose streams decode to garbage
        data = finish(self)
        return bytes([data[0] ^ 0xFF]) + data[1:] if data else data

    monkeypatch.setattr(StreamEncoder, "finish", broken)
    with pytest.raises(api.VerifyError):
        _encode(model, image, verify=True)
    assert _encode(model, image).data != plain.data  # without --verify it goes unnoticed
    bad = tmp_path / "bad.aeic"
    run = CliRunner().invoke(main, ["encode", str(src), "-o", str(bad), "--verify", *weights])
    assert run.exit_code == 1 and not bad.exists()
    errors = [line for line in run.stderr.splitlines() if line.startswith("aeic: error")]
    assert len(errors) == 1 and "the encoded file d" in errors[0]


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
def test_encode_device(int_bundle, tmp_path, device):
    src = tmp_path / "a.png"
    Image.fromarray(make_image(64, 64, seed=6)).save(src)
    out = tmp_path / f"{device}.aeic"
    args = ["encode", str(src), "-o", str(out), "--device", device, "--weights", str(int_bundle)]
    run = CliRunner().invoke(main, args)
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }[device]
    if not available:
        assert run.exit_code == 2 and f"device {device}: no " in run.stderr
        assert not out.exists()
        pytest.skip(f"no {device} here")
    assert run.exit_code == 0, run.stderr
    model = load_bundle(int_bundle, decoder=False)
    reference = _encode(model, make_image(64, 64, seed=6)).data
    assert out.read_bytes() == reference  # the entropy path gives the same integers anywhere


def test_integerize_keeps_other_tensors_and_is_rerunnable(tmp_path):
    torch.manual_seed(7)
    src = tmp_path / "float.safetensors"
    save_bundle(src, AEIC(tiny_config()), lambda_=4.0, encoder_dtype="int8")
    tensors = load_file(str(src))
    tensors["realism.decoder.weight"] = torch.arange(6, dtype=torch.float32)
    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata(), realism="taef2")
    save_file(tensors, str(src), metadata=meta)
    first = tmp_path / "int.safetensors"
    run = CliRunner().invoke(
        main,
        ["weights", "integerize", str(src), "-o", str(first), "--images", str(_folder(tmp_path))],
    )
    assert run.exit_code == 0, run.stderr
    info = read_info(first)
    assert info.identity == read_info(src).identity and info.integer_identity
    assert info.metadata["realism"] == "taef2"
    kept = load_file(str(first))
    assert torch.equal(kept["realism.decoder.weight"], tensors["realism.decoder.weight"])
    again = tmp_path / "again.safetensors"
    CliRunner().invoke(
        main,
        ["weights", "integerize", str(first), "-o", str(again), "--images", str(_folder(tmp_path))],
    )
    assert read_info(again).integer_identity == info.integer_identity
    assert sorted(load_file(str(again))) == sorted(kept)
    refused = CliRunner().invoke(
        main, ["weights", "integerize", str(src), "-o", str(first), "--images", str(tmp_path)]
    )
    assert refused.exit_code == 1 and "exists" in refused.stderr


@pytest.mark.parametrize("choice", ["8", "mixed", "16", "auto", "auto-refused"])
def test_integer_weights_option(tmp_path, monkeypatch, choice):
    """--integer-weights: float weights become int8 or int16 integer tensors (mixed: int8
    in the context model's blocks alone); auto takes the first of 8, mixed, 16 that costs
    at most the limit (set here to anything, or nothing: 16 in the end)."""
    from aeic_codec.tools import integerize

    torch.manual_seed(8)
    src = tmp_path / "float.safetensors"
    save_bundle(src, AEIC(tiny_config()), lambda_=4.0, encoder_dtype="fp32")
    if choice.startswith("auto"):
        monkeypatch.setattr(integerize, "AUTO_RATE_LIMIT", -1.0 if "refused" in choice else 9.0)
    out = tmp_path / "int.safetensors"
    args = ["weights", "integerize", str(src), "-o", str(out), "--images", str(_folder(tmp_path))]
    run = CliRunner().invoke(main, [*args, "--integer-weights", choice.split("-")[0]])
    assert run.exit_code == 0, run.stderr
    plan = {"auto": "8", "auto-refused": "16"}.get(choice, choice)
    assert f"made integer: {integerize.PLAN_WORDS[plan]})" in run.stderr
    weights = {k: v for k, v in load_file(str(out)).items() if k.endswith(".weight")}
    kinds = {k[len("integer.") :]: v.dtype for k, v in weights.items() if k.startswith("integer.")}
    narrow = {k for k, kind in kinds.items() if kind == torch.int8}
    assert set(kinds.values()) <= {torch.int8, torch.int16}
    if plan == "mixed":
        assert narrow == {k for k in kinds if k.startswith("context.g_c.")} and narrow != set(kinds)
    else:
        assert kinds and narrow == (set(kinds) if plan == "8" else set())
    assert (
        json.loads(read_info(out).metadata["provenance"])["integer_calibration"]["weights"] == plan
    )
    model = load_bundle(out, decoder=False)
    result = _encode(model, make_image(64, 96, seed=3))
    _, y_hat, digest = reference_decode(model, result.data)
    assert digest == result.digest and np.array_equal(y_hat, result.y_hat.numpy())


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "calibration"
    if not folder.exists():
        folder.mkdir()
        for i, image in enumerate(_calibration()):
            Image.fromarray(image).save(folder / f"{i}.png")
    return folder


def test_rate_cost_is_measured(int_bundle):
    model = load_bundle(int_bundle, decoder=False)
    images = [make_image(96, 128, seed=s) for s in (11, 12)]
    cost = integer_cost(model, images)
    assert len(cost.float_bytes) == len(cost.integer_bytes) == 2
    assert cost.integer_bytes[0] == len(api.encode(images[0], model))
    assert cost.float_bytes[0] == len(api.encode(images[0], model, integer=False))
    assert f"{100 * cost.rate_cost:+.2f} %" in cost.summary()


def test_padded_matches_the_encoder_input():
    image = make_image(70, 33)
    x = padded(image)
    assert x.shape == (1, 3, 128, 64) and float(x.abs().max()) <= 1.0


def test_a_damaged_integer_tensor_is_refused_on_loading(int_bundle, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(int_bundle), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in set(fh.keys())}
        metadata = fh.metadata()
    key = next(k for k in sorted(tensors) if k.startswith("integer.") and k.endswith(".bias"))
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += 1
    damaged = tmp_path / "tiny-l8.safetensors"
    save_file(tensors, str(damaged), metadata=metadata)
    assert read_info(damaged).integer_identity == read_info(int_bundle).integer_identity
    with pytest.raises(BundleError, match=r"damaged: its integer entropy tensors do not give"):
        load_bundle(damaged, decoder=False)
    load_bundle(int_bundle, decoder=False)  # the intact one loads


def test_damaged_streams_fail_cleanly(int_bundle):
    """Flipped bytes in a version 3 file's streams (CRC resealed): a one-line FormatError, or,
    where the damage reaches only the last step's symbols (which no digested parameter
    depends on) or no symbol at all, a decode; damage before it never goes unnoticed."""
    model = load_bundle(int_bundle, decoder=False)
    result = _encode(model, make_image(96, 128, seed=8))
    good = unpack(result.data)
    rng = np.random.default_rng(0)
    caught = 0
    for trial in range(40):
        streams = list(good.streams)
        k = trial % 4  # z and steps 0-2
        data = bytearray(streams[k])
        data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
        streams[k] = bytes(data)
        f = type(good)(
            good.width,
            good.height,
            good.model_id,
            tuple(streams),
            good.colour,
            good.grid,
            good.digest,
        )
        try:
            y_hat = api.decode_latent(unpack(pack(f)), model)
        except FormatError as exc:
            assert "\n" not in str(exc)
            caught += 1
        else:
            assert torch.equal(y_hat, result.y_hat), f"stream {k}: damage went unnoticed"
    assert caught >= 20  # the rest changed no symbol (bits past what the coder reads)
