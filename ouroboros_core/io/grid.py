"""Generated views as images: one PNG per view, and a grid of all views.

The grid has the layout of ``torchvision.utils.save_image`` (used by the official code for its
``<name>.png``): ``columns`` views per row, ``padding`` pixels of ``pad_value`` around and
between cells, so 8 views of 512² at 4 columns give a 2058 x 1030 image. A row with fewer views
than ``columns`` stays padded; fewer views than ``columns`` in total shrink the grid to them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_write


def views_to_uint8(views: torch.Tensor | np.ndarray) -> np.ndarray:
    """Views ``(V, C, H, W)`` in [0, 1] (C = 1 or 3) to uint8 ``(V, H, W, 3)``, rounded to nearest."""
    if isinstance(views, torch.Tensor):
        views = views.detach().float().cpu().numpy()
    views = np.asarray(views, dtype=np.float32)
    if views.ndim != 4 or views.shape[1] not in (1, 3):
        raise ValueError(f"views must be (V, 1 or 3, H, W), got {views.shape}")
    if views.shape[1] == 1:
        views = np.repeat(views, 3, axis=1)
    return (np.clip(views, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def make_grid(views: torch.Tensor | np.ndarray, columns: int = 4, padding: int = 2, pad_value: float = 0.0) -> np.ndarray:
    """Tile views ``(V, C, H, W)`` in [0, 1] into a uint8 ``(rows·(H+p)+p, cols·(W+p)+p, 3)`` image.

    ``pad_value`` is in [0, 1] (0 black, as torchvision's default).
    """
    pixels = views_to_uint8(views)
    count, height, width, _ = pixels.shape
    cols = min(columns, count)
    rows = math.ceil(count / cols)
    fill = int(round(float(np.clip(pad_value, 0.0, 1.0)) * 255))
    grid = np.full((rows * (height + padding) + padding, cols * (width + padding) + padding, 3), fill, np.uint8)
    for index in range(count):
        row, col = divmod(index, cols)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        grid[top : top + height, left : left + width] = pixels[index]
    return grid


def save_grid(
    views: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    columns: int = 4,
    padding: int = 2,
    pad_value: float = 0.0,
) -> Path:
    """Write :func:`make_grid` of ``views`` to ``path`` (format from the extension, PNG normally)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        Image.fromarray(make_grid(views, columns, padding, pad_value)).save(tmp)
    return path


def save_views(views: torch.Tensor | np.ndarray, folder: str | os.PathLike, prefix: str = "view") -> list[Path]:
    """Write each view ``(V, C, H, W)`` in [0, 1] as ``folder/{prefix}_{i:02d}.png``; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, pixels in enumerate(views_to_uint8(views)):
        path = folder / f"{prefix}_{index:02d}.png"
        with atomic_write(path) as tmp:
            Image.fromarray(pixels).save(tmp)
        paths.append(path)
    return paths
