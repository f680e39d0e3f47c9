"""A procedural multi-view dataset: coloured spheres and boxes, ray cast in torch.

It needs no files and no network, so the tiny recipe trains on it on a laptop CPU and tests
can check geometry exactly: alpha is 1 exactly where a camera ray hits a primitive, depth is
the camera-space z of the nearest hit. Objects sit near the origin, seen by the official orbit
(radius 1.7417, fov 39.6 degrees; the 8 views of a 16-view orbit), so items have the same
cameras and keys as :class:`~ouroboros_core.data.official.OfficialMultiViewDataset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from ..cameras import OFFICIAL_FOV_DEG, OFFICIAL_RADIUS, Cameras, camera_rays
from ..recipe import DataConfig
from .official import item_seed, view_indices

#: direction towards the light (world, y-up): above, in front of view 0, to the right
LIGHT = (0.4, 0.8, 0.45)


@dataclass
class Primitive:
    """A sphere (``size``: radius ``(1,)``) or axis-aligned box (``size``: half extents ``(3,)``)."""

    kind: Literal["sphere", "box"]
    center: torch.Tensor  # (3,)
    size: torch.Tensor
    color: torch.Tensor  # (3,) in [0, 1]


def random_scene(generator: torch.Generator, max_primitives: int = 3) -> list[Primitive]:
    """1..max_primitives primitives inside a ball of radius 0.57 around the origin.

    The official cameras (r = 1.7417, fov 39.6 degrees) see a ball of radius 0.59 whole, so
    every view shows the whole object.
    """
    def u(lo: float, hi: float, n: int = 1) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)

    count = int(torch.randint(1, max_primitives + 1, (1,), generator=generator))
    scene = []
    for _ in range(count):
        kind = "sphere" if float(u(0, 1)) < 0.5 else "box"
        size = u(0.18, 0.36) if kind == "sphere" else u(0.1, 0.23, 3)
        scene.append(Primitive(kind, u(-0.1, 0.1, 3), size, u(0.15, 0.95, 3)))
    return scene


def _hit_sphere(o: torch.Tensor, d: torch.Tensor, p: Primitive) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest positive ray parameter (inf for a miss) and the surface normal."""
    oc = o - p.center
    b = (oc * d).sum(-1)
    disc = b**2 - ((oc * oc).sum(-1) - p.size[0] ** 2)
    t = -b - torch.sqrt(disc.clamp_min(0))
    t = torch.where((disc >= 0) & (t > 0), t, torch.full_like(t, float("inf")))
    normal = torch.nn.functional.normalize(o + t.clamp_max(1e6)[..., None] * d - p.center, dim=-1)
    return t, normal


def _hit_box(o: torch.Tensor, d: torch.Tensor, p: Primitive) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab test for an axis-aligned box."""
    d_safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t1 = (p.center - p.size - o) / d_safe
    t2 = (p.center + p.size - o) / d_safe
    t_near, axis = torch.minimum(t1, t2).max(-1)
    t_far = torch.maximum(t1, t2).min(-1).values
    hit = (t_far >= t_near) & (t_near > 0)
    t = torch.where(hit, t_near, torch.full_like(t_near, float("inf")))
    normal = -torch.sign(d_safe) * torch.nn.functional.one_hot(axis, 3).to(d.dtype)
    return t, normal


def render_scene(
    scene: list[Primitive],
    cameras: Cameras,
    height: int,
    width: int,
    background: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ray cast ``scene`` into batch element 0 of ``cameras`` (one pixel-centre ray per pixel).

    Returns rgb ``(V, 3, H, W)`` (Lambert shading, composited on ``background``), alpha
    ``(V, 1, H, W)`` (1 where a ray hits) and depth ``(V, 1, H, W)`` (camera z, 0 on background).
    """
    cams = cameras.to(dtype=torch.float64)
    o, d = camera_rays(cams, height, width)
    o, d = o[0], d[0]  # (V, H, W, 3)
    best_t = torch.full(o.shape[:-1], float("inf"), dtype=torch.float64)
    color = torch.zeros(*o.shape[:-1], 3, dtype=torch.float64)
    light = torch.nn.functional.normalize(torch.tensor(LIGHT, dtype=torch.float64), dim=0)
    for prim in scene:
        t, normal = (_hit_sphere if prim.kind == "sphere" else _hit_box)(o, d, prim)
        closer = t < best_t
        shade = 0.45 + 0.55 * (normal * light).sum(-1).clamp_min(0)
        color = torch.where(closer[..., None], prim.color * shade[..., None], color)
        best_t = torch.where(closer, t, best_t)
    hit = torch.isfinite(best_t)
    alpha = hit.to(torch.float64)
    forward = cams.c2w[0, :, :3, 2][:, None, None, :]  # camera z axis in world
    depth = torch.where(hit, best_t.clamp_max(1e6) * (d * forward).sum(-1), torch.zeros_like(best_t))
    rgb = color * alpha[..., None] + background * (1 - alpha[..., None])
    return rgb.permute(0, 3, 1, 2).float(), alpha[:, None].float(), depth[:, None].float()


def orbit_cameras(num_views: int = 8, orbit_views: int = 16) -> Cameras:
    """``num_views`` of an ``orbit_views`` orbit at the official radius and fov (batch 1).

    With 8 of 16 this is exactly :meth:`Cameras.official`.
    """
    azimuths = [360.0 / orbit_views * i for i in view_indices(orbit_views, num_views)]
    return Cameras.orbit(azimuths, 0.0, OFFICIAL_RADIUS, OFFICIAL_FOV_DEG)


class ProceduralMultiViewDataset(Dataset):
    """``num_objects`` random scenes; item ``i`` depends only on (``seed``, ``i``)."""

    def __init__(
        self,
        num_objects: int = 64,
        num_views: int = 8,
        image_size: int = 64,
        orbit_views: int = 16,
        seed: int = 0,
        background: float = 1.0,
        max_primitives: int = 3,
    ):
        self.num_objects = num_objects
        self.image_size = image_size
        self.seed = seed
        self.background = background
        self.max_primitives = max_primitives
        self.cameras = orbit_cameras(num_views, orbit_views)

    @classmethod
    def from_config(cls, config: DataConfig, seed: int = 0) -> "ProceduralMultiViewDataset":
        return cls(config.num_objects or 64, config.num_views, config.image_size, config.orbit_views, seed)

    def __len__(self) -> int:
        return self.num_objects

    def scene(self, index: int) -> list[Primitive]:
        """The primitives of object ``index``."""
        if not 0 <= index < self.num_objects:
            raise IndexError(index)
        return random_scene(torch.Generator().manual_seed(item_seed(self.seed, 0, index)), self.max_primitives)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb, alpha, _ = render_scene(self.scene(index), self.cameras, self.image_size, self.image_size, self.background)
        return {
            "id": f"procedural-{index:05d}",
            "images": rgb,
            "alpha": alpha,
            "c2w": self.cameras.c2w[0].clone(),
            "intrinsics": self.cameras.intrinsics[0].clone(),
        }
