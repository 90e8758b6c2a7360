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


@pytest.mark.parametrize(
    ("size", "limit", "said"),
    [
        ((11, 10), 100, "11x10 is 110 pixels, over the limit of 100"),
        ((1001, 1000), 1_000_000, "1001x1000 is 1,001,000 pixels, over the limit of 1,000,000"),
    ],
)
def test_the_pixel_limit_is_said_in_exact_counts(tmp_path: Path, size, limit, said):
    """Rounded megapixels made 1,001,000 pixels over a limit of 1,000,000 read as "1.0 over 1"."""
    path = _save(Image.new("RGB", size), tmp_path / "over.png")
    with pytest.raises(ImageError) as got:
        read_image(path, max_pixels=limit)
    assert str(got.value) == f"{said} (raise it with --max-pixels)"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_animations_and_multi_page_files_are_refused_not_cut(tmp_path: Path, fmt: str):
    frames = [Image.fromarray(make_image(8, 8, seed=k)) for k in range(3)]
    path = tmp_path / f"three.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match=r"^3 frames or pages \(an animation or a multi-page"):
        read_image(path)
    frames[0].save(path, format=fmt, save_all=True)  # one frame, saved the same way
    assert read_image(path)[0].shape == (8, 8, 3)


def _tiff(path: Path, *sizes: tuple[int, int]) -> Path:
    pages = [Image.fromarray(make_image(h, w, seed=k)) for k, (h, w) in enumerate(sizes)]
    pages[0].save(path, format="TIFF", save_all=True, append_images=pages[1:])
    return path


@pytest.mark.parametrize(
    ("sizes", "said"),
    [
        (((48, 64), (96, 128)), "2 frames or pages"),  # the second page is the larger
        (((48, 64), (47, 64)), "2 frames or pages"),  # scans of slightly different sizes
        (((48, 64), (64, 48)), "2 frames or pages"),  # a page turned
        (((48, 64), (12, 16), (48, 64)), "2 pictures in 3 pages"),  # a thumbnail between
    ],
)
def test_a_tiff_page_other_than_a_thumbnail_is_a_picture(tmp_path: Path, sizes, said):
    with pytest.raises(ImageError, match=f"^{said} "):
        read_image(_tiff(tmp_path / "pages.tiff", *sizes))


def test_a_damaged_later_page_is_one_error_not_a_traceback(tmp_path: Path):
    """Pillow's page count raised TypeError on a TIFF whose second page lies beyond its end."""
    data = bytearray(_tiff(tmp_path / "whole.tiff", (48, 64), (48, 64)).read_bytes())
    first = int.from_bytes(data[4:8], "little")  # the first page's directory (Pillow: "II")
    after = first + 2 + 12 * int.from_bytes(data[first : first + 2], "little")
    data[after : after + 4] = (len(data) + 100).to_bytes(4, "little")  # where the next is
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(data)
    with pytest.raises(ImageError, match=r"^cannot read image \("):
        read_image(broken)


def test_the_readers_warnings_become_one_note(tmp_path: Path):
    """A JPEG whose EXIF is cut short: Pillow warns while reading it; said in one line."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "a description long enough to lie beyond the cut"
    path = tmp_path / "exif.jpg"
    Image.fromarray(make_image(8, 8)).save(path, exif=exif.tobytes()[:30])
    arr, notes = read_image(path)
    assert arr.shape == (8, 8, 3)
    warned = [n for n in notes if n.startswith("the image reader warned: ")]
    assert len(warned) == 1 and "EXIF" in warned[0]


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
