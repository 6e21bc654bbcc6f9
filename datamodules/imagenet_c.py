"""The ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019), one function per type.

Each function follows the reference implementation (``ImageNet-C/create_c/make_imagenet_c.py``
in hendrycks/robustness), takes a float32 ``H x W x 3`` image in [0, 1], the parameters of one
severity, a seeded ``numpy.random.Generator`` and ``scale`` (the image's short side over the
224 px the reference parameters are defined for), and returns a float image (the caller clips
and rounds). Where an albumentations 2.0.8 transform computes what the reference computes it
is used; the comment at each other function says why it is not.

How parameters given in pixels follow the image size (``scale``):

- per-pixel corruptions (noise, brightness, contrast, JPEG) and relative ones (pixelate) have
  no pixel lengths;
- random layers with pixel-sized structure (snow flakes, the elastic displacement field, the
  fog fractal) are drawn at the reference resolution with the reference parameters and
  resized to the image, so their structure keeps its size relative to the scene;
- blurs with a pixel radius (defocus, motion, glass, zoom) run on a grid at least as fine as
  the reference (``GRID_KINDS``): ``corruptions.py`` enlarges smaller images by an integer
  factor first and averages the blocks back afterwards, so a radius never shrinks below a
  pixel and severities stay distinct on 32 px images.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable, Mapping

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its import otherwise calls the network

import albumentations as A
import cv2
import numpy as np
from PIL import Image
from skimage.filters import gaussian
from skimage.util import random_noise

Params = Mapping[str, float]
Corruption = Callable[[np.ndarray, Params, np.random.Generator, float], np.ndarray]


def _run(transform: A.ImageOnlyTransform, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Applies an albumentations transform with randomness drawn from ``rng`` (thread-safe: a fresh transform)."""
    transform.set_random_state(rng, random.Random(int(rng.integers(2**32))))
    return transform(image=image)["image"]


def _reference_shape(image: np.ndarray, scale: float) -> tuple[int, int]:
    """(height, width) of ``image`` at the reference resolution (short side 224 px)."""
    height, width = image.shape[:2]
    return max(1, round(height / scale)), max(1, round(width / scale))


def _resize_layer(layer: np.ndarray, height: int, width: int) -> np.ndarray:
    if layer.shape[:2] == (height, width):
        return layer
    shrink = height < layer.shape[0]
    return cv2.resize(layer, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _clipped_zoom(layer: np.ndarray, factor: float) -> np.ndarray:
    """Enlarges the centre of ``layer`` by ``factor`` (bilinear), keeping its size."""
    height, width = layer.shape[:2]
    crop_h, crop_w = int(np.ceil(height / factor)), int(np.ceil(width / factor))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = layer[top : top + crop_h, left : left + crop_w]
    zoomed = cv2.resize(crop, (round(crop_w * factor), round(crop_h * factor)), interpolation=cv2.INTER_LINEAR)
    trim_top, trim_left = (zoomed.shape[0] - height) // 2, (zoomed.shape[1] - width) // 2
    return zoomed[trim_top : trim_top + height, trim_left : trim_left + width]


# ---- noise -------------------------------------------------------------------------------


def gaussian_noise(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    std = float(p["std"])
    return _run(A.GaussNoise(std_range=(std, std), mean_range=(0.0, 0.0), per_channel=True, p=1.0), x, rng)


def shot_noise(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Own code: albumentations' ShotNoise draws photons in linear light (gamma 2.2); the reference
    # draws them on the stored pixel values.
    photons = float(p["photons"])
    return rng.poisson(x * photons) / photons


def impulse_noise(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # scikit-image, as the reference: each channel value independently (coloured specks);
    # albumentations' SaltAndPepper sets whole pixels to black or white.
    return random_noise(x, mode="s&p", amount=float(p["amount"]), rng=rng)


# ---- blur (run on the fine grid) -----------------------------------------------------------


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    # The reference's disk: pixel centres within the radius, then a small Gaussian against aliasing.
    half = max(8, int(np.ceil(radius)))
    offsets = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(offsets, offsets)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float32)
    disk /= disk.sum()
    ksize = (3, 3) if radius <= 8 else (5, 5)
    return cv2.GaussianBlur(disk, ksize, sigmaX=alias_blur)


def defocus_blur(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Own code: albumentations' Defocus takes an integer radius; scaled radii are fractional.
    # alias_blur smooths the disk's pixel staircase, a property of the pixel grid: not scaled.
    kernel = _disk_kernel(float(p["radius"]) * scale, float(p["alias_blur"]))
    return cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def motion_kernel(radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's motion-blur kernel, which the reference calls: a one-sided streak.

    ``2 * ceil(radius) + 1`` taps at whole-pixel steps along ``angle`` (degrees, image
    coordinates), weighted by a Gaussian of ``sigma`` pixels that starts at the pixel itself.
    For ``cv2.filter2D`` (correlation, anchor at the centre).
    """
    taps = 2 * int(np.ceil(radius)) + 1
    steps = np.arange(taps)
    weights = np.exp(-(steps.astype(np.float64) ** 2) / (2 * max(sigma, 1e-6) ** 2))
    weights /= weights.sum()
    theta = np.deg2rad(angle)
    dx = np.ceil(steps * np.cos(theta) - 0.5).astype(int)
    dy = np.ceil(steps * np.sin(theta) - 0.5).astype(int)
    half = taps - 1
    kernel = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float32)
    np.add.at(kernel, (half + dy, half + dx), weights)
    return kernel


def motion_blur(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Own code: albumentations' MotionBlur spreads equal weights along a centred line; the
    # reference's ImageMagick call leaves a Gaussian-weighted trail on one side of each pixel.
    angle = rng.uniform(-float(p["max_angle"]), float(p["max_angle"]))
    kernel = motion_kernel(float(p["radius"]) * scale, float(p["sigma"]) * scale, angle)
    # ImageMagick extends the border by repeating edge pixels.
    return cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REPLICATE)


def local_shuffle(image: np.ndarray, delta: int, offsets: np.ndarray) -> np.ndarray:
    """One pass of the reference's glass-blur pixel shuffle, in place, a row at a time.

    The reference visits ``(h, w)`` from the bottom-right corner to the top-left one
    (``h`` from ``H - delta`` down to ``delta + 1``, ``w`` likewise) and runs
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on an ``H x W x 3`` array, where
    ``(h', w') = (h + dy, w + dx)``. With numpy views that statement copies rather than swaps:
    ``x[h, w]`` takes the value at ``(h', w')``, which keeps its own. This reproduces it
    exactly without a Python loop per pixel: a row's sources in other rows already hold their
    values for this pass; a source to the right in the same row, visited earlier, holds its
    new value, so those chains are followed to their end.

    Args:
        image: ``H x W x C`` array, changed in place and returned.
        delta: the largest shift; ``dx`` and ``dy`` lie in ``[-delta, delta)``.
        offsets: ``(rows, cols, 2)`` integers ``(dx, dy)`` in visiting order, for the
            ``rows = H - 2 * delta`` and ``cols = W - 2 * delta`` visited positions.
    """
    height, width = image.shape[:2]
    rows = np.arange(height - delta, delta, -1)
    cols = np.arange(width - delta, delta, -1)
    if not len(rows) or not len(cols):
        return image
    columns = np.arange(width)
    for r, h in enumerate(rows):
        dx, dy = offsets[r, :, 0], offsets[r, :, 1]
        src_cols = cols + dx
        value = image[h].copy()
        value[cols] = image[h + dy, src_cols]  # row h itself is still unchanged while it is read
        follow = (dy == 0) & (dx > 0) & (src_cols <= cols[0])  # source visited earlier in this row
        pointer = columns.copy()
        pointer[cols[follow]] = src_cols[follow]
        while True:  # pointer jumping: chains only go right, so this ends after log2(width) rounds
            jumped = pointer[pointer]
            if np.array_equal(jumped, pointer):
                break
            pointer = jumped
        image[h] = value[pointer]
    return image


def glass_blur(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Own code: albumentations' GlassBlur is either a Python loop per pixel ("exact", about a
    # second an image) or swaps every pixel at once ("fast"), which is not the reference's shuffle.
    sigma = float(p["sigma"]) * scale
    delta = max(1, round(float(p["max_delta"]) * scale))
    # The reference stores the first blur as uint8 (truncating) before shuffling.
    shuffled = (np.clip(gaussian(x, sigma=sigma, channel_axis=-1), 0, 1) * 255).astype(np.uint8)
    height, width = x.shape[:2]
    shape = (max(0, height - 2 * delta), max(0, width - 2 * delta), 2)
    for _ in range(int(p["iterations"])):
        local_shuffle(shuffled, delta, rng.integers(-delta, delta, size=shape))
    return gaussian(shuffled / 255.0, sigma=sigma, channel_axis=-1)


def zoom_blur(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # albumentations' ZoomBlur averages the image zoomed by arange(1, max_zoom, step), as the
    # reference does (bilinear; it also handles non-square images).
    top, step = float(p["max_zoom"]), float(p["step"])
    return _run(A.ZoomBlur(max_factor=(top, top), step_factor=(step, step), p=1.0), x, rng)


# ---- weather -----------------------------------------------------------------------------


def snow(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Own code: albumentations' RandomSnow brightens regions; the reference draws flakes,
    # streaks them with a motion blur and adds them twice (rotated by 180 degrees).
    height, width = x.shape[:2]
    layer = rng.normal(loc=float(p["mean"]), scale=float(p["std"]), size=_reference_shape(x, scale))
    layer = _clipped_zoom(layer.astype(np.float32), float(p["zoom"]))
    layer[layer < float(p["threshold"])] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255) / 255  # the reference stores the flakes as 8 bits
    angle = rng.uniform(float(p["min_angle"]), float(p["max_angle"]))
    kernel = motion_kernel(float(p["blur_radius"]), float(p["blur_sigma"]), angle)
    layer = cv2.filter2D(layer.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REPLICATE)
    layer = _resize_layer(layer, height, width)[..., None]
    weight = float(p["image_weight"])
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    x = weight * x + (1 - weight) * np.maximum(x, gray * 1.5 + 0.5)  # overcast: lift the dark parts
    return x + layer + np.rot90(layer, k=2)


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A ``size x size`` (a power of two) diamond-square height map in [0, 1], wrapping at the edges.

    Each halving of the step adds noise of amplitude ``w * w`` (``w`` starts at 100 and is
    divided by ``decay`` each time), as in the reference: a smaller ``decay`` keeps more fine
    detail, a patchier fog.
    """
    if size < 2 or size & (size - 1):
        raise ValueError(f"plasma_fractal size must be a power of two >= 2, got {size}")
    grid = np.zeros((size, size))
    step, wobble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = grid[0::step, 0::step]
        square = corners + np.roll(corners, -1, axis=0)
        square = square + np.roll(square, -1, axis=1)
        grid[half::step, half::step] = square / 4 + wobble * rng.uniform(-wobble, wobble, square.shape)
        centres = grid[half::step, half::step]
        across = corners + np.roll(corners, -1, axis=1) + centres + np.roll(centres, 1, axis=0)
        grid[0::step, half::step] = across / 4 + wobble * rng.uniform(-wobble, wobble, across.shape)
        down = corners + np.roll(corners, -1, axis=0) + centres + np.roll(centres, 1, axis=1)
        grid[half::step, 0::step] = down / 4 + wobble * rng.uniform(-wobble, wobble, down.shape)
        step, wobble = half, wobble / decay
    grid -= grid.min()
    return grid / max(grid.max(), 1e-12)


def fog(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Own code: albumentations' RandomFog paints fog discs; the reference adds a fractal and
    # rescales so the brightest value stays where it was.
    height, width = x.shape[:2]
    ref_h, ref_w = _reference_shape(x, scale)
    size = 1 << max(1, int(np.ceil(np.log2(max(ref_h, ref_w)))))  # 256 for the reference's 224 px
    layer = plasma_fractal(size, float(p["decay"]), rng)[:ref_h, :ref_w].astype(np.float32)
    layer = _resize_layer(layer, height, width)[..., None]
    strength, peak = float(p["strength"]), float(x.max())
    return (x + strength * layer) * peak / (peak + strength)


def brightness(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Own code: albumentations' brightness scales RGB values; the reference adds to the HSV value
    # (with scikit-image, whose HSV OpenCV's float conversion matches to 1e-5, 10x faster).
    hsv = cv2.cvtColor(np.ascontiguousarray(x, dtype=np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 2] = np.clip(hsv[..., 2] + float(p["delta"]), 0, 1)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


# ---- digital -----------------------------------------------------------------------------


def contrast(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Own code: albumentations' contrast pulls towards the grey mean; the reference pulls each
    # channel towards its own mean.
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * float(p["factor"]) + means


def elastic(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Own code: albumentations' ElasticTransform has no random affine step, which dominates the
    # reference's first two severities.
    height, width = x.shape[:2]
    # A random affine: three points around the centre each move by up to `affine` pixels.
    centre = np.float32([height // 2, width // 2])
    arm = min(height, width) // 3
    source = np.float32([centre + arm, [centre[0] + arm, centre[1] - arm], centre - arm])
    jitter = float(p["affine"]) * scale
    target = source + rng.uniform(-jitter, jitter, size=source.shape).astype(np.float32)
    warped = cv2.warpAffine(
        x, cv2.getAffineTransform(source, target), (width, height), borderMode=cv2.BORDER_REFLECT_101
    )
    # A smooth random displacement field, drawn at the reference resolution.
    ref_shape = _reference_shape(x, scale)
    fields = []
    for _ in range(2):
        noise = rng.uniform(-1, 1, size=ref_shape)
        field = gaussian(noise, sigma=float(p["sigma"]), mode="reflect", truncate=3) * float(p["alpha"])
        fields.append(_resize_layer(field.astype(np.float32), height, width) * scale)
    dx, dy = fields
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.remap(warped, grid_x + dx, grid_y + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _to_pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.round(x * 255), 0, 255).astype(np.uint8))


def pixelate(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Own code (Pillow's BOX filter, as the reference): albumentations' Downscale resizes with
    # OpenCV and differs by 5-10 grey levels on average at the reference's factors.
    image = _to_pil(x)
    factor = float(p["factor"])
    small = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
    image = image.resize(small, Image.Resampling.BOX).resize((x.shape[1], x.shape[0]), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32) / 255


def jpeg(x: np.ndarray, p: Params, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Own code (Pillow, as the reference): albumentations' ImageCompression hands RGB arrays to
    # OpenCV, which encodes them as BGR, so luma and chroma are computed from swapped channels.
    buffer = io.BytesIO()
    _to_pil(x).save(buffer, format="JPEG", quality=int(p["quality"]))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255


# In the reference's order. Frost is left out: it blends in photographs of frost that are not
# part of any dependency here.
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic": elastic,
    "pixelate": pixelate,
    "jpeg": jpeg,
}
# Blurs whose pixel radii must not drop below a pixel: run on a grid at least as fine as the reference's.
GRID_KINDS = frozenset({"defocus_blur", "glass_blur", "motion_blur", "zoom_blur"})
FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "fog", "brightness"),
    "digital": ("contrast", "elastic", "pixelate", "jpeg"),
}
