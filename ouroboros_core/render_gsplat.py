"""The CUDA Gaussian backend: a thin adapter around ``gsplat.rasterization``.

It has the same signature and output layout as
:func:`ouroboros_core.render_torch.rasterize_gaussians`, so :class:`GaussianCloud` swaps
backends without converting anything twice. gsplat already uses our conventions
(world-to-camera OpenCV ``viewmats``, pixel ``Ks``, pixel centres at +0.5, ``wxyz``
quaternions), so the adapter only chooses the options that reproduce the reference renderer
(classic rasterization, the 0.3 low-pass, accumulated depth through ``render_mode="RGB+D"``)
and splits gsplat's extra depth channel off. gsplat is imported inside the function: it
JIT-compiles CUDA code on first use and is an optional extra (``pip install ouroboros3d[cuda]``).
"""

from __future__ import annotations

from typing import Any

import torch


def gsplat_arguments(
    means: torch.Tensor,
    quats: torch.Tensor | None,
    scales: torch.Tensor | None,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    backgrounds: torch.Tensor | None = None,
    covars: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``gsplat.rasterization`` (pure; no gsplat import).

    With ``covars`` the quaternions and scales are not passed: gsplat would renormalise the
    quaternions, which must not happen for un-normalised-quaternion models.
    """
    use_covars = covars is not None
    return {
        "means": means,
        "quats": None if use_covars else quats,
        "scales": None if use_covars else scales,
        "opacities": opacities,
        "colors": colors,
        "viewmats": viewmats,
        "Ks": Ks,
        "width": int(width),
        "height": int(height),
        "near_plane": float(near_plane),
        "far_plane": float(far_plane),
        "eps2d": float(eps2d),
        "backgrounds": backgrounds,
        "covars": covars,
        "sh_degree": None,
        "packed": False,
        "rasterize_mode": "classic",
        "render_mode": "RGB+D",
    }


def rasterize_gaussians_gsplat(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same arguments as :func:`gsplat_arguments` and same contract as
    :func:`ouroboros_core.render_torch.rasterize_gaussians`: returns ``colors (..., C, H, W, D)``,
    ``alphas (..., C, H, W, 1)`` and the accumulated depth ``(..., C, H, W, 1)``."""
    import gsplat

    # in "RGB+D" mode gsplat appends the depth channel (with a zero background) itself
    rendered, alphas, _ = gsplat.rasterization(**gsplat_arguments(*args, **kwargs))
    return rendered[..., :-1], alphas, rendered[..., -1:]
