"""Mesh export from Gaussians: clouds placed on known shapes, meshed and measured.

The shapes are a sphere and a box covered by small opaque Gaussians. Their meshes are
measured against the analytic surface with a symmetric Chamfer distance: points sampled on
the mesh are scored by their analytic distance to the true surface, points sampled on the
true surface by the distance to their nearest mesh sample.

Threshold. The export samples a TSDF on a grid of voxel size ``h`` and renders at about one
pixel per voxel, so the fused surface follows the *rendered* surface to within about half a
voxel (nearest-pixel lookups, linear interpolation in marching cubes). The rendered surface
of a layer of opaque splats lies outside their centres by a fraction of their standard
deviation ``s``: the expected depth is measured at the centres, but the alpha-0.5 silhouette
of an opaque splat reaches ~1.2 s beyond its centre. The test therefore bounds the mean
Chamfer distance by ``0.5 h + 0.5 s`` (with ``s`` about one voxel here: one voxel in all),
and every sample by ``2 h + s``. A surface shifted by one voxel, or scaled by one voxel
over the object's radius, fails the mean bound.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("skimage")
from scipy.spatial import cKDTree  # noqa: E402  (scikit-image requires scipy)

import ouroboros_core.mesh_from_gaussians as mfg  # noqa: E402
from ouroboros_core.gaussians import GaussianCloud  # noqa: E402
from ouroboros_core.mesh_from_gaussians import MeshExportError, fibonacci_directions, mesh_from_gaussians  # noqa: E402

#: small settings for tests (the defaults are 128 / 64 views; see the module docstring)
FAST = dict(resolution=64, views=32)


def make_cloud(points: torch.Tensor, colors: torch.Tensor, scale: float, opacity: float = 0.95) -> GaussianCloud:
    n = len(points)
    return GaussianCloud(
        points[None].float(),
        torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(1, n, 4).clone(),
        torch.full((1, n, 3), scale),
        torch.full((1, n), opacity),
        colors[None].float(),
    )


def sphere_color(directions: torch.Tensor) -> torch.Tensor:
    """A smooth colour field on the unit sphere."""
    return 0.5 + 0.4 * directions


def sphere_cloud(radius: float = 0.4, n: int = 3000, center=(0.0, 0.0, 0.0)) -> tuple[GaussianCloud, float]:
    """Gaussians on a Fibonacci lattice of the sphere, each about 0.6 of the lattice spacing wide."""
    d = fibonacci_directions(n).float()
    spacing = math.sqrt(4 * math.pi * radius**2 / n)
    return make_cloud(d * radius + torch.tensor(center), sphere_color(d), 0.6 * spacing), 0.6 * spacing


BOX_COLORS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.1, 0.2, 0.9], [0.9, 0.9, 0.1], [0.1, 0.9, 0.9], [0.8, 0.2, 0.8]])


def box_cloud(half: float = 0.3, n: int = 24) -> tuple[GaussianCloud, float]:
    """An ``n`` x ``n`` grid of Gaussians on each face of the cube [-half, half]^3, one colour per face."""
    t = (torch.arange(n) + 0.5) / n * 2 * half - half
    a, b = (g.flatten() for g in torch.meshgrid(t, t, indexing="ij"))
    points, colors = [], []
    for face in range(6):
        axis, sign = face // 2, (-1, 1)[face % 2]
        p = torch.zeros(len(a), 3)
        p[:, axis] = sign * half
        others = [d for d in range(3) if d != axis]
        p[:, others[0]], p[:, others[1]] = a, b
        points.append(p)
        colors.append(BOX_COLORS[face].expand(len(a), 3))
    scale = 0.6 * 2 * half / n
    return make_cloud(torch.cat(points), torch.cat(colors), scale), scale


def as_trimesh(mesh) -> "trimesh.Trimesh":
    return trimesh.Trimesh(mesh.vertices[0].double().numpy(), mesh.faces[0].numpy(), process=False)


def chamfer(mesh, distance_to_truth, truth_samples: np.ndarray) -> tuple[float, float]:
    """(mean symmetric Chamfer distance, largest one-sided distance) of a mesh to a true surface."""
    tm = as_trimesh(mesh)
    samples, _ = trimesh.sample.sample_surface(tm, 200_000, seed=0)
    to_truth = np.abs(distance_to_truth(samples))
    to_mesh, _ = cKDTree(samples).query(truth_samples)
    return 0.5 * (to_truth.mean() + to_mesh.mean()), max(to_truth.max(), to_mesh.max())


def box_distance(points: np.ndarray, half: float) -> np.ndarray:
    q = np.abs(points) - half
    return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0)


@pytest.fixture(scope="module")
def sphere_result():
    cloud, scale = sphere_cloud()
    info: dict = {}
    return cloud, scale, mesh_from_gaussians(cloud, info=info, **FAST), info


@pytest.fixture(scope="module")
def box_result():
    cloud, scale = box_cloud()
    info: dict = {}
    return cloud, scale, mesh_from_gaussians(cloud, info=info, **FAST), info


def test_sphere_surface_is_within_a_voxel_and_closed(sphere_result):
    cloud, scale, mesh, info = sphere_result
    h, r = info["voxel_size"], 0.4
    truth = fibonacci_directions(20_000).numpy() * r
    mean, worst = chamfer(mesh, lambda p: np.linalg.norm(p, axis=1) - r, truth)
    print(f"sphere: voxel {h:.4f}, Gaussian scale {scale:.4f}, Chamfer {mean:.4f} ({mean / h:.2f} voxels), worst {worst:.4f}")
    assert mean < 0.5 * h + 0.5 * scale
    assert worst < 2 * h + scale
    tm = as_trimesh(mesh)
    assert tm.is_watertight and tm.is_winding_consistent
    assert tm.euler_number == 2  # one closed surface of genus 0: no bubbles, no handles
    assert tm.volume > 0  # outward normals
    assert abs(tm.volume / (4 / 3 * math.pi * r**3) - 1) < 3 * (h + scale) / r  # volume error ~ 3 dr / r
    assert len(tm.split(only_watertight=False)) == 1


def test_sphere_vertex_colours_follow_the_gaussians(sphere_result):
    cloud, _, mesh, info = sphere_result
    v = mesh.vertices[0]
    # independent reference: the colour field the Gaussians were given, at each vertex's direction
    expected = sphere_color(torch.nn.functional.normalize(v, dim=-1))
    err = (mesh.vertex_colors[0] - expected).abs()
    print(f"sphere colours: mean abs error {err.mean():.4f}, max {err.max():.4f}")
    assert err.mean() < 0.02 and err.max() < 0.06
    assert info["unseen_vertices"] == 0


def test_box_surface_colours_and_closure(box_result):
    cloud, scale, mesh, info = box_result
    h, half = info["voxel_size"], 0.3
    truth, _ = trimesh.sample.sample_surface(trimesh.creation.box(extents=(2 * half,) * 3), 20_000, seed=1)
    mean, worst = chamfer(mesh, lambda p: box_distance(p, half), truth)
    print(f"box: voxel {h:.4f}, Gaussian scale {scale:.4f}, Chamfer {mean:.4f} ({mean / h:.2f} voxels), worst {worst:.4f}")
    assert mean < 0.5 * h + 0.5 * scale
    assert worst < 2 * h + scale  # includes the rounded edges and corners
    tm = as_trimesh(mesh)
    assert tm.is_watertight and tm.euler_number == 2 and tm.volume > 0
    # each vertex against the colour of the box face it is closest to (independent of the cloud)
    v = mesh.vertices[0].numpy()
    q = np.abs(v) / half
    axis = q.argmax(1)
    face = 2 * axis + (v[np.arange(len(v)), axis] > 0)
    err = np.abs(mesh.vertex_colors[0].numpy() - BOX_COLORS.numpy()[face]).max(1)
    # vertices within two voxels of an edge see two faces' colours blended; the others must match
    second = np.sort(q, 1)[:, 1]
    interior = second < 1 - 2 * h / half
    print(f"box colours away from edges: mean {err[interior].mean():.4f}, max {err[interior].max():.4f}")
    assert interior.sum() > 0.5 * len(v)
    assert err[interior].mean() < 0.02 and err[interior].max() < 0.1


def test_defaults_are_documented_values_and_fit_the_face_budget(sphere_result):
    cloud, _, mesh, info = sphere_result
    assert info["render_size"] == 64 and info["views"] == 32
    assert info["faces"] <= 20000 and len(mesh.faces[0]) == info["faces"]
    import inspect

    params = inspect.signature(mesh_from_gaussians).parameters
    assert (params["resolution"].default, params["views"].default, params["faces"].default) == (128, 64, 20000)


@pytest.mark.parametrize("method", ["quadric", "resample"])
def test_simplification_meets_the_face_target_and_keeps_the_shape(method):
    if method == "quadric" and not mfg.quadric_simplification_available():
        pytest.skip("fast-simplification is not installed")
    cloud, scale = sphere_cloud()
    info: dict = {}
    mesh = mesh_from_gaussians(cloud, faces=2000, simplify=method, info=info, **FAST)
    assert info["marching_cubes_faces"] > 2000 and info["simplification"] == method
    assert 500 < len(mesh.faces[0]) <= 2000
    tm = as_trimesh(mesh)
    assert tm.is_watertight
    r = 0.4
    mean, _ = chamfer(mesh, lambda p: np.linalg.norm(p, axis=1) - r, fibonacci_directions(5000).numpy() * r)
    # coarser meshes lose some accuracy: a 2000-face sphere's chords sag ~r(1-cos(pi/sqrt(2000))) ~ 0.005 r
    assert mean < 0.5 * info["voxel_size"] + 0.5 * scale + 0.005 * r, mean


def test_without_fast_simplification_auto_falls_back_to_a_coarser_grid(monkeypatch):
    monkeypatch.setattr(mfg, "quadric_simplification_available", lambda: False)
    cloud, _ = sphere_cloud(n=1500)
    info: dict = {}
    mesh = mesh_from_gaussians(cloud, faces=3000, info=info, **FAST)
    assert info["simplification"] == "resample" and len(mesh.faces[0]) <= 3000 and as_trimesh(mesh).is_watertight
    with pytest.raises(MeshExportError, match="fast-simplification"):
        mesh_from_gaussians(cloud, faces=3000, simplify="quadric", **FAST)


def test_floaters_are_dropped_and_separate_parts_kept():
    big, scale = sphere_cloud(0.3, 2000, center=(-0.15, 0.0, 0.0))
    small, _ = sphere_cloud(0.15, 600, center=(0.45, 0.1, 0.0))
    speck, _ = sphere_cloud(0.04, 30, center=(0.2, -0.4, 0.3))  # a stray lump, about 2 % of the big sphere's area
    fields = ("means", "quats", "scales", "opacities", "colors")
    cloud = GaussianCloud(*(torch.cat([getattr(c, f) for c in (big, small, speck)], 1) for f in fields))
    info: dict = {}
    mesh = mesh_from_gaussians(cloud, info=info, **FAST)
    parts = as_trimesh(mesh).split(only_watertight=False)
    assert len(parts) == 2 and info["dropped_components"] >= 1
    centres = sorted((p.vertices.mean(0) for p in parts), key=lambda c: c[0])
    np.testing.assert_allclose(np.stack(centres), [[-0.15, 0.0, 0.0], [0.45, 0.1, 0.0]], atol=0.01)
    v = mesh.vertices[0]
    assert (v - torch.tensor([0.2, -0.4, 0.3])).norm(dim=-1).min() > 0.1  # nothing left at the speck


def test_an_off_centre_cloud_keeps_its_position_and_index_selects_the_element():
    centre = torch.tensor([0.3, -0.2, 0.1])
    sphere, scale = sphere_cloud(0.25, 1500, center=tuple(centre.tolist()))
    box, _ = box_cloud(0.2, 16)
    n = max(sphere.num_gaussians, box.num_gaussians)

    def padded(c: GaussianCloud) -> list[torch.Tensor]:  # invisible padding, as GaussianCloud.prune makes
        k = n - c.num_gaussians
        return [
            torch.cat([c.means, torch.zeros(1, k, 3)], 1),
            torch.cat([c.quats, torch.tensor([1.0, 0, 0, 0]).expand(1, k, 4)], 1),
            torch.cat([c.scales, torch.zeros(1, k, 3)], 1),
            torch.cat([c.opacities, torch.zeros(1, k)], 1),
            torch.cat([c.colors, torch.zeros(1, k, 3)], 1),
        ]

    both = GaussianCloud(*(torch.cat([a, b]) for a, b in zip(padded(box), padded(sphere))))
    info: dict = {}
    mesh = mesh_from_gaussians(both, index=1, info=info, **FAST)
    radial = (mesh.vertices[0] - centre).norm(dim=-1) - 0.25
    assert radial.abs().mean() < 0.5 * info["voxel_size"] + 0.5 * scale
    assert info["gaussians"] == sphere.num_gaussians  # the padding is not part of the surface


def test_glb_round_trip_keeps_geometry_and_colours(sphere_result, tmp_path):
    _, _, mesh, _ = sphere_result
    path = mesh.save(tmp_path / "model.glb")
    scene = trimesh.load(path)
    (loaded,) = scene.geometry.values() if isinstance(scene, trimesh.Scene) else (scene,)
    assert len(loaded.faces) == len(mesh.faces[0])
    # glTF keeps vertex order and float32 positions
    np.testing.assert_allclose(loaded.vertices, mesh.vertices[0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, mesh.faces[0].numpy())
    colors = loaded.visual.vertex_colors[:, :3] / 255.0
    np.testing.assert_allclose(colors, mesh.vertex_colors[0].numpy(), atol=0.5 / 255 + 1e-6)


def test_empty_cloud_is_a_one_line_error():
    empty = make_cloud(torch.zeros(0, 3), torch.zeros(0, 3), 0.01)
    with pytest.raises(MeshExportError) as info:
        mesh_from_gaussians(empty, **FAST)
    assert "empty" in str(info.value) and "\n" not in str(info.value)


def test_transparent_cloud_is_a_one_line_error():
    cloud, _ = sphere_cloud(n=500)
    faint = GaussianCloud(cloud.means, cloud.quats, cloud.scales, torch.full_like(cloud.opacities, 0.01), cloud.colors)
    with pytest.raises(MeshExportError) as info:
        mesh_from_gaussians(faint, **FAST)
    message = str(info.value)
    assert "transparent" in message and "0.01" in message and "\n" not in message
    # Gaussians above min_opacity that never add up to alpha 0.5: the renders are transparent
    sparse, _ = sphere_cloud(n=40)
    sparse = GaussianCloud(sparse.means, sparse.quats, torch.full_like(sparse.scales, 0.01), torch.full_like(sparse.opacities, 0.2), sparse.colors)
    with pytest.raises(MeshExportError, match="render .*transparent") as info:
        mesh_from_gaussians(sparse, **FAST)
    assert "\n" not in str(info.value)
    # opaque but far smaller than a voxel: no view agrees on a surface
    tiny = GaussianCloud(cloud.means, cloud.quats, torch.full_like(cloud.scales, 1e-5), cloud.opacities, cloud.colors)
    with pytest.raises(MeshExportError, match="no surface"):
        mesh_from_gaussians(tiny, **FAST)


def test_missing_scikit_image_is_a_user_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_skimage(name, *args, **kwargs):
        if name.startswith("skimage"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_skimage)
    with pytest.raises(MeshExportError, match=r"scikit-image.*ouroboros3d\[mesh\]"):
        mfg.require_mesh_libraries()


def test_fibonacci_cameras_cover_the_sphere_and_look_at_the_centre():
    cams = mfg.sphere_cameras(64, 2.0)
    centres = cams.centers[0].double()
    torch.testing.assert_close(centres.norm(dim=-1), torch.full((64,), 2.0, dtype=torch.float64), atol=1e-5, rtol=0)
    # every camera's optical axis (OpenCV +z) points at the origin
    torch.testing.assert_close(cams.c2w[0, :, :3, 2].double(), -centres / 2, atol=1e-5, rtol=0)
    # no direction on the sphere is more than ~30 degrees from a camera (64 points: ~26 degrees)
    probe = torch.nn.functional.normalize(torch.randn(2000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=-1)
    nearest = (probe @ (centres / 2).T).max(1).values
    assert torch.rad2deg(torch.acos(nearest.clamp(max=1))).max() < 30
