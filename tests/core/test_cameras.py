"""Cameras against the official orbit table and hand-computed geometry."""

import math

import numpy as np
import pytest
import torch

from ouroboros_core.cameras import (
    Cameras,
    camera_rays,
    look_at,
    plucker_rays,
    rigid_inverse,
    unproject_depth,
)

# official-ouroboros3d.md §1.3: positions and rotation columns (x_cam, y_cam, z_cam)
S = 0.70710678
OFFICIAL_TABLE = [
    ((0, 0, 1.741697), [(1, 0, 0), (0, -1, 0), (0, 0, -1)]),
    ((1.231566, 0, 1.231566), [(S, 0, -S), (0, -1, 0), (-S, 0, -S)]),
    ((1.741697, 0, 0), [(0, 0, -1), (0, -1, 0), (-1, 0, 0)]),
    ((1.231565, 0, -1.231566), [(-S, 0, -S), (0, -1, 0), (-S, 0, S)]),
    ((0, 0, -1.741697), [(-1, 0, 0), (0, -1, 0), (0, 0, 1)]),
    ((-1.231566, 0, -1.231566), [(-S, 0, S), (0, -1, 0), (S, 0, S)]),
    ((-1.741697, 0, 0), [(0, 0, 1), (0, -1, 0), (1, 0, 0)]),
    ((-0.666519, 0, 1.609118), [(0.9239, 0, 0.3827), (0, -1, 0), (0.3827, 0, -0.9239)]),
]


def test_official_orbit_matches_reference_table():
    cams = Cameras.official(dtype=torch.float64)
    assert cams.c2w.shape == (1, 8, 4, 4)
    for v, (pos, cols) in enumerate(OFFICIAL_TABLE):
        np.testing.assert_allclose(cams.c2w[0, v, :3, 3].numpy(), pos, atol=2e-6)
        for k, col in enumerate(cols):
            np.testing.assert_allclose(cams.c2w[0, v, :3, k].numpy(), col, atol=1e-4)
    K = cams.intrinsics[0, 0].numpy()
    np.testing.assert_allclose(K, [[1.3888889, 0, 0.5], [0, 1.3888889, 0.5], [0, 0, 1]], atol=1e-6)
    # pixel focal at 512: 711.11 px, principal point at the image centre
    Kp = cams.pixel_intrinsics(512, 512)[0, 0]
    assert Kp[0, 0].item() == pytest.approx(711.111, abs=1e-2)
    assert Kp[0, 2].item() == pytest.approx(256.0)


def test_opengl_round_trip_and_axes():
    cams = Cameras.orbit([10.0, 200.0], [30.0, -20.0], radius=2.0, dtype=torch.float64)
    gl = cams.to_opengl()
    # OpenGL camera looks down its -z axis, whose direction equals the OpenCV +z axis
    np.testing.assert_allclose(-gl[..., :3, 2].numpy(), cams.c2w[..., :3, 2].numpy(), atol=1e-12)
    back = Cameras.from_opengl(gl, cams.intrinsics)
    np.testing.assert_allclose(back.c2w.numpy(), cams.c2w.numpy(), atol=1e-12)
    # positive elevation puts the camera above the object
    assert cams.centers[0, 0, 1] > 0 and cams.centers[0, 1, 1] < 0


def test_pixel_intrinsics_round_trip():
    cams = Cameras.official()
    K = cams.pixel_intrinsics(96, 128)
    assert K[0, 0, 0, 0].item() == pytest.approx(1.3888889 * 128, rel=1e-6)
    assert K[0, 0, 1, 2].item() == pytest.approx(48.0)
    back = Cameras.from_pixel_intrinsics(cams.c2w, K, 96, 128)
    torch.testing.assert_close(back.intrinsics, cams.intrinsics)


def test_rigid_inverse_and_look_at():
    eye = torch.tensor([[0.3, 1.2, -2.0]], dtype=torch.float64)
    m = look_at(eye, torch.zeros_like(eye))
    torch.testing.assert_close(rigid_inverse(m) @ m, torch.eye(4, dtype=torch.float64).expand(1, 4, 4))
    # the z axis points at the target
    torch.testing.assert_close(m[0, :3, 2], -eye[0] / eye[0].norm())


def _project(point, c2w, K, H, W):
    w2c = np.linalg.inv(c2w)
    pc = w2c[:3, :3] @ point + w2c[:3, 3]
    return K[0, 0] * W * pc[0] / pc[2] + K[0, 2] * W, K[1, 1] * H * pc[1] / pc[2] + K[1, 2] * H, pc[2]


def test_plucker_rays_pass_through_projected_points():
    cams = Cameras.orbit([35.0], [-20.0], radius=1.8, fov_deg=45.0, dtype=torch.float64)
    H, W = 12, 16
    rays = plucker_rays(cams, H, W)
    assert rays.shape == (1, 1, 6, H, W)
    o, d = camera_rays(cams, H, W)
    c2w, K = cams.c2w[0, 0].numpy(), cams.intrinsics[0, 0].numpy()
    # a world point placed exactly on the centre of pixel (row 3, column 10)
    i, j = 3, 10
    u, v = (j + 0.5) / W, (i + 0.5) / H
    p_cam = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0]) * 1.3
    p_world = c2w[:3, :3] @ p_cam + c2w[:3, 3]
    px, py, z = _project(p_world, c2w, K, H, W)
    assert (px, py) == pytest.approx((j + 0.5, i + 0.5))
    ray_d = d[0, 0, i, j].numpy()
    ray_o = o[0, 0, i, j].numpy()
    to_point = (p_world - ray_o) / np.linalg.norm(p_world - ray_o)
    np.testing.assert_allclose(ray_d, to_point, atol=1e-12)
    # Plücker: moment o x d first, then the unit direction; the moment of any point on the ray
    np.testing.assert_allclose(rays[0, 0, :3, i, j].numpy(), np.cross(p_world, ray_d), atol=1e-12)
    np.testing.assert_allclose(rays[0, 0, 3:, i, j].numpy(), ray_d, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(rays[0, 0, 3:].numpy(), axis=0), 1.0, atol=1e-12)


def test_unproject_depth_recovers_points():
    cams = Cameras.official(dtype=torch.float64)
    H = W = 8
    depth = torch.rand(1, 8, 1, H, W, dtype=torch.float64) + 1.0
    world = unproject_depth(depth, cams)
    w2c = cams.w2c
    pc = torch.einsum("bvij,bvjhw->bvihw", w2c[..., :3, :3], world) + w2c[..., :3, 3, None, None]
    torch.testing.assert_close(pc[:, :, 2:3], depth)
    for v in range(8):
        px, py, _ = _project(world[0, v, :, 2, 5].numpy(), cams.c2w[0, v].numpy(), cams.intrinsics[0, v].numpy(), H, W)
        assert (px, py) == pytest.approx((5.5, 2.5))


def test_select_and_repeat():
    cams = Cameras.official()
    sub = cams.select_views([0, 2, 4, 6])
    torch.testing.assert_close(sub.c2w[0, 1], cams.c2w[0, 2])
    assert cams.repeat(3).batch_size == 3
    with pytest.raises(ValueError, match="intrinsics"):
        Cameras(cams.c2w, cams.intrinsics[:, :3])


def test_orbit_camera_at_pole_is_finite():
    cams = Cameras.orbit([0.0], [90.0], radius=2.0)
    assert torch.isfinite(cams.c2w).all()
    assert math.isclose(torch.linalg.det(cams.c2w[0, 0, :3, :3]).item(), 1.0, rel_tol=1e-5)
