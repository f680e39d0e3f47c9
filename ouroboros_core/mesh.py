"""Mesh: a batch of triangle meshes, rendered by nvdiffrast on CUDA or by a small torch rasterizer.

A batch is a list with one mesh per object, because meshes reconstructed for different objects
have different vertex and face counts:

- ``vertices``: ``B`` tensors ``(Nv_b, 3)``, world space (y-up, see ``cameras.py``);
- ``faces``: ``B`` long tensors ``(F_b, 3)`` of vertex indices;
- ``vertex_colors`` (optional): ``B`` tensors ``(Nv_b, 3)`` rgb in [0, 1];
- ``uvs`` + ``textures`` (optional, together): ``B`` tensors ``(Nv_b, 2)`` and ``B`` images
  ``(Ht, Wt, 3)`` in [0, 1]. UVs follow the OBJ/trimesh convention: ``v = 0`` is the *bottom*
  row of the texture image. Seams need duplicated vertices (as in glTF).

Colour comes from the texture when there is one, else from the vertex colours, else it is
a uniform light grey (:data:`DEFAULT_COLOR`).

Rendering is a hard rasterization (no antialiasing): alpha is 1 on covered pixels, depth is
the camera-space z of the nearest surface, colours and depth are interpolated with
perspective-correct barycentrics, so they are differentiable with respect to vertex
positions and colours inside the silhouette (not across its edges).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from .cameras import Cameras
from .errors import UserError
from .gaussians import background_per_view
from .interfaces import RenderOutput, Representation

DEFAULT_COLOR = (0.8, 0.8, 0.8)
MESH_FORMATS = (".glb", ".obj", ".ply")

Backend = Literal["auto", "torch", "nvdiffrast"]


def _camera_space(vertices: torch.Tensor, viewmats: torch.Tensor) -> torch.Tensor:
    """``(V, Nv, 3)`` camera-space positions of ``(Nv, 3)`` world vertices."""
    return torch.einsum("vij,nj->vni", viewmats[:, :3, :3], vertices) + viewmats[:, None, :3, 3]


def rasterize_mesh_torch(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    attributes: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rasterize one mesh into ``V`` cameras on any device (meant for small meshes).

    ``vertices (Nv, 3)``, ``faces (F, 3)``, ``attributes (Nv, A)``, ``viewmats (V, 4, 4)``
    world-to-camera OpenCV, ``Ks (V, 3, 3)`` pixel intrinsics; pixel centres at +0.5.
    Faces with a vertex closer than ``near_plane`` are skipped (no clipping). Each face is
    tested against the pixel centres in its bounding box and the nearest covering face wins
    (a z-buffer built with ``scatter_reduce``), so memory grows with the faces' total
    screen area. Returns the interpolated attributes ``(V, H, W, A)`` (0 where uncovered),
    the coverage ``(V, H, W, 1)`` and the depth ``(V, H, W, 1)`` (0 where uncovered).
    """
    V = viewmats.shape[0]
    cam = _camera_space(vertices, viewmats)
    z = cam[..., 2]
    z_safe = torch.where(z > 0, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    screen = torch.stack([fx * cam[..., 0] / z_safe + cx, fy * cam[..., 1] / z_safe + cy], -1)  # (V, Nv, 2)
    rows, cols = torch.meshgrid(
        torch.arange(height, device=vertices.device, dtype=vertices.dtype) + 0.5,
        torch.arange(width, device=vertices.device, dtype=vertices.dtype) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([cols.reshape(-1), rows.reshape(-1)], -1)  # (P, 2) as (x, y)
    P = pix.shape[0]

    def barycentrics(tri_screen: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Screen-space barycentrics ``(..., 3)`` of ``points (..., 2)`` in triangles ``(..., 3, 2)``."""
        a, b, c = tri_screen.unbind(-2)
        cross = lambda u, w: u[..., 0] * w[..., 1] - u[..., 1] * w[..., 0]  # noqa: E731
        area = cross(b - a, c - a)
        area = torch.where(area == 0, torch.ones_like(area), area)
        la = cross(b - points, c - points) / area
        lb = cross(c - points, a - points) / area
        return torch.stack([la, lb, 1 - la - lb], -1)

    # ---- visibility (not differentiable): nearest covering face per pixel. Each face is
    # tested only against the pixel centres inside its screen bounding box.
    with torch.no_grad():
        F_ = faces.shape[0]
        tri_z = z[:, faces]  # (V, F, 3)
        tri_screen = screen[:, faces]  # (V, F, 3, 2)
        lo = tri_screen.amin(-2)
        hi = tri_screen.amax(-2)
        x0 = torch.ceil(lo[..., 0] - 0.5).clamp(0, width).long()
        x1 = torch.floor(hi[..., 0] - 0.5).clamp(-1, width - 1).long()
        y0 = torch.ceil(lo[..., 1] - 0.5).clamp(0, height).long()
        y1 = torch.floor(hi[..., 1] - 0.5).clamp(-1, height - 1).long()
        nx = (x1 - x0 + 1).clamp_min(0)
        ny = (y1 - y0 + 1).clamp_min(0)
        usable = (tri_z >= near_plane).all(-1)
        n_pix = torch.where(usable, nx * ny, torch.zeros_like(nx)).reshape(-1)
        pair_face = torch.repeat_interleave(torch.arange(V * F_, device=vertices.device), n_pix)  # view * F + face
        local = torch.arange(len(pair_face), device=vertices.device) - (torch.cumsum(n_pix, 0) - n_pix)[pair_face]
        px = x0.reshape(-1)[pair_face] + local % nx.reshape(-1)[pair_face]
        py = y0.reshape(-1)[pair_face] + local // nx.reshape(-1)[pair_face]
        lam = barycentrics(tri_screen.reshape(-1, 3, 2)[pair_face], torch.stack([px, py], -1).to(vertices.dtype) + 0.5)
        inside = (lam >= 0).all(-1)
        depth = 1 / (lam / tri_z.reshape(-1, 3)[pair_face]).sum(-1)
        pair_pixel = (pair_face // F_) * P + py * width + px  # view * P + pixel
        pair_face, pair_pixel, depth = pair_face[inside], pair_pixel[inside], depth[inside]
        best_z = torch.full((V * P,), float("inf"), dtype=vertices.dtype, device=vertices.device)
        best_z = best_z.scatter_reduce(0, pair_pixel, depth, "amin")
        # ties (shared edges at equal depth) go to the lowest face index
        winner = torch.where(depth == best_z[pair_pixel], pair_face % F_, torch.full_like(pair_face, F_))
        best_face = torch.full((V * P,), F_, dtype=torch.long, device=vertices.device).scatter_reduce(0, pair_pixel, winner, "amin")
        best_face = torch.where(best_face == F_, -1, best_face).reshape(V, P)

    # ---- shading (differentiable): perspective-correct interpolation on the winning face
    covered = best_face >= 0
    face = faces[best_face.clamp_min(0)]  # (V, P, 3)
    view = torch.arange(V, device=vertices.device)[:, None, None]
    lam = barycentrics(screen[view, face], pix[None])  # (V, P, 3)
    inv_z = lam / z_safe[view, face]
    depth = 1 / inv_z.sum(-1, keepdim=True).where(covered[..., None], torch.ones_like(inv_z[..., :1]))
    weights = inv_z * depth  # (V, P, 3)
    attrs = (weights[..., None] * attributes[face]).sum(-2)  # (V, P, A)
    mask = covered[..., None].to(vertices.dtype)
    shape = (V, height, width)
    return (attrs * mask).reshape(*shape, -1), mask.reshape(*shape, 1), (depth * mask).reshape(*shape, 1)


def opencv_to_clip(cam: torch.Tensor, Ks: torch.Tensor, width: int, height: int, near: float, far: float) -> torch.Tensor:
    """OpenGL clip coordinates ``(V, Nv, 4)`` of camera-space points ``(V, Nv, 3)``.

    Chosen so that ``x_ndc = 2 u / W - 1`` and ``y_ndc = 2 v / H - 1`` for the pixel position
    ``(u, v)`` of the OpenCV pinhole ``Ks (V, 3, 3)``, ``w = z``, and depth maps ``near`` to -1
    and ``far`` to +1.
    """
    x, y, z = cam.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    return torch.stack(
        [
            2 * fx / width * x + (2 * cx / width - 1) * z,
            2 * fy / height * y + (2 * cy / height - 1) * z,
            (far + near) / (far - near) * z - 2 * far * near / (far - near),
            z,
        ],
        -1,
    )


@functools.lru_cache(maxsize=None)
def _nvdiffrast_context(device: torch.device):
    """One CUDA rasterizer context per device (creating one is slow)."""
    import nvdiffrast.torch as dr

    return dr.RasterizeCudaContext(device=device)


def rasterize_mesh_nvdiffrast(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    attributes: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 100.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as :func:`rasterize_mesh_torch`, through nvdiffrast (CUDA tensors).

    Our OpenCV pinhole camera becomes an OpenGL clip space in which normalised device y grows
    with the image row (``y_ndc = 2 v / H - 1``), so nvdiffrast's first output row (at
    ``y_ndc = -1``) is the top image row and no flip is needed. Faces closer than
    ``near_plane`` are clipped by the hardware rasterizer instead of skipped.
    """
    import nvdiffrast.torch as dr

    cam = _camera_space(vertices, viewmats)
    clip = opencv_to_clip(cam, Ks, width, height, near_plane, far_plane).float().contiguous()
    tri = faces.to(torch.int32).contiguous()
    rast, _ = dr.rasterize(_nvdiffrast_context(vertices.device), clip, tri, (height, width))
    interpolated, _ = dr.interpolate(torch.cat([attributes[None].expand(len(viewmats), -1, -1), cam[..., 2:]], -1).float().contiguous(), rast, tri)
    mask = (rast[..., 3:4] > 0).to(vertices.dtype)
    return interpolated[..., :-1].to(vertices.dtype) * mask, mask, interpolated[..., -1:].to(vertices.dtype) * mask


@functools.cache
def nvdiffrast_available() -> bool:
    """Whether nvdiffrast imports (an optional extra, built from its source repository)."""
    try:
        import nvdiffrast.torch  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(eq=False)
class Mesh(Representation):
    """A batch of triangle meshes (see the module docstring for fields and conventions)."""

    file_suffix = ".glb"

    vertices: list[torch.Tensor]
    faces: list[torch.Tensor]
    vertex_colors: list[torch.Tensor] | None = None
    uvs: list[torch.Tensor] | None = None
    textures: list[torch.Tensor] | None = None
    near_plane: float = 0.01

    def __post_init__(self) -> None:
        B = len(self.vertices)
        if len(self.faces) != B:
            raise ValueError(f"{B} vertex tensors but {len(self.faces)} face tensors")
        if (self.uvs is None) != (self.textures is None):
            raise ValueError("uvs and textures go together: give both or neither")
        for name in ("vertex_colors", "uvs", "textures"):
            value = getattr(self, name)
            if value is not None and len(value) != B:
                raise ValueError(f"{name} has {len(value)} entries for a batch of {B}")
        for b in range(B):
            nv = self.vertices[b].shape[0]
            if self.vertices[b].shape != (nv, 3) or self.faces[b].dim() != 2 or self.faces[b].shape[1] != 3:
                raise ValueError(f"mesh {b}: vertices must be (Nv, 3) and faces (F, 3)")
            if self.vertex_colors is not None and self.vertex_colors[b].shape != (nv, 3):
                raise ValueError(f"mesh {b}: vertex_colors must be ({nv}, 3)")
            if self.uvs is not None and self.uvs[b].shape != (nv, 2):
                raise ValueError(f"mesh {b}: uvs must be ({nv}, 2)")

    @property
    def batch_size(self) -> int:
        return len(self.vertices)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_trimesh(cls, meshes, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> "Mesh":
        """From one ``trimesh.Trimesh`` or a list (one per batch element), keeping vertex colours."""
        meshes = meshes if isinstance(meshes, (list, tuple)) else [meshes]
        as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        colors = [as_t(m.visual.vertex_colors[:, :3] / 255.0) if m.visual.kind == "vertex" else None for m in meshes]
        return cls(
            vertices=[as_t(m.vertices) for m in meshes],
            faces=[torch.as_tensor(m.faces, dtype=torch.long, device=device) for m in meshes],
            vertex_colors=colors if all(c is not None for c in colors) else None,
        )

    @classmethod
    def icosphere(cls, radius: float = 0.5, subdivisions: int = 2, color: tuple[float, float, float] = DEFAULT_COLOR, batch_size: int = 1) -> "Mesh":
        """A sphere centred at the origin (``subdivisions=2``: 162 vertices, 320 faces)."""
        import trimesh

        sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
        return cls._repeated(sphere, color, batch_size)

    @classmethod
    def box(cls, size: float = 1.0, color: tuple[float, float, float] = DEFAULT_COLOR, batch_size: int = 1) -> "Mesh":
        """An axis-aligned cube of edge ``size`` centred at the origin (8 vertices, 12 faces)."""
        import trimesh

        return cls._repeated(trimesh.creation.box(extents=(size, size, size)), color, batch_size)

    @classmethod
    def _repeated(cls, mesh, color: tuple[float, float, float], batch_size: int) -> "Mesh":
        v = torch.as_tensor(mesh.vertices, dtype=torch.float32)
        f = torch.as_tensor(mesh.faces, dtype=torch.long)
        c = torch.tensor(color, dtype=torch.float32).expand(len(v), 3)
        return cls([v.clone() for _ in range(batch_size)], [f.clone() for _ in range(batch_size)], [c.clone() for _ in range(batch_size)])

    # ------------------------------------------------------------------ rendering
    def _attributes(self, b: int) -> torch.Tensor:
        v = self.vertices[b]
        if self.uvs is not None:
            return self.uvs[b].to(v)
        if self.vertex_colors is not None:
            return self.vertex_colors[b].to(v)
        return torch.tensor(DEFAULT_COLOR, dtype=v.dtype, device=v.device).expand(len(v), 3)

    def render(
        self,
        cameras: Cameras,
        height: int,
        width: int,
        background: float | torch.Tensor = 1.0,
        backend: Backend = "auto",
    ) -> RenderOutput:
        """Render every view of ``cameras`` (batch ``B`` or 1, ``V`` views); see :class:`RenderOutput`."""
        B = self.batch_size
        like = self.vertices[0]
        cameras = cameras.repeat(B).to(device=like.device, dtype=like.dtype)
        if backend == "auto":
            backend = "nvdiffrast" if like.device.type == "cuda" and nvdiffrast_available() else "torch"
        if backend == "torch":
            rasterize = rasterize_mesh_torch
        elif backend == "nvdiffrast":
            rasterize = rasterize_mesh_nvdiffrast
        else:
            raise ValueError(f"unknown backend {backend!r}; use 'auto', 'torch' or 'nvdiffrast'")
        bg = background_per_view(background, B, cameras.num_views, 3, like)
        Ks = cameras.pixel_intrinsics(height, width)
        rgbs, alphas, depths = [], [], []
        for b in range(B):
            attrs, mask, depth = rasterize(
                self.vertices[b], self.faces[b], self._attributes(b), cameras.w2c[b], Ks[b], width, height, near_plane=self.near_plane
            )
            color = self._sample_texture(b, attrs) if self.textures is not None else attrs
            rgbs.append(color * mask + (1 - mask) * bg[b, :, None, None, :])
            alphas.append(mask)
            depths.append(depth)
        to_bvchw = lambda ts: torch.stack(ts).permute(0, 1, 4, 2, 3)  # noqa: E731
        alpha, depth = to_bvchw(alphas), to_bvchw(depths)
        return RenderOutput(rgb=to_bvchw(rgbs), alpha=alpha, depth=depth, accumulated_depth=alpha * depth)

    def _sample_texture(self, b: int, uv: torch.Tensor) -> torch.Tensor:
        """Bilinear texture lookup: ``uv (V, H, W, 2)`` to colours ``(V, H, W, 3)``."""
        tex = self.textures[b].to(uv).permute(2, 0, 1)[None].expand(uv.shape[0], -1, -1, -1)
        grid = torch.stack([2 * uv[..., 0] - 1, 1 - 2 * uv[..., 1]], -1)  # v = 0 is the bottom row
        return F.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=False).permute(0, 2, 3, 1)

    # ------------------------------------------------------------------ files
    def is_empty(self, index: int = 0) -> bool:
        """True when element ``index`` has no faces."""
        return self.faces[index].numel() == 0

    def save(self, path: str | Path, index: int = 0) -> Path:
        """Write batch element ``index`` as ``.glb``, ``.obj`` (+ ``.mtl``/``.png`` when
        textured) or ``.ply`` through trimesh."""
        from .io.mesh_export import export_mesh

        path = Path(path)
        if path.suffix.lower() not in MESH_FORMATS:
            raise UserError(
                f"cannot save a mesh as {path.name!r}: unknown extension {path.suffix!r}",
                hint=f"use one of {', '.join(MESH_FORMATS)}",
            )
        return export_mesh(
            path,
            self.vertices[index],
            self.faces[index],
            vertex_colors=None if self.vertex_colors is None else self.vertex_colors[index],
            uvs=None if self.uvs is None else self.uvs[index],
            texture=None if self.textures is None else self.textures[index],
        )
