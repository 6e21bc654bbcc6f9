"""Figures without pyplot: nothing registered globally, nothing to close, safe in any thread."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(**kwargs: Any) -> Figure:
    """A matplotlib ``Figure`` with an Agg canvas attached, so ``fig.canvas.buffer_rgba()`` and
    TensorBoard's ``add_figure`` both work on it."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Renders ``fig`` to an ``H x W x 3`` uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
