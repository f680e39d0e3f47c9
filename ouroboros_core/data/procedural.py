"""A procedural multi-view world: objects of 1-4 coloured, rotated primitives, sphere traced.

It needs no files and no network, so the tiny recipe trains on it on a laptop CPU and tests
can check geometry exactly. Each part is one of six primitives with an exact signed distance
(sphere, box, cylinder, cone, torus, capsule), rotated at random, coloured plain, two-tone
(split by a plane through the part) or striped, so the back of an object is rarely a copy of
its front. Objects sit inside a ball of radius 0.57 around the origin, seen by the official
orbit (radius 1.7417, fov 39.6 degrees; 8 views of a 16-view orbit), so items have the same
cameras and keys as :class:`~ouroboros_core.data.official.OfficialMultiViewDataset`.

Splits: an object is a function of ``(seed, split, index)``; ``train`` and ``heldout`` draw
from different seed streams, so no held-out object is ever a training object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..cameras import OFFICIAL_FOV_DEG, OFFICIAL_RADIUS, Cameras, camera_rays
from ..recipe import DataConfig
from .official import item_seed, view_indices

#: direction towards the light (world, y-up): above, in front of view 0, to the right
LIGHT = (0.4, 0.8, 0.45)
KINDS = ("sphere", "box", "cylinder", "cone", "torus", "capsule")
PATTERNS = ("plain", "two-tone", "stripes")
#: how often each pattern is drawn (plain parts stay the most common)
PATTERN_WEIGHTS = torch.tensor([0.4, 0.35, 0.25], dtype=torch.float64)
SPLITS = ("train", "heldout")
#: every object lies inside this ball (the official cameras see a ball of radius 0.59 whole)
SCENE_RADIUS = 0.57
HIT_EPSILON = 1e-5


@dataclass
class Primitive:
    """One part of an object, in its local frame ``x_local = rotation^T (x - center)``.

    ``size`` per kind: sphere ``(r,)``; box ``(hx, hy, hz)`` half extents; cylinder
    ``(r, h)`` radius and half height along local y; cone ``(r, h)`` base radius at
    ``y = -h``, apex at ``y = +h``; torus ``(R, r)`` ring radius in the local xz plane and tube
    radius; capsule ``(r, h)`` a segment from ``y = -h`` to ``+h`` swept by radius ``r``.
    ``pattern``: "plain" (``color``), "two-tone" (``color2`` where local x > 0) or
    "stripes" (``color2`` where ``sin(stripe_frequency · local y) > 0``).
    """

    kind: Literal["sphere", "box", "cylinder", "cone", "torus", "capsule"]
    center: torch.Tensor  # (3,)
    size: torch.Tensor
    color: torch.Tensor  # (3,) in [0, 1]
    rotation: torch.Tensor = field(default_factory=lambda: torch.eye(3, dtype=torch.float64))
    pattern: Literal["plain", "two-tone", "stripes"] = "plain"
    color2: torch.Tensor | None = None
    stripe_frequency: float = 12.0

    def bounding_radius(self) -> float:
        """Radius of a ball around ``center`` that contains the part."""
        s = [float(v) for v in self.size]
        if self.kind == "sphere":
            return s[0]
        if self.kind == "box":
            return math.sqrt(sum(v * v for v in s))
        if self.kind in ("cylinder", "cone"):
            return math.hypot(s[0], s[1])
        if self.kind == "torus":
            return s[0] + s[1]
        return s[0] + s[1]  # capsule

    def local(self, points: torch.Tensor) -> torch.Tensor:
        """World points ``(..., 3)`` in the part's frame."""
        return (points - self.center) @ self.rotation.to(points.dtype)

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """Exact signed distance of world points ``(..., 3)`` (negative inside)."""
        p = self.local(points)
        s = self.size.to(p.dtype)
        if self.kind == "sphere":
            return p.norm(dim=-1) - s[0]
        if self.kind == "box":
            q = p.abs() - s
            return q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0)
        radial = p[..., [0, 2]].norm(dim=-1)
        if self.kind == "cylinder":
            d = torch.stack([radial - s[0], p[..., 1].abs() - s[1]], -1)
            return d.max(-1).values.clamp_max(0) + d.clamp_min(0).norm(dim=-1)
        if self.kind == "cone":
            return _cone_sdf(radial, p[..., 1], s[0], s[1])
        if self.kind == "torus":
            return torch.stack([radial - s[0], p[..., 1]], -1).norm(dim=-1) - s[1]
        y = p[..., 1] - p[..., 1].clamp(-s[1], s[1])  # capsule
        return torch.stack([p[..., 0], y, p[..., 2]], -1).norm(dim=-1) - s[0]

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """Surface colour ``(..., 3)`` at world points on the part."""
        base = self.color.to(points.dtype).expand(*points.shape[:-1], 3)
        if self.pattern == "plain" or self.color2 is None:
            return base
        p = self.local(points)
        second = p[..., 0] > 0 if self.pattern == "two-tone" else torch.sin(self.stripe_frequency * p[..., 1]) > 0
        return torch.where(second[..., None], self.color2.to(points.dtype), base)


def _cone_sdf(radial: torch.Tensor, y: torch.Tensor, r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Exact distance to a solid cone with base radius ``r`` at ``y = -h`` and apex at ``y = h``,
    in the 2D half-plane ``(radial, y)``: the nearer of the base disc and the slanted side."""
    # base cap: the segment radial in [0, r] at y = -h
    cap = torch.stack([radial - torch.minimum(radial, r), y + h], -1)
    # slanted side: the segment from (r, -h) to (0, h)
    a = torch.stack([r, -h])
    edge = torch.stack([-r, 2 * h])
    rel = torch.stack([radial, y], -1) - a
    t = ((rel * edge).sum(-1) / (edge * edge).sum()).clamp(0, 1)
    side = rel - t[..., None] * edge
    distance = torch.minimum(cap.norm(dim=-1), side.norm(dim=-1))
    # inside: above the base and below the slanted line (its outward normal is (2h, r))
    inside = (y > -h) & ((rel * torch.stack([2 * h, r])).sum(-1) < 0)
    return torch.where(inside, -distance, distance)


def random_scene(generator: torch.Generator, max_primitives: int = 4) -> list[Primitive]:
    """1..max_primitives random parts, all inside the ball of radius :data:`SCENE_RADIUS`."""

    def u(lo: float = 0.0, hi: float = 1.0, n: int = 1) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)

    def pick(options: tuple[str, ...]) -> str:
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    count = int(torch.randint(1, max_primitives + 1, (1,), generator=generator))
    scene = []
    for _ in range(count):
        kind = pick(KINDS)
        if kind == "sphere":
            size = u(0.14, 0.3)
        elif kind == "box":
            size = u(0.07, 0.22, 3)
        elif kind in ("cylinder", "cone"):
            size = torch.cat([u(0.08, 0.22), u(0.1, 0.26)])
        elif kind == "torus":
            size = torch.cat([u(0.14, 0.26), u(0.04, 0.09)])
        else:
            size = torch.cat([u(0.06, 0.14), u(0.06, 0.2)])
        rotation = _random_rotation(generator)
        pattern = PATTERNS[int(torch.multinomial(PATTERN_WEIGHTS, 1, generator=generator))]
        part = Primitive(kind, torch.zeros(3, dtype=torch.float64), size, u(0.1, 0.95, 3), rotation, pattern, u(0.1, 0.95, 3), float(u(8.0, 16.0)))
        # the centre: near the origin (parts touch or overlap) and the part stays in the ball
        room = max(0.0, min(0.25, SCENE_RADIUS - part.bounding_radius()))
        direction = F.normalize(torch.randn(3, generator=generator, dtype=torch.float64), dim=0)
        part.center = direction * room * float(u()) ** (1 / 3)
        scene.append(part)
    return scene


def _random_rotation(generator: torch.Generator) -> torch.Tensor:
    """A uniformly random rotation matrix (from a normalised Gaussian quaternion)."""
    w, x, y, z = F.normalize(torch.randn(4, generator=generator, dtype=torch.float64), dim=0)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
        ]
    )


def scene_sdf(scene: list[Primitive], points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance to the union of the parts ``(...)`` and the index of the nearest part."""
    distances = torch.stack([part.sdf(points) for part in scene], -1)
    return distances.min(-1)


def render_scene(
    scene: list[Primitive],
    cameras: Cameras,
    height: int,
    width: int,
    background: float = 1.0,
    supersample: int = 1,
    max_steps: int = 128,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sphere trace ``scene`` into batch element 0 of ``cameras``.

    One pixel-centre ray per (sub)pixel; with ``supersample = s`` the image is traced at
    ``s`` times the size and box-filtered, which antialiases colour and alpha. Returns rgb
    ``(V, 3, H, W)`` (Lambert shading, composited on ``background``), alpha ``(V, 1, H, W)``
    (the hit fraction) and depth ``(V, 1, H, W)`` (camera z of the hit, averaged over the hit
    sub-pixels; 0 on background).
    """
    cams = cameras.to(dtype=torch.float64)
    H, W = height * supersample, width * supersample
    o, d = camera_rays(cams, H, W)
    o, d = o[0].reshape(-1, 3), d[0].reshape(-1, 3)
    # march from where each ray enters the scene ball to where it leaves it
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - SCENE_RADIUS**2)
    t = (-b - disc.clamp_min(0).sqrt()).clamp_min(0)
    t_far = -b + disc.clamp_min(0).sqrt()
    active = (disc > 0).nonzero().squeeze(1)
    hit_t = torch.full((len(o),), math.inf, dtype=torch.float64)
    for _ in range(max_steps):
        if len(active) == 0:
            break
        distance, _ = scene_sdf(scene, o[active] + t[active, None] * d[active])
        hit = distance < HIT_EPSILON
        hit_t[active[hit]] = t[active[hit]]
        t[active] += distance.clamp_min(0)
        keep = ~hit & (t[active] < t_far[active])
        active = active[keep]
    hit = torch.isfinite(hit_t)
    points = o[hit] + hit_t[hit, None] * d[hit]
    _, part = scene_sdf(scene, points)
    normal = _sdf_normal(scene, points)
    albedo = torch.zeros(len(points), 3, dtype=torch.float64)
    for index, prim in enumerate(scene):
        mine = part == index
        albedo[mine] = prim.albedo(points[mine])
    light = F.normalize(torch.tensor(LIGHT, dtype=torch.float64), dim=0)
    shade = 0.45 + 0.55 * (normal @ light).clamp_min(0)
    color = torch.zeros(len(o), 3, dtype=torch.float64)
    color[hit] = albedo * shade[:, None]
    alpha = hit.to(torch.float64)
    V = cams.num_views
    forward = cams.c2w[0, :, :3, 2]  # camera z axis in world, per view
    z = torch.zeros(len(o), dtype=torch.float64)
    z[hit] = hit_t[hit] * (d[hit] * forward.repeat_interleave(H * W, 0)[hit]).sum(-1)
    color = color.reshape(V, H, W, 3).permute(0, 3, 1, 2)
    alpha = alpha.reshape(V, 1, H, W)
    z = z.reshape(V, 1, H, W)
    if supersample > 1:
        pool = lambda x: F.avg_pool2d(x, supersample)  # noqa: E731
        color, alpha, z = pool(color), pool(alpha), pool(z)
        z = torch.where(alpha > 0, z / alpha.clamp_min(1e-12), torch.zeros_like(z))
        color = torch.where(alpha > 0, color / alpha.clamp_min(1e-12), torch.zeros_like(color))
    rgb = color * alpha + background * (1 - alpha)
    return rgb.float(), alpha.float(), z.float()


def _sdf_normal(scene: list[Primitive], points: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Unit outward normals from central differences of the scene distance."""
    offsets = torch.eye(3, dtype=points.dtype) * eps
    grad = torch.stack(
        [scene_sdf(scene, points + offsets[i])[0] - scene_sdf(scene, points - offsets[i])[0] for i in range(3)], -1
    )
    return F.normalize(grad, dim=-1)


def orbit_cameras(num_views: int = 8, orbit_views: int = 16) -> Cameras:
    """``num_views`` of an ``orbit_views`` orbit at the official radius and fov (batch 1).

    With 8 of 16 this is exactly :meth:`Cameras.official`.
    """
    azimuths = [360.0 / orbit_views * i for i in view_indices(orbit_views, num_views)]
    return Cameras.orbit(azimuths, 0.0, OFFICIAL_RADIUS, OFFICIAL_FOV_DEG)


def scene_seed(seed: int, split: str, index: int) -> int:
    """The seed of object ``index`` of ``split``: the two splits never share a seed."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return item_seed(seed, SPLITS.index(split), index)


def object_id(split: str, index: int) -> str:
    return f"{split}-{index:05d}"


class ProceduralMultiViewDataset(Dataset):
    """``num_objects`` random objects of one split; item ``i`` depends only on (``seed``, split, ``i``)."""

    def __init__(
        self,
        num_objects: int = 64,
        num_views: int = 8,
        image_size: int = 64,
        orbit_views: int = 16,
        seed: int = 0,
        background: float = 1.0,
        max_primitives: int = 4,
        split: str = "train",
        supersample: int = 2,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.num_objects = num_objects
        self.image_size = image_size
        self.seed = seed
        self.background = background
        self.max_primitives = max_primitives
        self.split = split
        self.supersample = supersample
        self.cameras = orbit_cameras(num_views, orbit_views)

    @classmethod
    def from_config(cls, config: DataConfig, seed: int = 0) -> "ProceduralMultiViewDataset":
        return cls(config.num_objects or 64, config.num_views, config.image_size, config.orbit_views, seed, split=config.split)

    def __len__(self) -> int:
        return self.num_objects

    def scene(self, index: int) -> list[Primitive]:
        """The parts of object ``index``."""
        if not 0 <= index < self.num_objects:
            raise IndexError(index)
        return random_scene(torch.Generator().manual_seed(scene_seed(self.seed, self.split, index)), self.max_primitives)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb, alpha, _ = render_scene(
            self.scene(index), self.cameras, self.image_size, self.image_size, self.background, self.supersample
        )
        return {
            "id": object_id(self.split, index),
            "images": rgb,
            "alpha": alpha,
            "c2w": self.cameras.c2w[0].clone(),
            "intrinsics": self.cameras.intrinsics[0].clone(),
        }
