"""Reading images safely, and the scan that finds the ones that cannot be read.

Real folders hold truncated uploads, zero-byte files, HTML error pages saved as ``.jpg``,
CMYK scans, 16-bit PNGs and phone photos whose pixels are stored sideways. Everything that
can be read becomes upright 8-bit RGB; everything that cannot is reported with a reason
before training starts, so nothing fails mid-epoch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Refuse to silently pad truncated files with grey (Pillow's opt-in behaviour).
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow warns about odd EXIF/ICC/palette data in images it then reads fine; per-call
# `catch_warnings` is not thread-safe, and the scan runs in threads.
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
# Image formats users drop into folders that Pillow cannot decode without plug-ins: reported as
# unreadable (the user expects them to be used) instead of skipped like a stray .txt file.
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset(
    {".heic", ".heif", ".avif", ".jxl", ".svg", ".raw", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".psd"}
)
SCAN_MODES = ("fast", "full", "off")
# Background for transparent pixels: product shots on transparent backgrounds are shot on white.
ALPHA_BACKGROUND = (255, 255, 255)


class UnreadableImageError(Exception):
    """Raised when a file cannot be decoded as an image; the message is the reason shown to users."""


def is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Reads any image Pillow can decode as an upright ``H x W x 3`` uint8 RGB array.

    EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and alpha images are
    converted (transparent pixels over white).

    Raises:
        UnreadableImageError: with a short reason when the file is missing, empty or corrupt.
    """
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb_array(image)
    except FileNotFoundError:
        raise UnreadableImageError("file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(_reason(path, err)) from None


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Converts a decoded Pillow image of any mode to an ``H x W x 3`` uint8 array."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit grayscale: Pillow's convert("L") clips at 255, so scale the full range instead.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (*ALPHA_BACKGROUND, 255))
        image = Image.alpha_composite(background, image)
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return np.asarray(image, dtype=np.uint8)


def check_image(path: str | os.PathLike, mode: str = "fast") -> str | None:
    """Returns why ``path`` cannot be used as an image, or ``None`` if it can.

    ``fast`` reads the header and checks integrity without a full decode where the format
    allows it: PNG chunk CRCs (``verify``) and JPEGs decoded at 1/8 scale (``draft``), which
    still walks the whole compressed stream and so catches truncation. Other formats are
    decoded. ``full`` decodes every image at full size.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
        return f"unsupported format ({suffix[1:].upper()}): convert it to JPEG or PNG"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file not found"
    except OSError as err:
        return f"cannot stat file: {err.strerror or err}"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as image:
            if mode == "fast" and image.format == "PNG":
                image.verify()
            else:
                if mode == "fast" and image.format == "JPEG":
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
                if image.width == 0 or image.height == 0:
                    return "image has zero width or height"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return _reason(path, err)
    return None


def scan_images(paths: Iterable[str], mode: str = "fast", workers: int | None = None) -> dict[str, str]:
    """Checks ``paths`` in parallel; returns ``{path: reason}`` for the ones that cannot be used.

    Threads, because Pillow releases the GIL while it decodes and most of the rest is file I/O.
    """
    if mode not in SCAN_MODES:
        raise ValueError(f"scan mode must be one of {SCAN_MODES}, got {mode!r}")
    paths = list(paths)
    if mode == "off" or not paths:
        return {}
    workers = workers or min(32, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = pool.map(lambda p: check_image(p, mode), paths, chunksize=64)
        return {p: r for p, r in zip(paths, reasons, strict=True) if r is not None}


def _reason(path: str | os.PathLike, err: BaseException) -> str:
    if isinstance(err, UnidentifiedImageError):
        return "not an image (Pillow cannot identify the format)"
    if isinstance(err, Image.DecompressionBombError):
        return f"image too large: {err}"
    message = str(err).split(f" {os.fspath(path)!r}")[0].strip() or type(err).__name__
    if "truncated" in message.lower() or "end of file" in message.lower():
        return f"truncated or corrupt ({message})"
    return f"corrupt ({message})"
