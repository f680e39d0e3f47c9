"""Mesh: the torch rasterizer against analytic silhouettes and depths, texturing, export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from ouroboros_core.cameras import OFFICIAL_FOV_DEG, OFFICIAL_RADIUS, Cameras
from ouroboros_core.errors import UserError
from ouroboros_core.mesh import Mesh, opencv_to_clip, rasterize_mesh_torch

SIZE = 64
F_PX = SIZE / (2 * math.tan(math.radians(OFFICIAL_FOV_DEG) / 2))


def test_cube_silhouette_and_depth_from_the_official_orbit() -> None:
    half = 0.25
    out = Mesh.box(2 * half, color=(0.2, 0.4, 0.6)).render(Cameras.official().select_views([0, 2, 4, 6]), SIZE, SIZE, background=1.0)
    # seen along an axis the cube is a square of half-width f * half / (r - half) pixels
    hw = F_PX * half / (OFFICIAL_RADIUS - half)
    centres = torch.arange(SIZE) + 0.5
    inside_1d = (centres - SIZE / 2).abs() <= hw
    analytic = (inside_1d[:, None] & inside_1d[None, :]).float()
    for v in range(4):
        alpha = out.alpha[0, v, 0]
        assert torch.equal(alpha, analytic)  # no pixel centre lies within float error of an edge
        c = SIZE // 2
        assert abs(out.depth[0, v, 0, c, c].item() - (OFFICIAL_RADIUS - half)) < 1e-4
        # a face parallel to the image plane has constant depth; colour is the vertex colour
        assert out.depth[0, v, 0][analytic.bool()].std() < 1e-4
        torch.testing.assert_close(out.rgb[0, v, :, c, c], torch.tensor([0.2, 0.4, 0.6]))
        torch.testing.assert_close(out.rgb[0, v, :, 0, 0], torch.ones(3))
        assert out.depth[0, v, 0, 0, 0] == 0 and out.accumulated_depth[0, v, 0, c, c] == out.depth[0, v, 0, c, c]


def test_icosphere_silhouette_is_the_analytic_disc() -> None:
    radius = 0.4
    out = Mesh.icosphere(radius, subdivisions=3).render(Cameras.official(), SIZE, SIZE)
    disc = math.pi * (F_PX * radius / math.sqrt(OFFICIAL_RADIUS**2 - radius**2)) ** 2
    covered = out.alpha[0, :, 0].sum((-1, -2))
    assert ((covered - disc).abs() / disc < 0.03).all(), (covered, disc)
    # the inscribed polyhedron is within ~0.005 of the sphere at this subdivision
    c = SIZE // 2
    torch.testing.assert_close(out.depth[0, :, 0, c, c], torch.full((8,), OFFICIAL_RADIUS - radius), atol=0.01, rtol=0)


def test_perspective_correct_interpolation() -> None:
    # P = 0.2 A + 0.3 B + 0.5 C projects onto the centre of pixel (row 7, col 8); the
    # triangle is tilted, so screen-space (affine) barycentrics would be wrong
    A, B, C = torch.tensor([[-0.4, -0.35, 1.75], [0.6, -0.4, 2.5], [0.0, 0.18, 1.8]], dtype=torch.float64)
    P = 0.2 * A + 0.3 * B + 0.5 * C
    K = torch.tensor([[[10.0, 0, 8], [0, 10.0, 8], [0, 0, 1]]], dtype=torch.float64)
    assert torch.allclose(K[0] @ (P / P[2]), torch.tensor([8.5, 7.5, 1.0], dtype=torch.float64))
    attrs, mask, depth = rasterize_mesh_torch(
        torch.stack([A, B, C]), torch.tensor([[0, 1, 2]]), torch.eye(3, dtype=torch.float64), torch.eye(4, dtype=torch.float64)[None], K, 16, 16
    )
    assert mask[0, 7, 8, 0] == 1
    torch.testing.assert_close(attrs[0, 7, 8], torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))
    torch.testing.assert_close(depth[0, 7, 8, 0], P[2])


def test_clip_space_for_nvdiffrast_matches_the_pinhole() -> None:
    # the nvdiffrast path's only math: NDC must land on the pixel the OpenCV pinhole gives,
    # with nvdiffrast's pixel centres at ndc = (2 i + 1) / size - 1
    g = torch.Generator().manual_seed(0)
    cam = torch.rand(2, 50, 3, generator=g, dtype=torch.float64)
    cam = cam * torch.tensor([2.0, 2.0, 5.0], dtype=torch.float64) + torch.tensor([-1.0, -1.0, 0.5], dtype=torch.float64)
    K = torch.tensor([[[30.0, 0, 20.0], [0, 28.0, 13.0], [0, 0, 1]], [[25.0, 0, 17.5], [0, 25.0, 15.0], [0, 0, 1]]], dtype=torch.float64)
    clip = opencv_to_clip(cam, K, 40, 30, near=0.5, far=10.0)
    ndc = clip[..., :3] / clip[..., 3:]
    u = K[:, None, 0, 0] * cam[..., 0] / cam[..., 2] + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * cam[..., 1] / cam[..., 2] + K[:, None, 1, 2]
    torch.testing.assert_close((ndc[..., 0] + 1) / 2 * 40, u)
    torch.testing.assert_close((ndc[..., 1] + 1) / 2 * 30, v)
    assert torch.equal(clip[..., 3], cam[..., 2])
    planes = opencv_to_clip(torch.tensor([[[0.0, 0.0, 0.5], [0.0, 0.0, 10.0]]], dtype=torch.float64), K[:1], 40, 30, near=0.5, far=10.0)
    torch.testing.assert_close(planes[0, :, 2] / planes[0, :, 3], torch.tensor([-1.0, 1.0], dtype=torch.float64))


def test_gradients_reach_vertex_colours_and_positions() -> None:
    mesh = Mesh.icosphere(0.4, subdivisions=1)
    mesh.vertices[0].requires_grad_(True)
    mesh.vertex_colors[0].requires_grad_(True)
    out = mesh.render(Cameras.official().select_views([1]), 24, 24)
    (out.rgb.sum() + out.depth.sum()).backward()
    assert mesh.vertex_colors[0].grad.abs().sum() > 0 and torch.isfinite(mesh.vertex_colors[0].grad).all()
    assert mesh.vertices[0].grad.abs().sum() > 0 and torch.isfinite(mesh.vertices[0].grad).all()


def textured_quad() -> Mesh:
    """A 0.6-wide upright square at z = 0 whose texture has four coloured quadrants."""
    v = torch.tensor([[-0.3, -0.3, 0.0], [0.3, -0.3, 0.0], [0.3, 0.3, 0.0], [-0.3, 0.3, 0.0]])
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    green, blue, red, white = torch.eye(3)[1], torch.eye(3)[2], torch.eye(3)[0], torch.ones(3)
    tex = torch.zeros(4, 4, 3)  # image rows top to bottom
    tex[:2, :2], tex[:2, 2:], tex[2:, :2], tex[2:, 2:] = green, blue, red, white
    return Mesh([v], [torch.tensor([[0, 1, 2], [0, 2, 3]])], uvs=[uv], textures=[tex])


def test_texture_orientation() -> None:
    out = textured_quad().render(Cameras.official().select_views([0]), SIZE, SIZE, background=0.0)
    rgb = out.rgb[0, 0]
    c, d = SIZE // 2, 8  # sample 8 pixels away from the centre, well inside each quadrant
    # world y-up appears at the top of the image; texture v = 1 is the top row of the image
    torch.testing.assert_close(rgb[:, c - d, c - d], torch.tensor([0.0, 1.0, 0.0]))  # top-left
    torch.testing.assert_close(rgb[:, c - d, c + d], torch.tensor([0.0, 0.0, 1.0]))  # top-right
    torch.testing.assert_close(rgb[:, c + d, c - d], torch.tensor([1.0, 0.0, 0.0]))  # bottom-left
    torch.testing.assert_close(rgb[:, c + d, c + d], torch.tensor([1.0, 1.0, 1.0]))  # bottom-right


def test_batch_of_different_meshes_equals_single_renders() -> None:
    cube, sphere = Mesh.box(0.5, color=(1.0, 0.0, 0.0)), Mesh.icosphere(0.3, color=(0.0, 0.0, 1.0))
    both = Mesh(cube.vertices + sphere.vertices, cube.faces + sphere.faces, cube.vertex_colors + sphere.vertex_colors)
    cams = Cameras.official().select_views([1, 3])
    out = both.render(cams, 20, 20)
    for i, single in enumerate((cube, sphere)):
        ref = single.render(cams, 20, 20)
        torch.testing.assert_close(out.rgb[i], ref.rgb[0])
        torch.testing.assert_close(out.depth[i], ref.depth[0])


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_export_read_back_by_trimesh(tmp_path, suffix: str) -> None:
    mesh = Mesh.icosphere(0.5, subdivisions=2, color=(1.0, 0.5, 0.0))
    path = mesh.save(tmp_path / f"sphere{suffix}")
    back = trimesh.load(path, force="mesh", process=False)
    assert back.vertices.shape == (162, 3) and back.faces.shape == (320, 3)
    np.testing.assert_allclose(back.vertices, mesh.vertices[0].numpy(), atol=1e-6)
    assert np.all(back.visual.vertex_colors[:, :3] == [255, 128, 0])


def test_from_trimesh_renders_what_was_saved(tmp_path) -> None:
    mesh = Mesh.box(0.5, color=(0.0, 1.0, 0.5))
    back = Mesh.from_trimesh(trimesh.load(mesh.save(tmp_path / "cube.glb"), force="mesh", process=False))
    cams = Cameras.official().select_views([1])
    a, b = mesh.render(cams, 24, 24), back.render(cams, 24, 24)
    torch.testing.assert_close(a.alpha, b.alpha)
    torch.testing.assert_close(a.rgb, b.rgb, atol=1 / 255, rtol=0)  # colours went through 8 bits


@pytest.mark.parametrize("suffix", [".glb", ".obj"])
def test_textured_export(tmp_path, suffix: str) -> None:
    path = textured_quad().save(tmp_path / f"quad{suffix}")
    if suffix == ".obj":
        assert (tmp_path / "quad.mtl").exists() and (tmp_path / "quad.png").exists()
    back = trimesh.load(path, force="mesh", process=False)
    assert back.faces.shape == (2, 3) and back.visual.kind == "texture"
    material = back.visual.material
    image = np.asarray((material.baseColorTexture if suffix == ".glb" else material.image).convert("RGB"))
    assert image.shape == (4, 4, 3) and tuple(image[0, 0]) == (0, 255, 0) and tuple(image[3, 0]) == (255, 0, 0)
    np.testing.assert_allclose(back.visual.uv, textured_quad().uvs[0].numpy(), atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_user_and_programming_errors(tmp_path) -> None:
    with pytest.raises(UserError, match=r"\.glb"):
        Mesh.box().save(tmp_path / "cube.stl")
    with pytest.raises(ValueError, match="uvs and textures"):
        Mesh(Mesh.box().vertices, Mesh.box().faces, uvs=[torch.zeros(8, 2)])
    with pytest.raises(ValueError, match="vertex_colors"):
        Mesh(Mesh.box().vertices, Mesh.box().faces, vertex_colors=[torch.zeros(7, 3)])
