"""Feedback maps: what the reconstructor's renders tell the generator at the next step.

Every map is ``(B, V, 3, H, W)`` in [0, 1], at the generator's image resolution:

- ``rgb``: the rendered colour, composited on the render background.
- ``ccm``: a canonical coordinate map. Two definitions, chosen by ``MapsConfig.ccm``:

  * ``canonical`` (the paper): world xyz of the surface seen at each pixel, from the
    *expected* depth (accumulated depth / alpha) at pixel centres, mapped from the cube
    ``[-bound, bound]^3`` to [0, 1]; pixels with alpha below ``alpha_threshold`` get
    ``ccm_background``. View-independent: a surface point has the same colour in every view.
  * ``official``: the signal the published Ouroboros3D weights were trained on, reproduced
    exactly (official code ``get_position_map``): *pixel-index* coordinates (no +0.5) pushed
    through *normalised* intrinsics (a unit mismatch), scaled by the *accumulated* depth,
    transformed by c2w, masked where the accumulated depth is 0, then ``0.001 x + 0.5``
    clamped to [0, 1]. It is a rotated, depth-modulated pixel ramp with background 0.5.
- ``alpha``: the rendered alpha repeated on three channels.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .cameras import Cameras, unproject_depth
from .components import MAP_REQUIREMENTS
from .interfaces import RenderOutput
from .recipe import MapsConfig

MAP_KINDS = tuple(MAP_REQUIREMENTS)


def canonical_coordinate_map(
    depth: torch.Tensor,
    alpha: torch.Tensor,
    cameras: Cameras,
    bound: float = 1.0,
    background: float = 0.5,
    alpha_threshold: float = 0.5,
) -> torch.Tensor:
    """World coordinates in [-bound, bound]^3 mapped to [0, 1], ``(B, V, 3, H, W)``.

    ``depth`` is the expected camera-space z ``(B, V, 1, H, W)`` (already divided by alpha).
    """
    world = unproject_depth(depth, cameras)
    ccm = (world / bound + 1) / 2
    fg = alpha > alpha_threshold
    return torch.where(fg, ccm.clamp(0, 1), torch.full_like(ccm, background))


def official_position_map(
    accumulated_depth: torch.Tensor,
    cameras: Cameras,
    scale: float = 0.001,
    offset: float = 0.5,
) -> torch.Tensor:
    """The official code's "CCM" (its ``get_position_map``), bugs included, ``(B, V, 3, H, W)``.

    ``accumulated_depth`` is the alpha-blended z, Σ T_i α_i z_i, *not* divided by alpha.
    """
    D = accumulated_depth[:, :, 0]  # (B, V, H, W)
    H, W = D.shape[-2:]
    K = cameras.intrinsics.to(D.dtype)
    v, u = torch.meshgrid(
        torch.arange(H, device=D.device, dtype=D.dtype),
        torch.arange(W, device=D.device, dtype=D.dtype),
        indexing="ij",
    )
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    p_cam = torch.stack([(u - cx) * D / fx, (v - cy) * D / fy, D], 2)  # (B,V,3,H,W)
    c2w = cameras.c2w.to(D.dtype)
    world = torch.einsum("bvij,bvjhw->bvihw", c2w[..., :3, :3], p_cam) + c2w[..., :3, 3, None, None]
    world = world * (D > 0).unsqueeze(2).to(D.dtype)
    return (world * scale + offset).clamp(0, 1)


def feedback_maps(
    render: RenderOutput,
    cameras: Cameras,
    kinds: Iterable[str],
    config: MapsConfig,
) -> dict[str, torch.Tensor]:
    """The requested maps from one render of all views."""
    maps: dict[str, torch.Tensor] = {}
    for kind in kinds:
        if kind == "rgb":
            maps[kind] = render.rgb
        elif kind == "alpha":
            maps[kind] = render.alpha.expand(-1, -1, 3, -1, -1)
        elif kind == "ccm" and config.ccm == "canonical":
            maps[kind] = canonical_coordinate_map(
                render.depth, render.alpha, cameras, config.bound, config.ccm_background, config.alpha_threshold
            )
        elif kind == "ccm":
            acc = render.accumulated_depth if render.accumulated_depth is not None else render.depth * render.alpha
            maps[kind] = official_position_map(acc, cameras)
        else:
            raise ValueError(f"unknown feedback map kind {kind!r}; known: {', '.join(MAP_KINDS)}")
    return maps


def zero_maps(
    kinds: Iterable[str],
    shape: tuple[int, int, int, int, int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """All-zero maps, the input at step 0 (as the official sampler and trainer use)."""
    return {kind: torch.zeros(shape, device=device, dtype=dtype) for kind in kinds}
