"""The pure-torch Gaussian rasterizer against a deliberately naive per-pixel evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ouroboros_core.render_torch import quat_scale_to_covariance, quat_to_rotmat, rasterize_gaussians


# ----------------------------------------------------------------------------- reference
def _naive_rotmat(q: np.ndarray, normalize: bool) -> np.ndarray:
    if normalize:
        q = q / np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def naive_render(
    means, quats, scales, opac, colors, viewmat, K, W, H, bg, near=0.01, eps2d=0.3, normalize=True, clamp=0.999, stop=1e-4
):
    """One camera, float64, a loop over pixels and over depth-sorted Gaussians."""
    means, quats, scales, opac, colors, viewmat, K, bg = (
        np.asarray(v, dtype=np.float64) for v in (means, quats, scales, opac, colors, viewmat, K, bg)
    )
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    splats = []
    for i in range(len(means)):
        p = R @ means[i] + t
        if p[2] < near or opac[i] < 1 / 255:
            continue
        M = _naive_rotmat(quats[i], normalize) @ np.diag(scales[i])
        cov_cam = R @ (M @ M.T) @ R.T
        lim_x = (cx / fx + 0.3 * W / (2 * fx), (W - cx) / fx + 0.3 * W / (2 * fx))
        lim_y = (cy / fy + 0.3 * H / (2 * fy), (H - cy) / fy + 0.3 * H / (2 * fy))
        u = min(max(p[0] / p[2], -lim_x[0]), lim_x[1])
        v = min(max(p[1] / p[2], -lim_y[0]), lim_y[1])
        J = np.array([[fx / p[2], 0, -fx * u / p[2]], [0, fy / p[2], -fy * v / p[2]]])
        cov2d = J @ cov_cam @ J.T + eps2d * np.eye(2)
        centre = np.array([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy])
        splats.append((p[2], centre, np.linalg.inv(cov2d), opac[i], colors[i]))
    splats.sort(key=lambda s: s[0])
    rgb = np.zeros((H, W, colors.shape[1]))
    alpha = np.zeros((H, W))
    depth = np.zeros((H, W))
    for row in range(H):
        for col in range(W):
            pix = np.array([col + 0.5, row + 0.5])
            T = 1.0
            for z, centre, conic, o, c in splats:
                d = pix - centre
                a = min(clamp, o * math.exp(-0.5 * d @ conic @ d))
                if a < 1 / 255:
                    continue
                if T * (1 - a) <= stop:
                    break
                rgb[row, col] += a * T * c
                depth[row, col] += a * T * z
                T *= 1 - a
            rgb[row, col] += T * bg
            alpha[row, col] = 1 - T
    return rgb, alpha, depth


def look_at_w2c(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return np.linalg.inv(c2w)


def tiny_scene(dtype=torch.float64, raw_scale: float = 1.0):
    """Eight Gaussians built to hit every rule: overlaps, the 0.999 clamp (Gaussian 0 projects
    onto a pixel centre of camera 0), the 1e-4 stop (three wide opaque splats in a row), one
    behind the near plane, one far off-screen whose footprint still reaches in (exercises the
    Jacobian clamp), one too faint to count."""
    means = [[0.0375, -0.05, 0.5], [0.1, 0.05, 0.2], [0.08, 0.05, 0.25], [0.09, 0.04, 0.3],
             [-0.3, -0.2, -0.1], [0.0, 0.0, 2.0], [0.9, 0.0, 0.35], [0.2, -0.3, 0.0]]
    quats = [[1, 0, 0, 0], [0.9, 0.3, -0.2, 0.1], [0.7, 0.1, 0.7, 0.0], [1, 0, 0, 0],
             [0.5, 0.5, 0.5, 0.5], [1, 0, 0, 0], [0.8, 0.0, 0.0, 0.6], [1, 0, 0, 0]]
    scales = [[0.2, 0.1, 0.15], [0.3, 0.32, 0.28], [0.29, 0.3, 0.3], [0.27, 0.3, 0.25],
              [0.25, 0.05, 0.1], [0.3, 0.3, 0.3], [0.35, 0.1, 0.2], [0.1, 0.1, 0.1]]
    opac = [1.0, 1.0, 1.0, 1.0, 0.6, 0.9, 0.7, 0.003]
    colors = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [0.5, 0.5, 0.5], [0.2, 0.3, 0.4]]
    t = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
    q = t(quats)
    q = q / q.norm(dim=-1, keepdim=True) * raw_scale
    return t(means), q, t(scales), t(opac), t(colors)


def tiny_cameras(W=16, H=16, dtype=torch.float64):
    # camera 0 looks at the cloud from +z (Gaussian 5 at z=2 sits behind its near plane),
    # camera 1 from an oblique direction, with an off-centre principal point
    w2c = np.stack([look_at_w2c([0.0, 0.0, 2.0]), look_at_w2c([1.2, 0.8, 1.4])])
    K = np.array([[[20.0, 0, 8.0], [0, 20.0, 8.0], [0, 0, 1]], [[18.0, 0, 7.0], [0, 22.0, 9.5], [0, 0, 1]]])
    K[:, 0] *= W / 16
    K[:, 1] *= H / 16
    return torch.tensor(w2c, dtype=dtype), torch.tensor(K, dtype=dtype)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("raw", [False, True])
def test_matches_naive_per_pixel_evaluation(raw: bool) -> None:
    means, quats, scales, opac, colors = tiny_scene(raw_scale=0.6 if raw else 1.0)
    viewmats, Ks = tiny_cameras(W=16, H=12)
    bg = torch.tensor([[0.2, 0.4, 0.9], [1.0, 1.0, 1.0]], dtype=torch.float64)
    covars = quat_scale_to_covariance(quats, scales, normalize=False) if raw else None
    rgb, alpha, depth = rasterize_gaussians(
        means, quats, scales, opac, colors, viewmats, Ks, 16, 12, near_plane=0.5, backgrounds=bg, covars=covars, tile_size=8
    )
    assert rgb.shape == (2, 12, 16, 3) and alpha.shape == (2, 12, 16, 1) and depth.shape == (2, 12, 16, 1)
    for cam in range(2):
        ref_rgb, ref_alpha, ref_depth = naive_render(
            means, quats, scales, opac, colors, viewmats[cam], Ks[cam], 16, 12, bg[cam], near=0.5, normalize=not raw
        )
        np.testing.assert_allclose(rgb[cam].numpy(), ref_rgb, atol=1e-9)
        np.testing.assert_allclose(alpha[cam, ..., 0].numpy(), ref_alpha, atol=1e-9)
        np.testing.assert_allclose(depth[cam, ..., 0].numpy(), ref_depth, atol=1e-9)
    # the scene really exercises the stop rule and the alpha clamp: without either, camera 0 differs
    args = (means, quats, scales, opac, colors, viewmats[0], Ks[0], 16, 12, bg[0])
    for rule in ({"clamp": 1.0}, {"stop": 0.0}):
        other = naive_render(*args, near=0.5, normalize=not raw, **rule)[0]
        assert np.abs(other - rgb[0].numpy()).max() > 1e-4, rule


def test_raw_quaternions_change_the_image() -> None:
    means, quats, scales, opac, colors = tiny_scene(raw_scale=0.3)
    viewmats, Ks = tiny_cameras()
    normal = rasterize_gaussians(means, quats, scales, opac, colors, viewmats, Ks, 16, 16)[1]
    raw = rasterize_gaussians(
        means, None, None, opac, colors, viewmats, Ks, 16, 16, covars=quat_scale_to_covariance(quats, scales, normalize=False)
    )[1]
    assert (normal - raw).abs().max() > 0.05


def test_float32_and_tile_size_do_not_change_the_result() -> None:
    means, quats, scales, opac, colors = tiny_scene()
    viewmats, Ks = tiny_cameras(W=40, H=24)
    ref = rasterize_gaussians(means, quats, scales, opac, colors, viewmats, Ks, 40, 24, tile_size=16)
    for tile, chunk in [(8, 2), (32, 3), (5, 1)]:
        out = rasterize_gaussians(
            *(x.float() for x in (means, quats, scales, opac, colors, viewmats, Ks)), 40, 24, tile_size=tile, chunk_size=chunk
        )
        for a, b in zip(out, ref):
            np.testing.assert_allclose(a.double().numpy(), b.numpy(), atol=2e-5)


def test_gradcheck_float64() -> None:
    means, quats, scales, opac, colors = tiny_scene()
    # keep away from the discontinuities (stop rule, clamp) so finite differences are valid
    opac = torch.tensor([0.8, 0.7, 0.6, 0.5, 0.6, 0.9, 0.7, 0.5], dtype=torch.float64)
    viewmats, Ks = tiny_cameras(W=8, H=8)
    Ks = Ks.clone()
    Ks[:, :2] *= 0.5
    bg = torch.full((2, 3), 0.5, dtype=torch.float64)

    def f(m, s, c, o):
        rgb, alpha, depth = rasterize_gaussians(m, quats, s, o, c, viewmats, Ks, 8, 8, near_plane=0.5, backgrounds=bg, tile_size=4)
        return rgb, alpha, depth

    inputs = tuple(x.clone().requires_grad_(True) for x in (means, scales, colors, opac))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_batch_dimension_equals_separate_calls() -> None:
    a = tiny_scene()
    b = tuple(x.clone() for x in tiny_scene())
    b[0][:, 0] += 0.1  # a different second object
    viewmats, Ks = tiny_cameras()
    both = rasterize_gaussians(
        *(torch.stack([x, y]) for x, y in zip(a, b)), torch.stack([viewmats, viewmats.flip(0)]), torch.stack([Ks, Ks.flip(0)]), 16, 16
    )
    first = rasterize_gaussians(*a, viewmats, Ks, 16, 16)
    second = rasterize_gaussians(*b, viewmats.flip(0), Ks.flip(0), 16, 16)
    for out, o1, o2 in zip(both, first, second):
        torch.testing.assert_close(out[0], o1)
        torch.testing.assert_close(out[1], o2)


def test_rotmat_is_a_rotation_only_when_normalised() -> None:
    q = torch.tensor([[0.3, 0.2, -0.4, 0.1]], dtype=torch.float64)
    R = quat_to_rotmat(q)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64)[None])
    assert abs(torch.linalg.det(quat_to_rotmat(q, normalize=False)).item() - 1) > 0.1


def test_alpha_clamp_is_a_parameter() -> None:
    """``alpha_max=0.99`` is the original 3DGS rasterizer's clamp (``min(0.99f, con_o.w *
    exp(power))`` in diff-gaussian-rasterization's cuda_rasterizer/forward.cu, also in the
    fork LGM and the official Ouroboros3D code use); 0.999 is gsplat's."""
    means, quats, scales, opac, colors = tiny_scene()
    viewmats, Ks = tiny_cameras(W=16, H=12)
    bg = torch.tensor([[0.2, 0.4, 0.9], [1.0, 1.0, 1.0]], dtype=torch.float64)
    rgb, alpha, depth = rasterize_gaussians(
        means, quats, scales, opac, colors, viewmats, Ks, 16, 12, near_plane=0.5, backgrounds=bg, alpha_max=0.99
    )
    for cam in range(2):
        ref_rgb, ref_alpha, ref_depth = naive_render(
            means, quats, scales, opac, colors, viewmats[cam], Ks[cam], 16, 12, bg[cam], near=0.5, clamp=0.99
        )
        np.testing.assert_allclose(rgb[cam].numpy(), ref_rgb, atol=1e-9)
        np.testing.assert_allclose(alpha[cam, ..., 0].numpy(), ref_alpha, atol=1e-9)
        np.testing.assert_allclose(depth[cam, ..., 0].numpy(), ref_depth, atol=1e-9)
    default = rasterize_gaussians(means, quats, scales, opac, colors, viewmats, Ks, 16, 12, near_plane=0.5, backgrounds=bg)[0]
    assert (default - rgb).abs().max() > 1e-4


def test_one_opaque_splat_by_hand() -> None:
    """One opaque Gaussian whose centre projects onto a pixel centre, 2 units in front of the
    camera: at that pixel alpha = min(alpha_max, 1·e^0), colour = alpha·c + (1 − alpha)·bg.

    The depth channel is the *accumulated* camera-space z, Σ_i T_i α_i z_i, not divided by
    the accumulated alpha: the quantity the 3DGS rasterizer fork used by LGM / the official
    Ouroboros3D code writes to its depth output (forward.cu: ``D += depths[id] * alpha * T``;
    reference/lgm.md §3.1 and reference/official-ouroboros3d.md §5), and what the official
    position map (ouroboros_core.maps.official_position_map) is computed from.
    GaussianCloud.render returns it as ``accumulated_depth`` and ``depth`` = accumulated / alpha.
    """
    viewmat = torch.tensor(look_at_w2c([0.0, 0.0, 2.0]), dtype=torch.float64)[None]
    K = torch.tensor([[[20.0, 0, 8.5], [0, 20.0, 8.5], [0, 0, 1]]], dtype=torch.float64)  # centre of pixel (8, 8)
    args = (torch.zeros(1, 3, dtype=torch.float64), torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64),
            torch.full((1, 3), 0.05, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
            torch.tensor([[0.2, 0.6, 1.0]], dtype=torch.float64), viewmat, K, 16, 16)
    bg = torch.tensor([[1.0, 0.0, 0.5]], dtype=torch.float64)
    for alpha_max in (0.99, 0.999):
        rgb, alpha, depth = rasterize_gaussians(*args, backgrounds=bg, alpha_max=alpha_max)
        assert alpha[0, 8, 8, 0].item() == pytest.approx(alpha_max, abs=1e-12)
        expected = [alpha_max * c + (1 - alpha_max) * b for c, b in zip((0.2, 0.6, 1.0), (1.0, 0.0, 0.5))]
        assert rgb[0, 8, 8].tolist() == pytest.approx(expected, abs=1e-12)
        assert depth[0, 8, 8, 0].item() == pytest.approx(alpha_max * 2.0, abs=1e-12)
