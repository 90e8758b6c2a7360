"""Texture statistics: measured on the source, coded exactly, carried and checked by files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from aeic_codec import api
from aeic_codec.bundles.bundle import BundleError
from aeic_codec.cli import main
from aeic_codec.codec.texture import (
    BUDGET_MIN,
    SourceTexture,
    choose_texture,
    texture_budget,
)
from aeic_codec.codec.texture_synthesis import (
    ExemplarBook,
    TextureFileError,
    TextureSynthesis,
    cluster,
    grouped,
    load_texture,
    save_texture,
)
from aeic_codec.format.coder import CodingError
from aeic_codec.format.container import FormatError, pack, unpack
from aeic_codec.format.texture_coder import (
    BLOCKS,
    RESIDUAL,
    STEPS_DB,
    TextureLevels,
    decode_texture,
    encode_texture,
    level_range,
)
from aeic_codec.nn.config import AEIC_SMALL_TAEF2
from aeic_codec.nn.tiny_vae import TinyDecoder, TinyEncoder

from .conftest import make_image


@pytest.fixture(scope="module")
def int_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from aeic_codec.tools.integerize import integerize_bundle

    out = tmp_path_factory.mktemp("texture") / "tiny-int.safetensors"
    integerize_bundle(tiny_bundle, out, [make_image(64, 64, seed=9)], source="generated")
    return out


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("step", STEPS_DB)
def test_levels_round_trip_exactly(block: int, step: int) -> None:
    rng = np.random.default_rng(block + step)
    lo, hi = level_range(step)
    height, width = 300, 517
    rows, cols = -(-height // block), -(-width // block)
    near = rng.integers(0, 7, (2, rows, cols))  # every residual within the coded range
    levels = TextureLevels(block, step, np.clip(near, lo, hi).astype(np.int16))
    data, sent = encode_texture(levels)
    assert data[0] == BLOCKS.index(block) | STEPS_DB.index(step) << 2
    assert np.array_equal(sent.levels, levels.levels)  # no residual beyond the coded range
    back = decode_texture(data, height, width)
    assert (back.block, back.step_db) == (block, step)
    assert np.array_equal(back.levels, levels.levels)


def test_a_jump_beyond_the_residual_range_is_clamped_alike_on_both_sides() -> None:
    lo, hi = level_range(1)
    levels = np.full((2, 2, 3), lo, np.int16)
    levels[:, 1, 2] = hi  # a jump of 53 levels from every neighbour
    data, sent = encode_texture(TextureLevels(64, 1, levels))
    assert sent.levels[0, 1, 2] == lo + RESIDUAL < hi
    assert np.array_equal(decode_texture(data, 128, 192).levels, sent.levels)


def test_corrupt_texture_streams_are_refused() -> None:
    levels = TextureLevels(64, 3, np.zeros((2, 8, 12), np.int16))
    data, _ = encode_texture(levels)
    with pytest.raises(CodingError, match="reserved bits"):
        decode_texture(bytes((data[0] | 0x10,)) + data[1:], 512, 768)
    with pytest.raises(CodingError, match="empty"):
        decode_texture(b"", 512, 768)
    with pytest.raises(ValueError, match="levels must be"):
        TextureLevels(64, 3, np.full((2, 1, 1), 99, np.int16))


def test_the_source_measure_puts_levels_where_the_detail_is() -> None:
    rng = np.random.default_rng(0)
    image = np.full((256, 384, 3), 120, np.uint8)
    image[:128, :192] = rng.integers(0, 256, (128, 192, 3), dtype=np.uint8)  # noise, top left
    t = SourceTexture(image).levels(128, 2)
    assert t.levels.shape == (2, 2, 3)
    lo, hi = level_range(2)
    assert t.levels[:, 0, 0].min() > 12  # ~ 30 dB of fine detail
    assert (t.levels[:, 0, 0] - t.levels[:, 1, 2] >= 10).all()  # flat, far: 20 dB less
    assert lo <= t.levels.min() and t.levels.max() <= hi


def test_choose_texture_takes_the_finest_choice_that_fits() -> None:
    source = SourceTexture(make_image(512, 768))
    big, levels = choose_texture(source, 10_000)
    assert levels.block == 64 and len(big) <= 10_000
    small, coarse = choose_texture(source, 1)  # nothing fits: the coarsest
    assert coarse.block == 128 and len(small) < len(big)
    # Grain whose strength varies smoothly, as in photographs: just below the finest
    # choice, the same blocks at the next step, not larger blocks.
    y, x = np.mgrid[0:512, 0:768]
    amp = 2 + 40 * (0.5 + 0.5 * np.sin(x / 120) * np.cos(y / 96))
    grain = np.random.default_rng(0).standard_normal((512, 768))
    image = np.clip(128 + amp * grain, 0, 255).astype(np.uint8)[..., None].repeat(3, 2)
    varying = SourceTexture(image)
    finest, _ = choose_texture(varying, 10_000)
    less, step4 = choose_texture(varying, len(finest) - 1)
    assert (step4.block, step4.step_db) == (64, 4) and len(less) < len(finest)
    assert texture_budget(0) == BUDGET_MIN and texture_budget(2400) == 100


def test_a_file_with_texture_is_version_5_and_its_digest_covers_the_statistics(
    int_bundle: Path,
) -> None:
    model = api.load_model(int_bundle)
    image = make_image(128, 192, seed=3)
    plain = api.encode_image(image, model)
    result = api.encode_image(image, model, texture=True, verify=True)
    f = unpack(result.data)
    assert f.version == 5 and f.texture is not None and len(result.data) > len(plain.data)
    assert f.streams == unpack(plain.data).streams  # the latents are the same
    assert result.digest != plain.digest and f.digest == result.digest[:2]
    assert api.read_texture(f).levels.shape == (2, 2, 3)
    # Same pixels as without texture at realism 0: the statistics only serve synthesis.
    assert np.array_equal(
        api.decode_image(result.data, model).image, api.decode_image(plain.data, model).image
    )
    other = TextureLevels(64, 3, api.read_texture(f).levels + 1)
    forged = pack(f.__class__(**{**f.__dict__, "texture": encode_texture(other)[0]}))
    with pytest.raises(api.DigestMismatch):
        api.decode_image(forged, model)
    with pytest.raises(ValueError, match="integer entropy path"):
        api.encode_image(image, model, texture=True, integer=False)


def test_a_budget_counts_the_texture_statistics(int_bundle: Path) -> None:
    model = api.load_model(int_bundle)
    image = make_image(128, 192, seed=4)
    for size in (300, 700):
        try:
            data = api.encode(image, model, size=size, texture=True)
        except api.RateError:
            continue
        assert len(data) <= size and unpack(data).version == 5


def test_cli_texture_flag_and_info(tmp_path: Path, png_file: Path, int_bundle: Path) -> None:
    out = tmp_path / "t.aeic"
    args = ["encode", str(png_file), "--weights", str(int_bundle), "--texture", "-o", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    info = CliRunner().invoke(main, ["info", str(out)])
    size = len(unpack(out.read_bytes()).texture)
    assert f"texture stats   {size} bytes" in info.output and "format version  5" in info.output
    floats = CliRunner().invoke(main, [*args, "-f", "--float-entropy"])
    assert floats.exit_code == 2 and "--texture needs the integer entropy path" in floats.stderr
    plain = tmp_path / "p.aeic"
    assert CliRunner().invoke(main, [*args[:-3], "-o", str(plain)]).exit_code == 0
    assert "texture stats   no" in CliRunner().invoke(main, ["info", str(plain)]).output
    with pytest.raises(FormatError):
        unpack(out.read_bytes()[:-5])


def small_synthesis(seed: int = 0) -> TextureSynthesis:
    """TAEF2's architecture with random weights and a random exemplar book."""
    torch.manual_seed(seed)
    encoder, decoder = TinyEncoder().eval(), TinyDecoder(AEIC_SMALL_TAEF2).eval()
    features, dims, size = 9 * 32, 8, 64
    keys = torch.randn(size, dims + 2).half().float()
    centroids = cluster(keys, 4)
    keys, values, offsets = grouped(keys, torch.randn(size, 32).half().float(), centroids)
    book = ExemplarBook(
        torch.randn(features),
        torch.rand(features) + 0.5,
        torch.linalg.qr(torch.randn(features, dims))[0],
        0.5,
        keys,
        values,
        centroids,
        offsets,
    )
    return TextureSynthesis(encoder, decoder, book, AEIC_SMALL_TAEF2)


def test_the_book_search_finds_every_key_itself_and_the_nearest_of_its_clusters() -> None:
    book = small_synthesis().book
    assert book.offsets[0] == 0 and book.offsets[-1] == len(book.keys) == 64
    assert torch.equal(book.nearest(book.keys), torch.arange(64))  # each key is its own nearest
    queries = torch.randn(500, book.keys.shape[1], generator=torch.Generator().manual_seed(1))
    found = book.nearest(queries)
    exact = torch.cdist(queries, book.keys).argmin(1)
    # the search looks in the 2 nearest of 4 clusters: mostly the exact answer, never a key
    # outside those clusters
    assert (found == exact).float().mean() > 0.7
    member = torch.bucketize(found, book.offsets[1:], right=True)
    near = torch.cdist(queries, book.centroids).topk(2, largest=False).indices
    assert bool((near == member[:, None]).any(1).all())


@pytest.fixture(scope="module")
def texture_folder(int_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder: the integer bundle and texture/ beside it."""
    folder = tmp_path_factory.mktemp("with-texture")
    (folder / int_bundle.name).write_bytes(int_bundle.read_bytes())
    (folder / "texture").mkdir()
    save_texture(folder / "texture" / "small.safetensors", small_synthesis(), {"made_by": "tests"})
    return folder


def test_a_texture_file_round_trips_and_bad_ones_are_refused(
    texture_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = small_synthesis()
    loaded = api.load_texture(texture_folder)
    picture = make_image(64, 96, seed=5).astype(np.float32)
    levels = TextureLevels(64, 3, np.arange(4, dtype=np.int16).reshape(2, 1, 2))
    assert np.allclose(loaded.detail(picture, levels), made.detail(picture, levels), atol=0.5)
    assert api.load_texture(texture_folder / "whatever.safetensors") is not None  # its folder
    # Named weights are the only place searched: no fallback to $AEIC_WEIGHTS or weights/.
    monkeypatch.setenv("AEIC_WEIGHTS", str(texture_folder))
    with pytest.raises(BundleError, match=r"no texture file .*searched: .*texture[/\\]texture"):
        api.load_texture(texture_folder / "texture")  # a folder without texture/ inside
    assert api.load_texture() is not None  # unnamed: $AEIC_WEIGHTS is searched
    with pytest.raises(TextureFileError, match="not an aeic texture file"):
        load_texture(next(texture_folder.glob("*.safetensors")))  # a bundle
    from safetensors.torch import save_file

    old = tmp_path / "old.safetensors"
    save_file({"book.keys": torch.zeros(2, 2)}, str(old), metadata={"aeic_texture": "1"})
    with pytest.raises(TextureFileError, match="format 1, this aeic reads formats 2 and 3; make"):
        load_texture(old)


def test_synthesis_adds_luma_detail_only_where_the_statistics_ask(texture_folder: Path) -> None:
    synthesis = api.load_texture(texture_folder)
    picture = np.full((128, 192, 3), 120.0, np.float32)
    lo = level_range(3)[0]
    levels = np.full((2, 2, 3), lo, np.int16)
    levels[:, 0, 0] = 10  # 30 dB of fine detail in the top left block only
    out = synthesis(picture, TextureLevels(64, 3, levels))
    change = out - picture
    assert np.array_equal(change[..., 0], change[..., 2])  # luma: the same on R, G and B
    assert np.abs(change[:64, :64]).mean() > 10 * np.abs(change[64:, 128:]).mean()
    again = synthesis(picture, TextureLevels(64, 3, levels))
    assert np.array_equal(out, again)  # deterministic
    half = synthesis(picture, TextureLevels(64, 3, levels), strength=0.5)
    assert np.allclose(half - picture, change / 2, atol=1e-3)


def test_realism_on_a_file_with_statistics_uses_the_texture(texture_folder: Path) -> None:
    bundle = next(texture_folder.glob("*.safetensors"))
    model = api.load_model(bundle)
    image = np.random.default_rng(6).integers(0, 256, (128, 192, 3), dtype=np.uint8)
    data = api.encode(image, model, texture=True)  # fine detail everywhere
    plain = api.decode(data, model)
    with pytest.raises(ValueError, match="needs the texture file"):
        api.decode(data, model, realism=1.0)
    textured = api.decode(data, model, realism=1.0, texture=api.load_texture(texture_folder))
    assert textured.shape == plain.shape and not np.array_equal(textured, plain)
    coded = texture_folder / "t.aeic"
    coded.write_bytes(data)
    out = texture_folder / "t.png"
    args = ["decode", str(coded), "-o", str(out), "--weights", str(texture_folder)]
    result = CliRunner().invoke(main, [*args, "--realism", "1", "-f"])
    assert result.exit_code == 0, result.stderr
    assert np.array_equal(api.read_image(str(out))[0], textured)
    alone = texture_folder / "alone"  # the bundle without a texture file beside it
    alone.mkdir()
    (alone / bundle.name).write_bytes(bundle.read_bytes())
    missing = CliRunner().invoke(main, [*args[:-1], str(alone), "--realism", "1", "-f"])
    assert missing.exit_code == 1
    assert missing.stderr.count("\n") == 1 and "no texture file" in missing.stderr


def test_texture_book_command_makes_a_texture_file_from_photographs(
    int_bundle: Path, tmp_path: Path
) -> None:
    from PIL import Image
    from safetensors import safe_open
    from safetensors.torch import save_file

    torch.manual_seed(3)
    taef2 = tmp_path / "taef2"  # TAEF2's layout with random weights
    taef2.mkdir()
    save_file(TinyEncoder().state_dict(), str(taef2 / "taef2_encoder.safetensors"))
    save_file(TinyDecoder(AEIC_SMALL_TAEF2).state_dict(), str(taef2 / "taef2_decoder.safetensors"))
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(make_image(68, 100, seed=20 + i)).save(photos / f"p{i}.png")
    out = tmp_path / "book.safetensors"
    args = ["weights", "texture-book", str(int_bundle), "--photos", str(photos)]
    args += ["--taef2", str(taef2), "--size", "100", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    book = load_texture(out).book
    # 2 photos x 1 bundle x (64/8 x 96/8 = 96 latent positions): 192 places, 100 drawn
    assert len(book.keys) == len(book.values) == 100 and int(book.offsets[-1]) == 100
    assert book.keys.shape[1] == 32 + 2 and book.level_weight == 1.0
    with safe_open(str(out), "pt") as fh:
        assert '"bundles": ["tiny-int.safetensors"]' in fh.metadata()["provenance"]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "exists (use --force to overwrite)" in again.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = CliRunner().invoke(main, [*args[:4], str(empty), *args[5:], "-f"])
    assert none.exit_code == 1 and "no photographs" in none.stderr


def test_the_detail_loses_its_8_px_lattice_and_nothing_else() -> None:
    from aeic_codec.codec.texture_synthesis import without_lattice

    rng = np.random.default_rng(8)
    cell = rng.normal(size=(8, 8))
    cell -= cell.mean()
    texture = rng.normal(size=(100, 130))
    lattice = np.tile(cell, (13, 17))[:100, :130]
    cleaned = without_lattice(texture + lattice, 8)
    # what remains of the lattice is the texture's own mean cell (12 x 16 cells averaged)
    assert np.abs(cleaned - texture).max() < 0.5 < np.abs(lattice).max()
    assert np.allclose(without_lattice(cleaned, 8), cleaned, atol=1e-9)  # nothing left to take
    small = rng.normal(size=(5, 40))
    assert np.array_equal(without_lattice(small, 8), small)  # no whole cell: unchanged


def test_horizontal_and_vertical_strokes_of_the_detail_are_weakened_diagonal_ones_kept() -> None:
    from aeic_codec.codec.texture_match import matched_detail
    from aeic_codec.codec.texture_synthesis import AXIS_DEPTH, axis_weight

    n = 128
    weight = axis_weight(n, n)
    assert weight.shape == (n, n // 2 + 1) and weight.dtype == np.float32
    assert weight[0, 24] == weight[24, 0] == pytest.approx(1 - AXIS_DEPTH)  # on the axes
    assert weight[17, 17] == pytest.approx(1.0) and weight[-17, 17] == pytest.approx(1.0)
    # Stripes of one amplitude and one band (radius 24/128 and 17 * 2**0.5 / 128 cycles per
    # pixel), one along an axis, one diagonal, under statistics asking for detail everywhere.
    yy, xx = np.mgrid[:n, :n] * (2 * np.pi / n)
    axial, diagonal = np.sin(24 * yy), np.sin(17 * (yy + xx))
    picture = np.full((n, n, 3), 128.0, np.float32)
    levels = TextureLevels(64, 3, np.full((2, 2, 2), level_range(3)[1], np.int16))

    def amplitudes(change: np.ndarray) -> tuple[float, float]:
        spectrum = np.abs(np.fft.rfft2(change))
        return spectrum[24, 0], spectrum[17, 17]

    plain = amplitudes(matched_detail(picture, axial + diagonal, levels))
    weighted = amplitudes(matched_detail(picture, axial + diagonal, levels, weight))
    assert plain[0] / plain[1] == pytest.approx(1.0, rel=0.02)
    assert weighted[0] / weighted[1] == pytest.approx(1 - AXIS_DEPTH, rel=0.02)


@pytest.mark.parametrize("core", [32, 48, 1024])
def test_tiled_encoding_equals_the_plain_call(core: int) -> None:
    from aeic_codec.codec.texture_synthesis import tiled_encode

    torch.manual_seed(4)
    encoder = TinyEncoder().eval()
    x = torch.rand(1, 3, 88, 136)  # 3 x 5 tiles of 32 px, 2 x 3 of 48, partial ones; 1 of 1024
    with torch.no_grad():
        whole, tiled = encoder(x), tiled_encode(encoder, x, core)
    assert tiled.shape == whole.shape == (1, 32, 11, 17)
    assert torch.allclose(tiled, whole, atol=1e-5)


@pytest.mark.parametrize(("shape", "block"), [((100, 130), 32), ((64, 64), 64), ((7, 9), 16)])
def test_block_power_averages_each_block_over_its_own_pixels(
    shape: tuple[int, int], block: int
) -> None:
    from aeic_codec.codec.texture_match import block_power

    x = np.random.default_rng(block).normal(size=shape).astype(np.float32) * 10
    power = block_power(x, block)
    rows, cols = -(-shape[0] // block), -(-shape[1] // block)
    assert power.shape == (rows, cols)
    for i in range(rows):
        for j in range(cols):
            cell = x[i * block : (i + 1) * block, j * block : (j + 1) * block].astype(np.float64)
            assert power[i, j] == pytest.approx(np.mean(cell**2), rel=1e-5)
