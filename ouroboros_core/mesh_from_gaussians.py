"""Mesh export from 3D Gaussians: render from a sphere of views, fuse a TSDF, marching cubes.

One entry point, :func:`mesh_from_gaussians`, turns one element of a
:class:`~ouroboros_core.gaussians.GaussianCloud` into a vertex-coloured
:class:`~ouroboros_core.mesh.Mesh` (``Mesh.save("model.glb")`` writes it). The steps:

1. **Bounds.** Gaussians with opacity below ``min_opacity`` are dropped. The rest, each grown
   by 3 standard deviations per axis, give a bounding box; the volume is the cube of side
   ``2 h`` around its centre ``c`` (``h``: half the longest box side plus 4 voxels of margin),
   sampled at ``resolution`` points per axis (voxel size ``2 h / (resolution - 1)``).
2. **Renders.** ``views`` cameras on a Fibonacci sphere around ``c`` (no two views alike,
   none exactly at a pole) with a 40 degree field of view, at the distance that frames the
   Gaussians' bounding sphere, render rgb (on a black background, i.e. premultiplied),
   alpha and expected depth at ``render_size``² pixels with the cloud's own backend (the
   torch rasterizer on the CPU, gsplat on CUDA).
3. **TSDF fusion.** Every voxel centre is projected into every view and looked up at its
   nearest pixel. Where the pixel's alpha is at least ``alpha_threshold`` the ray hit the
   surface: the signed distance along the ray, ``(depth - z) * |ray|``, is truncated to
   ``truncation`` voxels and averaged over views (views where the voxel lies more than the
   truncation *behind* the surface say nothing about it). Where the alpha is lower the ray
   saw background, so the voxel is free space (+1, space carving). Voxels no view says
   anything about are inside the object (they are behind the surface from every side), or
   outside when they lie beyond the Gaussians' bounding sphere.
4. **Surface.** Marching cubes (scikit-image) at level 0. The volume's border is free space,
   so every surface is closed. Components with fewer than ``min_component_fraction`` of the
   largest one's faces are dropped as floaters (so several real parts survive, specks do
   not).
5. **Simplification** to at most ``faces`` faces: quadric decimation with
   ``fast-simplification`` (through trimesh) when installed; otherwise the fallback re-runs
   marching cubes on the TSDF resampled to a coarser grid whose face count fits (the result
   stays closed, but is coarser everywhere instead of only where the surface is flat).
6. **Colour.** Each vertex is projected into every view in which it is visible (its depth
   within 2 voxels of the rendered depth and the pixel's alpha at least ``alpha_threshold``);
   its colour is the average of the un-premultiplied rendered colours weighted by
   ``alpha * cos²`` of the angle between the vertex normal and the direction to the camera.
   Vertices no view sees take the colour of the nearest Gaussian.

Defaults (resolution 128, 64 views, render size = resolution, 20 000 faces) take a few
seconds on two CPU cores for clouds of a few thousand Gaussians; the surface is accurate to
about half a voxel (the tests measure it). Larger clouds want ``resolution=256`` on a GPU.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from .cameras import Cameras
from .errors import UserError
from .gaussians import GaussianCloud
from .mesh import Mesh

#: field of view of the fusion cameras (degrees)
FUSION_FOV_DEG = 40.0


class MeshExportError(UserError):
    """Gaussians that give no mesh (an empty or invisible cloud), or a missing optional library."""


def require_mesh_libraries() -> None:
    """Raise :class:`MeshExportError` when scikit-image (marching cubes) is not installed."""
    try:
        import skimage.measure  # noqa: F401
    except ImportError:
        raise MeshExportError(
            "mesh export needs scikit-image (marching cubes), which is not installed", hint="pip install 'ouroboros3d[mesh]'"
        ) from None


def quadric_simplification_available() -> bool:
    """Whether trimesh can decimate through ``fast-simplification``."""
    try:
        import fast_simplification  # noqa: F401
    except ImportError:
        return False
    return True


def fibonacci_directions(n: int) -> torch.Tensor:
    """``n`` unit vectors ``(n, 3)`` spread evenly over the sphere (a Fibonacci lattice, float64)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1 - 2 * i / n
    r = torch.sqrt((1 - y * y).clamp_min(0))
    phi = i * math.pi * (3 - math.sqrt(5))
    return torch.stack([r * torch.sin(phi), y, r * torch.cos(phi)], -1)


def sphere_cameras(n: int, radius: float, fov_deg: float = FUSION_FOV_DEG, dtype=torch.float32, device=None) -> Cameras:
    """``n`` cameras on a sphere of ``radius`` around the origin, looking at it (batch 1)."""
    d = fibonacci_directions(n)
    elevations = torch.rad2deg(torch.asin(d[:, 1].clamp(-1, 1))).tolist()
    azimuths = torch.rad2deg(torch.atan2(d[:, 0], d[:, 2])).tolist()
    return Cameras.orbit(azimuths, elevations, radius=radius, fov_deg=fov_deg, dtype=dtype, device=device)


def _visible_gaussians(cloud: GaussianCloud, index: int, min_opacity: float) -> GaussianCloud:
    if not -cloud.batch_size <= index < cloud.batch_size:
        raise IndexError(f"index {index} out of range for a batch of {cloud.batch_size}")
    one = cloud.select(index).detach().to(dtype=torch.float32)
    if one.num_gaussians == 0:
        raise MeshExportError("the Gaussian cloud is empty (0 Gaussians): there is no surface to mesh")
    opacity = one.opacities[0]
    keep = opacity >= min_opacity
    if not bool(keep.any()):
        raise MeshExportError(
            f"every Gaussian is (almost) transparent (highest opacity {float(opacity.max()):.3g}, "
            f"below min_opacity {min_opacity:g}): there is no surface to mesh",
            hint="check the reconstructor's weights, or lower min_opacity",
        )
    finite = torch.isfinite(one.means[0]).all(-1) & torch.isfinite(one.scales[0]).all(-1)
    keep = keep & finite
    if not bool(keep.any()):
        raise MeshExportError("no visible Gaussian has finite position and scale: there is no surface to mesh")
    fields = ("means", "quats", "scales", "opacities", "colors")
    from dataclasses import replace

    return replace(one, **{f: getattr(one, f)[:, keep] for f in fields})


def _project(points: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Camera-space z, pixel column/row (floats) and the ray-length factor ``|(x/z, y/z, 1)|``
    of world ``points (P, 3)`` in one OpenCV camera (``w2c (4, 4)``, pixel ``K (3, 3)``)."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    zs = torch.where(z > 1e-6, z, torch.ones_like(z))
    x, y = cam[:, 0] / zs, cam[:, 1] / zs
    col = K[0, 0] * x + K[0, 2]
    row = K[1, 1] * y + K[1, 2]
    return z, col, row, torch.sqrt(x * x + y * y + 1)


def _lookup(col: torch.Tensor, row: torch.Tensor, z: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat index of the pixel containing each projection (pixel ``(i, j)`` spans
    ``[j, j + 1) x [i, i + 1)``) and whether it lies in the image in front of the camera."""
    j, i = torch.floor(col).long(), torch.floor(row).long()
    inside = (z > 1e-6) & (j >= 0) & (j < size) & (i >= 0) & (i < size)
    return (i.clamp(0, size - 1) * size + j.clamp(0, size - 1)), inside


def _render_views(cloud: GaussianCloud, cameras: Cameras, size: int, backend: str, chunk: int) -> tuple[torch.Tensor, ...]:
    """rgb ``(V, H*W, 3)`` un-premultiplied, alpha ``(V, H*W)``, expected depth ``(V, H*W)``."""
    rgbs, alphas, depths = [], [], []
    with torch.no_grad():
        for start in range(0, cameras.num_views, chunk):
            sub = cameras.select_views(range(start, min(start + chunk, cameras.num_views)))
            out = cloud.render(sub, size, size, background=0.0, backend=backend)
            alpha = out.alpha[0, :, 0].flatten(1)
            rgb = out.rgb[0].flatten(2).transpose(1, 2)
            rgbs.append(rgb / alpha.clamp_min(1e-6)[..., None])
            alphas.append(alpha)
            depths.append(out.depth[0, :, 0].flatten(1))
    return torch.cat(rgbs).clamp(0, 1), torch.cat(alphas), torch.cat(depths)


def _facing(depth: torch.Tensor, hit: torch.Tensor, Ks: torch.Tensor, size: int, floor: float = 0.05) -> torch.Tensor:
    """Per pixel ``(V, H*W)``: the cosine between the viewing ray and the normal of the rendered
    surface (from central differences of the unprojected depth map), at least ``floor``;
    ``floor`` where a neighbour missed the object."""
    V = depth.shape[0]
    d = depth.reshape(V, size, size)
    ok = hit.reshape(V, size, size)
    c = (torch.arange(size, dtype=depth.dtype, device=depth.device) + 0.5)
    fx, fy, cx, cy = (Ks[:, 0, 0, None, None], Ks[:, 1, 1, None, None], Ks[:, 0, 2, None, None], Ks[:, 1, 2, None, None])
    x = (c[None, None, :] - cx) / fx
    y = (c[None, :, None] - cy) / fy
    pts = torch.stack([x * d, y * d, d.expand(V, size, size)], -1)
    pad = torch.nn.functional.pad
    p = pad(pts.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate").permute(0, 2, 3, 1)
    o = pad(ok[:, None].float(), (1, 1, 1, 1))[:, 0] > 0
    du = p[:, 1:-1, 2:] - p[:, 1:-1, :-2]
    dv = p[:, 2:, 1:-1] - p[:, :-2, 1:-1]
    good = ok & o[:, 1:-1, 2:] & o[:, 1:-1, :-2] & o[:, 2:, 1:-1] & o[:, :-2, 1:-1]
    n = torch.nn.functional.normalize(torch.linalg.cross(du, dv, dim=-1), dim=-1)
    ray = torch.nn.functional.normalize(torch.stack([x.expand(V, size, size), y.expand(V, size, size), torch.ones_like(d)], -1), dim=-1)
    cos = (n * ray).sum(-1).abs()
    return torch.where(good, cos.clamp_min(floor), torch.full_like(cos, floor)).reshape(V, -1)


def _fuse_tsdf(
    points: torch.Tensor,
    cameras: Cameras,
    alpha: torch.Tensor,
    depth: torch.Tensor,
    size: int,
    truncation: float,
    alpha_threshold: float,
    block: int = 65536,
    weighted: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated signed distances in [-1, 1] (positive outside) and the number of views that
    observed them, for ``points (P, 3)``, processed in blocks that fit in a CPU cache.

    The distance is measured along the camera's z axis (a projective TSDF; at the 40 degree
    field of view it differs from the distance along the ray by at most 6 %). A pixel that
    saw background gets an infinite depth, so every voxel in front of it reads +1.
    """
    tsdf = torch.empty(len(points), dtype=points.dtype, device=points.device)
    weight = torch.empty_like(tsdf)
    Ks = cameras.pixel_intrinsics(size, size)[0]
    P = (Ks @ cameras.w2c[0][:, :3, :]).transpose(1, 2)  # (V, 4, 3): [x, 1] -> (z u, z v, z)
    hit = alpha >= alpha_threshold
    surface = torch.where(hit, depth, torch.full_like(depth, float("inf")))
    confidence = torch.where(hit, _facing(depth, hit, Ks, size), torch.ones_like(depth)) if weighted else torch.ones_like(depth)
    for start in range(0, len(points), block):
        pts = points[start : start + block]
        homo = torch.cat([pts, torch.ones_like(pts[:, :1])], 1)
        total = torch.zeros(len(pts), dtype=pts.dtype, device=pts.device)
        count = torch.zeros_like(total)
        for v in range(cameras.num_views):
            proj = homo @ P[v]
            z = proj[:, 2]
            u = proj[:, 0] / z
            w = proj[:, 1] / z
            inside = (z > 1e-6) & (u >= 0) & (u < size) & (w >= 0) & (w < size)
            pix = w.clamp(0, size - 1).long() * size + u.clamp(0, size - 1).long()
            dist = surface[v][pix] - z
            use = inside & (dist > -truncation)  # far behind the surface: unobserved
            w = torch.where(use, confidence[v][pix], 0.0)
            total += w * (dist / truncation).clamp(-1, 1)
            count += w
        tsdf[start : start + block] = total / count.clamp_min(1)
        weight[start : start + block] = count
    return tsdf, weight


def _marching_cubes(tsdf: np.ndarray, lo: float, voxel: float):
    """A ``trimesh.Trimesh`` of the zero level of ``tsdf (R, R, R)`` (index ``[i, j, k]`` at
    ``lo + (i, j, k) * voxel``), with outward normals; ``None`` when there is no surface."""
    import trimesh
    from skimage.measure import marching_cubes

    if not (tsdf.min() < 0 < tsdf.max()):
        return None
    verts, faces, _, _ = marching_cubes(tsdf, level=0.0, spacing=(voxel, voxel, voxel))
    # skimage's default winding ("descent") gives outward normals for a field negative inside
    return trimesh.Trimesh(vertices=verts + lo, faces=faces, process=True)


def _drop_floaters(mesh, min_component_fraction: float):
    import trimesh

    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh, 0
    largest = max(len(p.faces) for p in parts)
    kept = [p for p in parts if len(p.faces) >= min_component_fraction * largest]
    return trimesh.util.concatenate(kept), len(parts) - len(kept)


def _smooth(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """``volume (R, R, R)`` blurred by a separable Gaussian of ``sigma`` voxels (edges replicated)."""
    import torch.nn.functional as F

    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=volume.dtype, device=volume.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = volume[None, None]
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = len(kernel)
        pad = [0] * 6
        pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.reshape(shape))
    return out[0, 0]


def _resample_volume(tsdf: torch.Tensor, resolution: int) -> torch.Tensor:
    """The TSDF sampled at ``resolution`` points per axis spanning the same cube (trilinear)."""
    import torch.nn.functional as F

    return F.interpolate(tsdf[None, None], size=(resolution,) * 3, mode="trilinear", align_corners=True)[0, 0]


def _vertex_colors(
    vertices: torch.Tensor,
    normals: torch.Tensor,
    cameras: Cameras,
    rgb: torch.Tensor,
    alpha: torch.Tensor,
    depth: torch.Tensor,
    size: int,
    tolerance: float,
    alpha_threshold: float,
    cloud: GaussianCloud,
) -> tuple[torch.Tensor, int]:
    """Vertex colours ``(Nv, 3)`` projected from the renders, and how many vertices no view saw."""
    total = torch.zeros(len(vertices), 3, dtype=vertices.dtype, device=vertices.device)
    weight = torch.zeros(len(vertices), dtype=vertices.dtype, device=vertices.device)
    w2c = cameras.w2c[0]
    Ks = cameras.pixel_intrinsics(size, size)[0]
    centers = cameras.centers[0]
    for v in range(cameras.num_views):
        z, col, row, _ = _project(vertices, w2c[v], Ks[v])
        pix, inside = _lookup(col, row, z, size)
        a, d = alpha[v][pix], depth[v][pix]
        to_camera = torch.nn.functional.normalize(centers[v] - vertices, dim=-1)
        cos = (normals * to_camera).sum(-1).clamp_min(0)
        seen = inside & (a >= alpha_threshold) & ((d - z).abs() <= tolerance)
        w = torch.where(seen, a * cos * cos, torch.zeros_like(a))
        total += w[:, None] * rgb[v][pix]
        weight += w
    colors = total / weight.clamp_min(1e-12)[:, None]
    unseen = weight <= 1e-12
    if bool(unseen.any()):
        means, gauss_colors = cloud.means[0], cloud.colors[0].clamp(0, 1)
        nearest = torch.cat([torch.cdist(chunk, means).argmin(1) for chunk in vertices[unseen].split(4096)])
        colors[unseen] = gauss_colors[nearest]
    return colors.clamp(0, 1), int(unseen.sum())


def mesh_from_gaussians(
    cloud: GaussianCloud,
    *,
    index: int = 0,
    resolution: int = 128,
    views: int = 64,
    faces: int | None = 20000,
    render_size: int | None = None,
    truncation_voxels: float = 3.0,
    smoothing: float = 1.0,
    alpha_threshold: float = 0.5,
    min_opacity: float = 0.05,
    min_component_fraction: float = 0.05,
    simplify: str = "auto",
    backend: str = "auto",
    chunk: int = 8,
    info: dict[str, Any] | None = None,
) -> Mesh:
    """A closed, vertex-coloured triangle mesh of Gaussian cloud element ``index`` (see the
    module docstring for the method).

    ``resolution``: TSDF samples per axis (the voxel is ``1/(resolution-1)`` of the volume's
    side); ``views``: fusion cameras on a sphere; ``faces``: the most faces to keep (``None``:
    no simplification); ``render_size``: pixels per side of each render (default
    ``resolution``); ``truncation_voxels``: the TSDF's truncation distance; ``smoothing``:
    the standard deviation, in voxels, of a Gaussian blur of the TSDF before marching cubes
    (0: none; it removes the bubbles and ripples that the view-to-view noise of the expected
    depth leaves in the truncation band); ``simplify``: ``"auto"`` (quadric decimation when fast-simplification is
    installed, else the coarser-grid fallback), ``"quadric"`` or ``"resample"``. ``info``,
    when given, receives the voxel size, counts, the simplification used and timings in
    seconds. Returns a batch-1 :class:`Mesh` in the cloud's world frame (float32, CPU).
    Raises :class:`MeshExportError` for a cloud with no visible Gaussian or no surface.
    """
    if resolution < 8:
        raise MeshExportError(f"resolution {resolution} is too small", hint="use at least 8 (default 128)")
    if views < 1:
        raise MeshExportError(f"views {views} must be at least 1", hint="use e.g. 64")
    if faces is not None and faces < 4:
        raise MeshExportError(f"faces {faces} must be at least 4", hint="use e.g. 20000")
    if simplify not in ("auto", "quadric", "resample"):
        raise ValueError(f"simplify must be 'auto', 'quadric' or 'resample', got {simplify!r}")
    require_mesh_libraries()
    import trimesh

    timings: dict[str, float] = {}
    start = time.perf_counter()
    cloud = _visible_gaussians(cloud, index, min_opacity)
    device = cloud.device
    means = cloud.means[0]
    sigma = cloud.covariances()[0].diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    lo_box, hi_box = (means - 3 * sigma).min(0).values, (means + 3 * sigma).max(0).values
    center = (lo_box + hi_box) / 2
    extent = float((hi_box - lo_box).max()) / 2
    extent = max(extent, 1e-3)
    half = extent * resolution / (resolution - 9)  # 4 voxels of margin each side (plus rounding)
    voxel = 2 * half / (resolution - 1)
    truncation = truncation_voxels * voxel
    reach = float(((means - center).norm(dim=-1) + 3 * sigma.max(-1).values).max())
    size = render_size or resolution

    # render from a sphere of views around the centre (the cloud moved so the centre is the origin)
    from dataclasses import replace

    centred = replace(cloud, means=means[None] - center)
    distance = reach / math.sin(math.radians(FUSION_FOV_DEG) / 2) * 1.05
    cameras = sphere_cameras(views, distance, device=device)
    rgb, alpha, depth = _render_views(centred, cameras, size, backend, chunk)
    timings["render"] = time.perf_counter() - start
    if float(alpha.max()) < alpha_threshold:
        raise MeshExportError(
            f"the Gaussians render (almost) transparent from every view (highest alpha {float(alpha.max()):.3g}, "
            f"below alpha_threshold {alpha_threshold:g}): there is no surface to mesh",
            hint="check the reconstructor's weights",
        )

    # fuse a TSDF on the voxel grid (index [i, j, k] <-> x, y, z), in the centred frame
    start = time.perf_counter()
    axis = torch.linspace(-half, half, resolution, dtype=torch.float32, device=device)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    # beyond the Gaussians' bounding sphere is free space: fuse only the voxels within it
    near = grid.norm(dim=-1) < reach + truncation
    tsdf = torch.ones(len(grid), dtype=torch.float32, device=device)
    fused, weight = _fuse_tsdf(grid[near], cameras, alpha, depth, size, truncation, alpha_threshold)
    tsdf[near] = torch.where(weight > 0, fused, -torch.ones_like(fused))  # seen by no view: inside
    tsdf = tsdf.reshape(resolution, resolution, resolution)
    if smoothing > 0:
        tsdf = _smooth(tsdf, smoothing)
    for dim in range(3):  # the border is free space, so every surface closes
        tsdf.narrow(dim, 0, 1).fill_(1.0)
        tsdf.narrow(dim, resolution - 1, 1).fill_(1.0)
    timings["fuse"] = time.perf_counter() - start

    start = time.perf_counter()
    volume = tsdf.cpu().numpy().astype(np.float32)
    mesh = _marching_cubes(volume, -half, voxel)
    if mesh is None or len(mesh.faces) == 0:
        raise MeshExportError("the fused volume has no surface (the renders show no consistent object)", hint="check the Gaussians")
    raw_faces = len(mesh.faces)
    mesh, dropped = _drop_floaters(mesh, min_component_fraction)
    timings["surface"] = time.perf_counter() - start

    start = time.perf_counter()
    method = "none"
    if faces is not None and len(mesh.faces) > faces:
        method = "quadric" if simplify == "quadric" or (simplify == "auto" and quadric_simplification_available()) else "resample"
        if method == "quadric":
            if not quadric_simplification_available():
                raise MeshExportError("quadric simplification needs fast-simplification", hint="pip install 'ouroboros3d[mesh]'")
            mesh = mesh.simplify_quadric_decimation(face_count=faces)
            mesh.process(validate=True)
        else:
            # faces grow with the square of the grid resolution: shrink the grid until they fit
            coarse = resolution
            while len(mesh.faces) > faces and coarse > 8:
                coarse = max(8, int(coarse * min(0.9, math.sqrt(faces / len(mesh.faces)))))
                coarse_voxel = 2 * half / (coarse - 1)
                resampled = _resample_volume(tsdf, coarse)
                for dim in range(3):
                    resampled.narrow(dim, 0, 1).fill_(1.0)
                    resampled.narrow(dim, coarse - 1, 1).fill_(1.0)
                candidate = _marching_cubes(resampled.cpu().numpy().astype(np.float32), -half, coarse_voxel)
                if candidate is None or len(candidate.faces) == 0:
                    break
                mesh, _ = _drop_floaters(candidate, min_component_fraction)
    timings["simplify"] = time.perf_counter() - start

    start = time.perf_counter()
    vertices = torch.tensor(np.array(mesh.vertices), dtype=torch.float32, device=device)
    normals = torch.tensor(np.array(mesh.vertex_normals), dtype=torch.float32, device=device)
    colors, unseen = _vertex_colors(
        vertices, normals, cameras, rgb, alpha, depth, size, 2 * voxel, alpha_threshold, centred
    )
    timings["color"] = time.perf_counter() - start

    if info is not None:
        info.update(
            voxel_size=voxel,
            volume_center=center.tolist(),
            volume_half_size=half,
            render_size=size,
            views=views,
            gaussians=cloud.num_gaussians,
            marching_cubes_faces=raw_faces,
            dropped_components=dropped,
            simplification=method,
            faces=len(mesh.faces),
            vertices=len(mesh.vertices),
            unseen_vertices=unseen,
            watertight=bool(mesh.is_watertight),
            timings=timings,
        )
    world = (vertices + center).cpu()
    return Mesh([world], [torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)], [colors.cpu()])
