"""Turning findings into things people look at: TensorBoard images and text, and galleries of the
original images with captions. (Plain report files go through ``runs.folder.RunFolder``.)"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # renders without a display, also inside DataLoader-free callbacks on servers

import numpy as np
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image, ImageDraw, ImageFont

from datamodules.image_io import UnreadableImageError, read_rgb

GOOD = (27, 120, 55)
BAD = (200, 30, 30)
INK = (20, 20, 20)


def tensorboard(trainer: Trainer):
    """The run's TensorBoard ``SummaryWriter``, or ``None`` when no TensorBoard logger is configured."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def log_image(trainer: Trainer, tag: str, image: np.ndarray, step: int) -> None:
    writer = tensorboard(trainer)
    if writer is not None:
        writer.add_image(tag, image, global_step=step, dataformats="HWC")


def log_text(trainer: Trainer, tag: str, markdown: str, step: int) -> None:
    writer = tensorboard(trainer)
    if writer is not None:
        writer.add_text(tag, markdown, global_step=step)


def figure_to_array(fig) -> np.ndarray:
    """Renders a matplotlib figure to an ``H x W x 3`` uint8 array and closes it."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    array = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return array


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(value) -> str:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Scales ``image`` so its longest side is ``size`` and centres it on a white square.

    Small images are enlarged with hard pixel edges (NEAREST), so a 28 px digit stays
    readable instead of turning to blur; large ones are shrunk with LANCZOS.
    """
    tile = Image.fromarray(image)
    scale = size / max(tile.size)
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))), resample)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(tile, ((size - tile.width) // 2, (size - tile.height) // 2))
    return np.asarray(canvas)


class ThumbnailCache:
    """Un-augmented thumbnails of the original files, kept between epochs (bounded, LRU).

    Args:
        size: longest side in pixels.
        capacity: most thumbnails kept.
    """

    def __init__(self, size: int, capacity: int = 512) -> None:
        self.size, self.capacity = size, capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def __call__(self, path: str) -> np.ndarray:
        if path in self._items:
            self._items.move_to_end(path)
            return self._items[path]
        try:
            thumb = fit_square(read_rgb(path), self.size)
        except UnreadableImageError:
            thumb = np.full((self.size, self.size, 3), 128, np.uint8)
        self._items[path] = thumb
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return thumb


def gallery(
    images: Sequence[np.ndarray],
    captions: Sequence[Sequence[tuple[str, tuple[int, int, int]]]],
    *,
    columns: int = 8,
    title: str = "",
    font_size: int = 13,
) -> np.ndarray:
    """A grid of square thumbnails, each with coloured caption lines under it.

    Args:
        images: ``S x S x 3`` uint8 thumbnails, all the same size.
        captions: per image, lines of ``(text, rgb colour)``.
        columns: thumbnails per row.
        title: text above the grid, wrapped to its width.
        font_size: caption font size in px.
    """
    if not images:
        images, captions = [np.full((64, 64, 3), 255, np.uint8)], [[("nothing to show", INK)]]
    size = images[0].shape[0]
    n_lines = max(len(c) for c in captions)
    line_h = font_size + 4
    cell_w = max(size, 7 * font_size) + 8
    cell_h = size + n_lines * line_h + 10
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    title_font = font(font_size + 2)
    title_lines = _wrap(title, columns * cell_w - 12, title_font) if title else []
    title_h = len(title_lines) * (font_size + 6) + 8 if title else 0
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h + title_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(title_lines):
        draw.text((6, 5 + k * (font_size + 6)), line, fill=INK, font=title_font)
    for i, (image, lines) in enumerate(zip(images, captions, strict=True)):
        x0, y0 = (i % columns) * cell_w, (i // columns) * cell_h + title_h
        canvas.paste(Image.fromarray(image), (x0 + (cell_w - size) // 2, y0 + 4))
        for j, (text, colour) in enumerate(lines):
            text = _fit(draw, text, cell_w - 6, font(font_size))
            draw.text((x0 + 4, y0 + size + 6 + j * line_h), text, fill=colour, font=font(font_size))
    return np.asarray(canvas)


def _wrap(text: str, width: int, typeface) -> list[str]:
    """Greedy word wrap to ``width`` pixels."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in text.split():
        if lines and measure.textlength(f"{lines[-1]} {word}", font=typeface) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, typeface) -> str:
    if draw.textlength(text, font=typeface) <= width:
        return text
    while text and draw.textlength(text + "…", font=typeface) > width:
        text = text[:-1]
    return text + "…"


def save_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path)
