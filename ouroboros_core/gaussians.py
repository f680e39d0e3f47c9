"""GaussianCloud: a batch of 3D Gaussian splat clouds, rendered by gsplat or by pure torch.

Fields (``B`` objects, ``N`` Gaussians each, all post-activation):

- ``means (B, N, 3)`` world positions (y-up world, see ``cameras.py``);
- ``quats (B, N, 4)`` rotations, ``wxyz``;
- ``scales (B, N, 3)`` standard deviations along the rotated axes;
- ``opacities (B, N)`` in [0, 1];
- ``colors (B, N, 3)`` rgb in [0, 1].

Two render settings travel with the cloud, so that a generic sampler renders it the way the
model that produced it was trained (the sampler only calls ``render(cameras, H, W, bg)``):

- ``raw_quaternions``: build covariances from the quaternion *without* normalising it, as
  the original 3DGS CUDA rasterizer does. Models trained against that rasterizer with
  un-normalised quaternions (LGM's pre-``fixrot`` weights and the published Ouroboros3D
  reconstructor, whose quaternions have norms far below 1) need it. Both backends honour it:
  covariances are built here and passed to the backend as ``covars``.
- ``near_plane``: Gaussians whose camera-space z is below it are culled. The default 0.01 is
  gsplat's; LGM's rasterizer culls at 0.2.
- ``alpha_max``: each splat's alpha at a pixel is ``min(alpha_max, o·exp(-d²/2))``. The default
  0.999 is gsplat's (a constant compiled into its CUDA kernel, not an argument); the original
  3DGS rasterizer, and LGM's fork of it that the official Ouroboros3D code renders with, use
  0.99 (``cuda_rasterizer/forward.cu``). The torch renderer honours any value; gsplat always
  uses 0.999, so a cloud asking for another value warns when rendered with gsplat. The two
  clamps give different pixels only where a splat's alpha exceeds 0.99.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from .cameras import Cameras
from .errors import UserError
from .interfaces import RenderOutput, Representation
from .precision import no_autocast
from .render_torch import quat_scale_to_covariance, rasterize_gaussians

Backend = Literal["auto", "torch", "gsplat"]
#: the per-splat alpha clamp compiled into gsplat's rasterization kernel
GSPLAT_ALPHA_MAX = 0.999


@functools.cache
def gsplat_available() -> bool:
    """Whether gsplat imports (it may still fail to compile its CUDA code on first use)."""
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def expected_depth(accumulated_depth: torch.Tensor, alpha: torch.Tensor, min_alpha: float = 1e-6) -> torch.Tensor:
    """Accumulated depth divided by alpha; 0 where alpha is (almost) 0."""
    return torch.where(alpha > min_alpha, accumulated_depth / alpha.clamp_min(min_alpha), torch.zeros_like(alpha))


def background_per_view(background: float | torch.Tensor, batch: int, views: int, channels: int, like: torch.Tensor) -> torch.Tensor:
    """A background given as a scalar, ``(D,)``, or ``(B, V, D)`` as a ``(B, V, D)`` tensor."""
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.dim() == 0:
        bg = bg.expand(channels)
    return bg.expand(batch, views, channels)


@dataclass(eq=False)
class GaussianCloud(Representation):
    """A batch of Gaussian clouds (see the module docstring for fields and conventions)."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor
    raw_quaternions: bool = False
    near_plane: float = 0.01
    alpha_max: float = GSPLAT_ALPHA_MAX
    #: Gaussians below this opacity are left out of a saved .ply (LGM writes with 0.005);
    #: the producer sets it, so ``save(path)`` writes what that model's own tools would
    save_min_opacity: float = 0.0

    def __post_init__(self) -> None:
        if self.means.dim() != 3 or self.means.shape[-1] != 3:
            raise ValueError(f"means must be (B, N, 3), got {tuple(self.means.shape)}")
        B, N = self.means.shape[:2]
        expected = {"quats": (B, N, 4), "scales": (B, N, 3), "opacities": (B, N), "colors": (B, N, 3)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"{name} must be {shape} to match means, got {tuple(getattr(self, name).shape)}")

    # ------------------------------------------------------------------ basic access
    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    @property
    def device(self) -> torch.device:
        return self.means.device

    def _map(self, fn) -> "GaussianCloud":
        return replace(self, **{k: fn(getattr(self, k)) for k in ("means", "quats", "scales", "opacities", "colors")})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "GaussianCloud":
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def detach(self) -> "GaussianCloud":
        return self._map(torch.Tensor.detach)

    def select(self, index: int) -> "GaussianCloud":
        """Batch element ``index`` as a batch-1 cloud."""
        return self._map(lambda t: t[index][None])

    def covariances(self) -> torch.Tensor:
        """World covariances ``(B, N, 3, 3)``, honouring ``raw_quaternions``."""
        return quat_scale_to_covariance(self.quats, self.scales, normalize=not self.raw_quaternions)

    def prune(self, threshold: float) -> "GaussianCloud":
        """Keep the Gaussians with opacity >= ``threshold``, per batch element.

        Elements that keep fewer Gaussians than the fullest one are padded with invisible
        Gaussians (opacity 0, scale 0, at the origin), which no backend draws and ``save``
        does not write, so the result stays one batched cloud.
        """
        keep = self.opacities >= threshold
        n = int(keep.sum(1).max()) if self.batch_size else 0
        like = self.means
        padding = {
            "means": torch.zeros(3, dtype=like.dtype, device=like.device),
            "quats": torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=like.dtype, device=like.device),
            "scales": torch.zeros(3, dtype=like.dtype, device=like.device),
            "opacities": torch.zeros((), dtype=like.dtype, device=like.device),
            "colors": torch.zeros(3, dtype=like.dtype, device=like.device),
        }

        def packed(name: str) -> torch.Tensor:
            rows = []
            for b in range(self.batch_size):
                kept = getattr(self, name)[b][keep[b]]
                rows.append(torch.cat([kept, padding[name].expand(n - len(kept), *kept.shape[1:])]))
            return torch.stack(rows)

        return replace(self, **{name: packed(name) for name in padding})

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        cameras: Cameras,
        height: int,
        width: int,
        background: float | torch.Tensor = 1.0,
        backend: Backend = "auto",
        near_plane: float | None = None,
    ) -> RenderOutput:
        """Render every view of ``cameras`` (batch ``B`` or 1, ``V`` views).

        ``background``: a scalar, an ``(3,)`` colour or ``(B, V, 3)``. ``backend="auto"``
        uses gsplat when the cloud is on CUDA and gsplat imports, the torch rasterizer
        otherwise. Returns ``rgb (B, V, 3, H, W)``, ``alpha (B, V, 1, H, W)``, the expected
        depth and the accumulated depth ``(B, V, 1, H, W)``, in the cloud's dtype (float32
        for half-precision clouds).
        """
        if self.means.dtype in (torch.float16, torch.bfloat16):  # too coarse for conics: render in float32, as LGM does
            return self.to(dtype=torch.float32).render(cameras, height, width, background, backend, near_plane)
        B = self.batch_size
        cameras = cameras.repeat(B).to(device=self.device, dtype=self.means.dtype)
        V = cameras.num_views
        if backend == "auto":
            backend = "gsplat" if self.device.type == "cuda" and gsplat_available() else "torch"
        if backend == "torch":
            rasterize = rasterize_gaussians
        elif backend == "gsplat":
            from .render_gsplat import rasterize_gaussians_gsplat as rasterize
        else:
            raise ValueError(f"unknown backend {backend!r}; use 'auto', 'torch' or 'gsplat'")

        extra = {}
        if backend == "torch":
            extra["alpha_max"] = self.alpha_max
        elif self.alpha_max != GSPLAT_ALPHA_MAX:
            warnings.warn(
                f"gsplat clamps each splat's alpha at {GSPLAT_ALPHA_MAX}, this cloud asks for {self.alpha_max}: "
                "pixels where a splat's alpha exceeds the smaller value differ (use backend='torch' for the exact clamp)",
                stacklevel=2,
            )
        with no_autocast(self.device):  # conics and compositing in float32, also under a caller's autocast
            covars = self.covariances() if self.raw_quaternions else None
            rgb, alpha, acc_depth = rasterize(
                self.means,
                self.quats,
                self.scales,
                self.opacities,
                self.colors,
                cameras.w2c,
                cameras.pixel_intrinsics(height, width),
                width,
                height,
                near_plane=self.near_plane if near_plane is None else near_plane,
                backgrounds=background_per_view(background, B, V, 3, self.means),
                covars=covars,
                **extra,
            )
        to_bvchw = lambda t: t.permute(0, 1, 4, 2, 3)  # noqa: E731
        rgb, alpha, acc_depth = to_bvchw(rgb), to_bvchw(alpha), to_bvchw(acc_depth)
        return RenderOutput(rgb=rgb, alpha=alpha, depth=expected_depth(acc_depth, alpha), accumulated_depth=acc_depth)

    # ------------------------------------------------------------------ files
    def is_empty(self, index: int = 0) -> bool:
        """True when no Gaussian of element ``index`` reaches ``save_min_opacity`` (an empty .ply)."""
        o = self.opacities[index]
        return not bool(((o >= self.save_min_opacity) & (o > 0)).any())

    def save(self, path: str | Path, index: int = 0, min_opacity: float | None = None, full_3dgs_layout: bool = True) -> Path:
        """Write batch element ``index`` as a 3DGS ``.ply`` (layout in ``io/ply.py``: graphdeco's
        full layout by default, LGM's compact one with ``full_3dgs_layout=False``).

        Gaussians with opacity below ``min_opacity`` (default: ``save_min_opacity``) and
        invisible ones (opacity 0, e.g. the padding added by :meth:`prune`) are left out.
        """
        if min_opacity is None:
            min_opacity = self.save_min_opacity
        from .io.ply import write_gaussians_ply

        path = Path(path)
        if path.suffix.lower() != ".ply":
            raise UserError(f"cannot save Gaussians as {path.name!r}: unknown extension {path.suffix!r}", hint="use a .ply file name")
        if not -self.batch_size <= index < self.batch_size:
            raise IndexError(f"index {index} out of range for a batch of {self.batch_size}")
        o = self.opacities[index]
        keep = (o >= min_opacity) & (o > 0)
        return write_gaussians_ply(
            path,
            self.means[index][keep],
            self.quats[index][keep],
            self.scales[index][keep],
            o[keep],
            self.colors[index][keep],
            full_3dgs_layout=full_3dgs_layout,
        )

    @classmethod
    def load_ply(cls, path: str | Path, raw_quaternions: bool = False, near_plane: float = 0.01) -> "GaussianCloud":
        """Read a 3DGS ``.ply`` as a batch-1 cloud (float32, CPU). Colours come from the
        degree-0 SH coefficients; quaternions are kept as stored."""
        from .io.ply import read_gaussians_ply

        fields = read_gaussians_ply(path)
        return cls(**{k: v[None] for k, v in fields.items()}, raw_quaternions=raw_quaternions, near_plane=near_plane)
