"""Cameras: the one place where camera conventions are written down.

Convention used at every interface of ouroboros3d:

- ``c2w`` ``(B, V, 4, 4)``: camera-to-world in the **OpenCV** convention (camera x right,
  y down, z forward). The world is **y-up**.
- ``intrinsics`` ``(B, V, 3, 3)``: **normalised** pinhole intrinsics, i.e. fx, fy, cx, cy in
  units of the image width/height (a centred camera has cx = cy = 0.5). Multiply by the image
  size (:meth:`Cameras.pixel_intrinsics`) to get pixel intrinsics.
- Pixel ``(i, j)`` (row, column) is sampled at its centre ``(j + 0.5, i + 0.5)``, as gsplat.
- Plücker rays are ``[o x d, d]`` with unit ``d``.
- Azimuth is measured from +z towards +x (camera 0 of an orbit sits on +z); positive
  elevation puts the camera above the object (+y).

OpenGL/Blender cameras (x right, y up, z backward) differ by negating the camera y and z axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

# the official Ouroboros3D 8-view orbit (hyper/c2w.npy), re-exported from its torch-free home
from .official_orbit import OFFICIAL_AZIMUTHS, OFFICIAL_FOV_DEG, OFFICIAL_RADIUS
from .precision import no_autocast

_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


@dataclass
class Cameras:
    """A batch of pinhole cameras, ``B`` objects times ``V`` views (see module docstring)."""

    c2w: torch.Tensor  # (B, V, 4, 4), OpenCV camera-to-world
    intrinsics: torch.Tensor  # (B, V, 3, 3), normalised

    def __post_init__(self) -> None:
        if self.c2w.shape[-2:] != (4, 4) or self.c2w.dim() != 4:
            raise ValueError(f"c2w must be (B, V, 4, 4), got {tuple(self.c2w.shape)}")
        if self.intrinsics.shape[:2] != self.c2w.shape[:2] or self.intrinsics.shape[-2:] != (3, 3):
            raise ValueError(
                f"intrinsics must be (B, V, 3, 3) matching c2w {tuple(self.c2w.shape)}, "
                f"got {tuple(self.intrinsics.shape)}"
            )

    # ---------------------------------------------------------------- basic access
    @property
    def batch_size(self) -> int:
        return self.c2w.shape[0]

    @property
    def num_views(self) -> int:
        return self.c2w.shape[1]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Cameras":
        return Cameras(self.c2w.to(device=device, dtype=dtype), self.intrinsics.to(device=device, dtype=dtype))

    def select_views(self, views: Sequence[int] | torch.Tensor | None) -> "Cameras":
        """The cameras of some views (``None``: all)."""
        if views is None:
            return self
        idx = torch.as_tensor(list(views) if not torch.is_tensor(views) else views, device=self.device, dtype=torch.long)
        return Cameras(self.c2w[:, idx], self.intrinsics[:, idx])

    def repeat(self, batch_size: int) -> "Cameras":
        """Repeat a batch-1 camera set to ``batch_size`` objects."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(f"cannot repeat cameras of batch {self.batch_size} to {batch_size}")
        return Cameras(self.c2w.expand(batch_size, -1, -1, -1).clone(), self.intrinsics.expand(batch_size, -1, -1, -1).clone())

    @staticmethod
    def cat(cameras: Sequence["Cameras"], dim: int = 0) -> "Cameras":
        return Cameras(torch.cat([c.c2w for c in cameras], dim), torch.cat([c.intrinsics for c in cameras], dim))

    # ---------------------------------------------------------------- derived quantities
    @property
    def w2c(self) -> torch.Tensor:
        """World-to-camera ``(B, V, 4, 4)`` (gsplat's ``viewmats``)."""
        return rigid_inverse(self.c2w)

    @property
    def centers(self) -> torch.Tensor:
        """Camera centres in world space ``(B, V, 3)``."""
        return self.c2w[..., :3, 3]

    @property
    def fov_y(self) -> torch.Tensor:
        """Vertical field of view in radians ``(B, V)``."""
        return 2 * torch.atan(0.5 / self.intrinsics[..., 1, 1])

    @property
    def fov_x(self) -> torch.Tensor:
        return 2 * torch.atan(0.5 / self.intrinsics[..., 0, 0])

    def pixel_intrinsics(self, height: int, width: int) -> torch.Tensor:
        """Pixel intrinsics ``(B, V, 3, 3)`` for an image of ``height`` x ``width``."""
        return normalized_to_pixel_intrinsics(self.intrinsics, height, width)

    # ---------------------------------------------------------------- conversions
    def to_opengl(self) -> torch.Tensor:
        """Camera-to-world in the OpenGL/Blender convention (x right, y up, z backward)."""
        return self.c2w @ _FLIP_YZ.to(self.c2w)

    @classmethod
    def from_opengl(cls, c2w_gl: torch.Tensor, intrinsics: torch.Tensor) -> "Cameras":
        """From OpenGL/Blender camera-to-world matrices (e.g. a Blender ``transform_matrix``)."""
        return cls(c2w_gl @ _FLIP_YZ.to(c2w_gl), intrinsics)

    @classmethod
    def from_pixel_intrinsics(cls, c2w: torch.Tensor, K: torch.Tensor, height: int, width: int) -> "Cameras":
        return cls(c2w, pixel_to_normalized_intrinsics(K, height, width))

    # ---------------------------------------------------------------- construction
    @classmethod
    def orbit(
        cls,
        azimuths_deg: Sequence[float],
        elevations_deg: Sequence[float] | float = 0.0,
        radius: float = OFFICIAL_RADIUS,
        fov_deg: float = OFFICIAL_FOV_DEG,
        batch_size: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> "Cameras":
        """Cameras on a sphere around the origin, looking at it, world y-up.

        Position = r (cos(el) sin(az), sin(el), cos(el) cos(az)); square images with vertical
        field of view ``fov_deg``.
        """
        az = torch.tensor([float(a) for a in azimuths_deg], dtype=torch.float64)
        if isinstance(elevations_deg, (int, float)):
            el = torch.full_like(az, float(elevations_deg))
        else:
            el = torch.tensor([float(e) for e in elevations_deg], dtype=torch.float64)
        if el.shape != az.shape:
            raise ValueError("azimuths and elevations must have the same length")
        az, el = torch.deg2rad(az), torch.deg2rad(el)
        pos = radius * torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], -1)
        c2w = look_at(pos, torch.zeros_like(pos))
        f = focal_from_fov(math.radians(fov_deg))
        K = torch.tensor([[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]], dtype=torch.float64).expand(len(az), 3, 3)
        c2w = c2w.unsqueeze(0).expand(batch_size, -1, -1, -1)
        K = K.unsqueeze(0).expand(batch_size, -1, -1, -1)
        return cls(c2w.to(device=device, dtype=dtype).contiguous(), K.to(device=device, dtype=dtype).contiguous())

    @classmethod
    def official(cls, batch_size: int = 1, **kwargs) -> "Cameras":
        """The official Ouroboros3D 8-view orbit: elevation 0, r = 1.7417, fov 39.598 degrees."""
        return cls.orbit(OFFICIAL_AZIMUTHS, 0.0, OFFICIAL_RADIUS, OFFICIAL_FOV_DEG, batch_size, **kwargs)


# -------------------------------------------------------------------- functions on tensors
def focal_from_fov(fov: float) -> float:
    """Normalised focal length ``0.5 / tan(fov / 2)`` for a field of view in radians."""
    return 0.5 / math.tan(fov / 2)


def rigid_inverse(m: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid 4x4 transforms ``(..., 4, 4)``."""
    R = m[..., :3, :3]
    t = m[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    out = torch.zeros_like(m)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1
    return out


def look_at(eye: torch.Tensor, target: torch.Tensor, up: Sequence[float] = (0.0, 1.0, 0.0)) -> torch.Tensor:
    """OpenCV camera-to-world matrices ``(..., 4, 4)`` for cameras at ``eye`` looking at ``target``."""
    up_t = torch.tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.linalg.cross(z, up_t, dim=-1)
    # cameras looking straight up or down: pick any horizontal x
    degenerate = x.norm(dim=-1, keepdim=True) < 1e-8
    x = torch.where(degenerate, torch.tensor([1.0, 0.0, 0.0], dtype=eye.dtype, device=eye.device).expand_as(x), x)
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.linalg.cross(z, x, dim=-1)
    m = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    m[..., :3, 0], m[..., :3, 1], m[..., :3, 2], m[..., :3, 3] = x, y, z, eye
    m[..., 3, 3] = 1
    return m


def normalized_to_pixel_intrinsics(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    scale = torch.tensor([width, height, 1.0], dtype=K.dtype, device=K.device)
    return K * scale[:, None]


def pixel_to_normalized_intrinsics(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    scale = torch.tensor([width, height, 1.0], dtype=K.dtype, device=K.device)
    return K / scale[:, None]


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised pixel-centre coordinates ``(u, v)``, each ``(H, W)``: u = (j + 0.5) / W."""
    v, u = torch.meshgrid(
        (torch.arange(height, device=device, dtype=dtype) + 0.5) / height,
        (torch.arange(width, device=device, dtype=dtype) + 0.5) / width,
        indexing="ij",
    )
    return u, v


def camera_rays(cameras: Cameras, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions in world space, each ``(B, V, H, W, 3)``, in the
    cameras' dtype even under a caller's autocast (a model reading them may run in half
    precision; the geometry does not)."""
    K = cameras.intrinsics
    with no_autocast(cameras.device):
        u, v = pixel_grid(height, width, cameras.device, K.dtype)
        fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
        cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
        d_cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like((u - cx) / fx)], -1)  # (B,V,H,W,3)
        R = cameras.c2w[..., :3, :3]
        d = torch.einsum("bvij,bvhwj->bvhwi", R, d_cam)
        d = torch.nn.functional.normalize(d, dim=-1)
        o = cameras.centers[:, :, None, None, :].expand_as(d)
    return o, d


def plucker_rays(cameras: Cameras, height: int, width: int) -> torch.Tensor:
    """Plücker coordinates ``[o x d, d]`` at pixel centres, ``(B, V, 6, H, W)``."""
    o, d = camera_rays(cameras, height, width)
    return torch.cat([torch.linalg.cross(o, d, dim=-1), d], -1).permute(0, 1, 4, 2, 3)


def unproject_depth(depth: torch.Tensor, cameras: Cameras) -> torch.Tensor:
    """World points ``(B, V, 3, H, W)`` from camera-space z-depth ``(B, V, 1, H, W)``."""
    H, W = depth.shape[-2:]
    K = cameras.intrinsics.to(depth.dtype)
    u, v = pixel_grid(H, W, depth.device, depth.dtype)
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    z = depth[:, :, 0]
    p_cam = torch.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], 2)  # (B,V,3,H,W)
    c2w = cameras.c2w.to(depth.dtype)
    return torch.einsum("bvij,bvjhw->bvihw", c2w[..., :3, :3], p_cam) + c2w[..., :3, 3, None, None]
