"""Reading source images: conversions with one warning each, orientation, limits."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aeic_codec.runtime.imageio import ImageError, image_shape, read_image

from .conftest import make_image


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_rgb_png_jpeg_webp_tiff(tmp_path: Path):
    rgb = make_image(20, 30)
    for fmt in ("png", "jpeg", "webp", "tiff"):
        path = _save(Image.fromarray(rgb), tmp_path / f"a.{fmt}")
        arr, notes = read_image(path)
        assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8 and notes == []
    assert np.array_equal(read_image(tmp_path / "a.png")[0], rgb)


def test_sixteen_bit_grayscale_is_scaled(tmp_path: Path):
    values = (np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    arr, notes = read_image(path)
    assert arr.shape == (20, 30, 3)
    assert arr[-1, -1, 0] == round(values[-1, -1] / 65535 * 255)
    assert len(notes) == 1 and "16-bit" in notes[0]


@pytest.mark.parametrize(
    ("values", "mode", "message"),
    [
        (np.full((8, 8), 0.5, np.float32), "F", "floating-point image not supported"),
        (np.full((8, 8), 70000, np.int32), "I", "32-bit image with values beyond 16 bits"),
        (np.full((8, 8), -1, np.int32), "I", "32-bit image with values beyond 16 bits"),
    ],
)
def test_images_without_a_known_scale_are_refused(tmp_path: Path, values, mode, message):
    # Before: a float image in 0-1 came out almost black, 32-bit values almost white, each
    # with a warning that called them 16-bit.
    path = tmp_path / "wide.tiff"
    Image.fromarray(values, mode=mode).save(path)
    with pytest.raises(ImageError, match=message):
        read_image(path)


def test_palette_grayscale_alpha_each_warn_once(tmp_path: Path):
    rgb = Image.fromarray(make_image(16, 16))
    cases = {
        "p.png": (rgb.convert("P"), "palette"),
        "l.png": (rgb.convert("L"), "grayscale"),
        "la.png": (rgb.convert("LA"), "alpha"),
        "rgba.png": (rgb.convert("RGBA"), "alpha"),
    }
    for name, (img, word) in cases.items():
        arr, notes = read_image(_save(img, tmp_path / name))
        assert arr.shape == (16, 16, 3)
        assert len(notes) == 1 and word in notes[0], (name, notes)


def test_exif_orientation_is_applied(tmp_path: Path):
    img = Image.fromarray(make_image(10, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes())
    arr, notes = read_image(path)
    assert arr.shape == (40, 10, 3)
    assert any("orientation" in n for n in notes)


def test_icc_profile_is_noted(tmp_path: Path):
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = _save(Image.fromarray(make_image(8, 8)), tmp_path / "icc.png", icc_profile=profile)
    _, notes = read_image(path)
    assert any("ICC" in n for n in notes)


def test_pixel_limit_refused_before_decoding(tmp_path: Path):
    path = _save(Image.new("RGB", (300, 200)), tmp_path / "big.png")
    with pytest.raises(ImageError, match="over the limit"):
        read_image(path, max_pixels=50_000)


def test_a_small_pixel_limit_is_said_in_pixels(tmp_path: Path):
    path = _save(Image.new("RGB", (11, 10)), tmp_path / "small.png")
    with pytest.raises(ImageError) as got:
        read_image(path, max_pixels=100)
    said = "11x10 is 110 pixels, over the limit of 100 (raise it with --max-pixels)"
    assert str(got.value) == said


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_animations_and_multi_page_files_are_refused_not_cut(tmp_path: Path, fmt: str):
    frames = [Image.fromarray(make_image(8, 8, seed=k)) for k in range(3)]
    path = tmp_path / f"three.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match=r"^3 frames or pages \(an animation or a multi-page"):
        read_image(path)
    frames[0].save(path, format=fmt, save_all=True)  # one frame, saved the same way
    assert read_image(path)[0].shape == (8, 8, 3)


def test_a_jpeg_with_previews_and_a_tiff_with_a_thumbnail_are_still_images(tmp_path: Path):
    """A camera's JPEG often carries a preview (MPO) and a TIFF a thumbnail page: the
    picture is the first image, coded as before."""
    for name, fmt in (("camera.jpg", "MPO"), ("scan.tiff", "TIFF")):
        # New images for each: saving leaves the writer's settings on an image.
        big = Image.fromarray(make_image(48, 64, seed=1))
        small = Image.fromarray(make_image(12, 16, seed=2))
        path = tmp_path / name
        big.save(path, format=fmt, save_all=True, append_images=[small])
        with Image.open(path) as img:
            assert img.n_frames == 2
        assert read_image(path)[0].shape == (48, 64, 3)


def test_garbage_and_bytes_input(tmp_path: Path):
    with pytest.raises(ImageError, match="not a PNG"):
        read_image(b"definitely not an image")
    buf = io.BytesIO()
    Image.fromarray(make_image(5, 6)).save(buf, format="PNG")
    arr, _ = read_image(buf.getvalue())
    assert arr.shape == (5, 6, 3)


def test_sixteen_bit_rgb_png_is_scaled_with_a_warning():
    import struct
    import zlib

    h, w = 4, 5
    row = b"\x00" + np.full((w, 3), 40000, ">u2").tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * h))
        + chunk(b"IEND", b"")
    )
    arr, notes = read_image(png)
    assert arr[0, 0, 0] == round(40000 / 65535 * 255)
    assert len(notes) == 1 and "16-bit" in notes[0]


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_shape_from_the_header_is_the_shape_read(tmp_path: Path, orientation: int):
    exif = Image.Exif()
    exif[0x0112] = orientation
    for suffix in (".jpg", ".png", ".webp"):
        path = _save(Image.fromarray(make_image(10, 40)), tmp_path / f"o{suffix}", exif=exif)
        assert image_shape(path) == read_image(path)[0].shape[:2], suffix
