"""Plücker camera conditioning of the SVD generator.

Per latent pixel, a 6-D Plücker vector ``[o x d, d]`` is harmonic-encoded to
``6 (2 n + 1)`` features (78 for n = 6) and mapped by a small MLP per injection site to
that site's channels. Two ray computations:

- ``"paper"``: the correct rays of :func:`ouroboros_core.cameras.plucker_rays`.
- ``"official"``: the official Ouroboros3D computation (reference §2.2), reproduced because
  the published weights were trained on it: the pixel grid is transposed (camera x follows
  the row index), the camera point is multiplied by ``E^T`` instead of ``E`` (so the
  rotation is transposed and the translation dropped) and the direction is taken from the
  camera centre to that point.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ouroboros_core.cameras import Cameras, plucker_rays

RayMode = Literal["official", "paper"]


def official_plucker_rays(cameras: Cameras, height: int, width: int) -> torch.Tensor:
    """The official code's Plücker field ``(B, V, 6, H, W)`` (see module docstring).

    Row ``i`` / column ``j`` give ``u0 = (i + 0.5) / H`` (used as camera x) and
    ``u1 = (j + 0.5) / W`` (used as camera y); ``p = ((u0 - cx) / fx, (u1 - cy) / fy, 1)``;
    ``q = R^T p`` (the homogeneous 1 meets E's zero bottom row, so t drops out);
    ``d = normalize(q - t)``, ``o = t`` with t the camera centre. Computed in float32.
    """
    c2w = cameras.c2w.float()
    K = cameras.intrinsics.float()
    device = c2w.device
    rows = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    cols = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    u0, u1 = torch.meshgrid(rows, cols, indexing="ij")  # (H, W): row-based, column-based
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    p = torch.stack([(u0 - cx) / fx, (u1 - cy) / fy, torch.ones_like((u0 - cx) / fx)], -1)  # (B,V,H,W,3)
    R = c2w[..., :3, :3]
    q = torch.einsum("bvij,bvhwi->bvhwj", R, p)  # R^T p
    t = c2w[..., :3, 3][:, :, None, None, :]
    d = torch.nn.functional.normalize(q - t, dim=-1)
    o = t.expand_as(d)
    return torch.cat([torch.linalg.cross(o, d, dim=-1), d], -1).permute(0, 1, 4, 2, 3)


def plucker_field(cameras: Cameras, height: int, width: int, mode: RayMode) -> torch.Tensor:
    """Plücker coordinates ``[o x d, d]`` ``(B, V, 6, H, W)`` in float32 for ``mode``."""
    if mode == "official":
        return official_plucker_rays(cameras, height, width)
    return plucker_rays(cameras.to(dtype=torch.float32), height, width)


def harmonic_encoding(x: torch.Tensor, num_frequencies: int, dim: int = -1) -> torch.Tensor:
    """``[sin(x_d f_k) (dim-major), cos(x_d f_k), x]`` along ``dim`` with ``f_k = 2^k``.

    For 6 input channels and 6 frequencies this is the official 78-D encoding (frequencies
    1..32, no pi, feature index ``d * n + k`` inside each of the sin and cos blocks).
    """
    x = x.movedim(dim, -1)
    freqs = 2.0 ** torch.arange(num_frequencies, device=x.device, dtype=x.dtype)
    angles = (x[..., :, None] * freqs).flatten(-2)
    out = torch.cat([angles.sin(), angles.cos(), x], -1)
    return out.movedim(-1, dim)


class PluckerMLP(nn.Module):
    """Linear → SiLU → Linear on the harmonic features of one injection site.

    State-dict names ``embed.0`` / ``embed.2`` follow the official checkpoint.
    """

    def __init__(self, in_features: int, channels: int, zero_init_output: bool = False):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_features, channels), nn.SiLU(), nn.Linear(channels, channels))
        if zero_init_output:
            nn.init.zeros_(self.embed[2].weight)
            nn.init.zeros_(self.embed[2].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, V, F, h, w)`` harmonic features → ``(B·V, C, h, w)`` UNet-shaped features."""
        B, V, F, h, w = features.shape
        x = features.permute(0, 1, 3, 4, 2).reshape(B * V, h, w, F)
        return self.embed(x).permute(0, 3, 1, 2)


def build_plucker_mlps(
    channels: dict[str, list[int]], in_features: int, zero_init_output: bool
) -> tuple[nn.ModuleList, PluckerMLP, nn.ModuleList]:
    """``(down_plucker, mid_plucker, up_plucker)`` for the given per-site channels.

    The generator holds them as its own attributes so their state-dict keys match the
    official checkpoint (``down_plucker.{i}.embed.*``, ``mid_plucker.embed.*``, ...).
    """
    down = nn.ModuleList(PluckerMLP(in_features, c, zero_init_output) for c in channels["down"])
    mid = PluckerMLP(in_features, channels["mid"][0], zero_init_output)
    up = nn.ModuleList(PluckerMLP(in_features, c, zero_init_output) for c in channels["up"])
    return down, mid, up
