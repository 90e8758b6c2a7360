"""Reading source images and writing decoded ones.

Everything becomes 8-bit RGB: grayscale, palette and alpha images are converted and
16-bit images scaled, each with a one-line warning; floating-point images and 32-bit ones
beyond 16 bits are refused (no scale of theirs is known), and so are animations and
multi-page files (one frame of them would lose the rest); EXIF orientation is applied. The
pixel limit is checked on the header, before any pixel is decoded. numpy and Pillow are
imported by the functions, so that the CLI can name this module's errors without them.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

DEFAULT_MAX_PIXELS = 100_000_000
# The formats read, each with the file name suffixes that pick it out in a folder.
_SUFFIXES = {
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg"),
    "WEBP": (".webp",),
    "TIFF": (".tif", ".tiff"),
}
FORMATS = tuple(_SUFFIXES)
IMAGE_SUFFIXES = frozenset(s for suffixes in _SUFFIXES.values() for s in suffixes)


class ImageError(ValueError):
    """An input that cannot be used as an image (unknown format, too large, corrupt)."""


def read_image(
    source: str | os.PathLike[str] | bytes, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, list[str]]:
    """Return (H x W x 3 uint8 array, warnings) for a path or encoded bytes.

    Messages (errors and warnings) do not repeat the source's name: the caller knows it.
    """
    from PIL import ImageOps, UnidentifiedImageError

    notes: list[str] = []
    fh = io.BytesIO(source) if isinstance(source, bytes) else None
    with warnings.catch_warnings(record=True) as said:  # Pillow's, said as ours (below)
        warnings.simplefilter("always")
        try:
            img = _open_unchecked(fh or Path(source))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(pixel_limit_message(w, h, max_pixels))
            _refuse_several_pictures(img)
            img.load()
        except ImageError:
            raise
        except FileNotFoundError as exc:
            raise ImageError("no such file") from exc
        except IsADirectoryError as exc:
            raise ImageError("is a directory") from exc
        except UnidentifiedImageError as exc:
            raise ImageError("not a PNG, JPEG, WebP or TIFF image") from exc
        except (OSError, EOFError, SyntaxError, TypeError, ValueError) as exc:  # damaged
            raise ImageError(f"cannot read image ({exc})") from exc
        if img.format == "PNG" and img.mode in ("RGB", "RGBA") and _png_depth(source) == 16:
            notes.append("16-bit image scaled to 8 bits per channel")
        if img.info.get("icc_profile"):
            notes.append("ICC colour profile ignored (pixels taken as sRGB)")
        transposed = ImageOps.exif_transpose(img)
        if transposed is not None and transposed.size != img.size:
            notes.append("EXIF orientation applied")
        img = transposed if transposed is not None else img
        pixels = _to_rgb8(img, notes)
    if said:  # damaged metadata, mostly: one line, not Python's warning with its source line
        found = "; ".join(dict.fromkeys(str(w.message).strip() for w in said))
        notes.append(f"the image reader warned: {found}")
    return pixels, notes


def pixel_limit_message(width: int, height: int, limit: int) -> str:
    """Why a picture is refused by the pixel limit, in exact counts (rounded megapixels
    made a picture just over the limit look like it)."""
    return (
        f"{width}x{height} is {width * height:,} pixels, over the limit of {limit:,} "
        "(raise it with --max-pixels)"
    )


def _refuse_several_pictures(img: Image.Image) -> None:
    """Refuse a file of several pictures: coding the first alone would drop the rest unsaid.

    An animation's frames are pictures; so are a TIFF's pages, except thumbnails (marked
    reduced-resolution, or at most half the first page's size each way). A JPEG's extra
    images (MPO: previews, depth maps, a stereo pair's second view) are not: every viewer
    shows the first, which is what is coded.
    """
    frames = getattr(img, "n_frames", 1)
    if frames == 1 or img.format == "MPO":
        return
    pictures = frames
    if img.format == "TIFF":
        (width, height), pictures = img.size, 1
        try:
            for page in range(1, frames):
                img.seek(page)
                reduced = int(img.tag_v2.get(254, 0)) & 1
                small = 2 * img.size[0] <= width and 2 * img.size[1] <= height
                pictures += not (reduced or small)
        finally:
            img.seek(0)
    if pictures > 1:
        counted = f"{frames} frames or pages"
        if pictures < frames:
            counted = f"{pictures} pictures in {frames} pages"
        raise ImageError(
            f"{counted} (an animation or a multi-page file): aeic codes still images; "
            "extract the one to code first"
        )


def _open_unchecked(source: io.BytesIO | Path) -> Image.Image:
    """Image.open without Pillow's decompression-bomb check: the caller applies its own
    limit (--max-pixels) to the header before any pixel is decoded, with its own message."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(source, formats=FORMATS)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def image_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of the array ``read_image`` returns, read from the header alone.

    EXIF orientations that turn the picture by a quarter swap the two.
    """
    from PIL import ExifTags, Image

    with Image.open(path, formats=FORMATS) as img:
        w, h = img.size
        turned = img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    return (w, h) if turned else (h, w)


def _png_depth(source: str | os.PathLike[str] | bytes) -> int:
    """Bit depth from the PNG header (Pillow reads 16-bit RGB as 8-bit RGB silently)."""
    if isinstance(source, bytes):
        head = source[:25]
    else:
        with open(source, "rb") as fh:
            head = fh.read(25)
    return head[24] if len(head) == 25 else 8


def _to_rgb8(img: Image.Image, notes: list[str]) -> np.ndarray:
    import numpy as np
    from PIL import Image

    mode = img.mode
    if mode.startswith("F"):  # no scale says what 1.0 is (0-1, 0-255, HDR): a guess misleads
        raise ImageError("floating-point image not supported; convert it to 8 or 16 bits")
    if mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageError("32-bit image with values beyond 16 bits not supported")
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        notes.append("16-bit grayscale image scaled to 8 bits and converted to RGB")
        gray = np.clip(np.round(arr / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append("alpha channel dropped (composited on white)")
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"), dtype=np.uint8).copy()
    if mode in ("L", "1"):
        notes.append("grayscale image converted to RGB")
    elif mode == "P":
        notes.append("palette image converted to RGB")
    else:
        notes.append(f"{mode} image converted to RGB")
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


# zlib level of written PNGs: on a decoded 768x512 image level 4 took 0.05 s against
# 0.125 s for Pillow's default 6, for a file 4 % larger.
PNG_LEVEL = 4


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an H x W x 3 uint8 array as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()
