"""Feedback maps against hand-computed cases (a sphere at the origin, official cameras)."""

import numpy as np
import pytest
import torch

from ouroboros_core.cameras import Cameras
from ouroboros_core.interfaces import RenderOutput
from ouroboros_core.maps import (
    canonical_coordinate_map,
    feedback_maps,
    official_position_map,
    zero_maps,
)
from ouroboros_core.recipe import MapsConfig

RADIUS = 0.4


def sphere_depth(cams: Cameras, H: int, W: int):
    """Independent numpy ray casting of a sphere: z-depth, hit mask and surface points."""
    B, V = cams.c2w.shape[:2]
    depth = np.zeros((B, V, 1, H, W))
    points = np.zeros((B, V, 3, H, W))
    hit = np.zeros((B, V, 1, H, W), dtype=bool)
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    for b in range(B):
        for v in range(V):
            c2w = cams.c2w[b, v].double().numpy()
            K = cams.intrinsics[b, v].double().numpy()
            d_cam = np.stack(
                [((jj + 0.5) / W - K[0, 2]) / K[0, 0], ((ii + 0.5) / H - K[1, 2]) / K[1, 1], np.ones((H, W))], -1
            )
            d = d_cam @ c2w[:3, :3].T  # camera z = 1, so the ray parameter is the z-depth
            o = c2w[:3, 3]
            a = (d * d).sum(-1)
            bq = 2 * (d @ o)
            c = o @ o - RADIUS**2
            disc = bq * bq - 4 * a * c
            ok = disc > 0
            t = np.where(ok, (-bq - np.sqrt(np.maximum(disc, 0))) / (2 * a), 0.0)
            depth[b, v, 0] = t
            hit[b, v, 0] = ok
            points[b, v] = np.where(ok[None], (o + t[..., None] * d).transpose(2, 0, 1), 0.0)
    return depth, hit, points


def test_canonical_map_of_sphere_equals_surface_coordinates():
    cams = Cameras.official(dtype=torch.float64)
    H = W = 24
    depth, hit, points = sphere_depth(cams, H, W)
    assert hit.sum() > 100  # the sphere covers a good part of every view
    alpha = torch.from_numpy(hit.astype(np.float64))
    ccm = canonical_coordinate_map(torch.from_numpy(depth), alpha, cams, bound=1.0, background=0.25)
    expected = np.where(hit, (points + 1) / 2, 0.25)
    np.testing.assert_allclose(ccm.numpy(), expected, atol=1e-9)
    # on the sphere every point has norm RADIUS: decode and check
    decoded = ccm.numpy() * 2 - 1
    norms = np.linalg.norm(decoded, axis=2)[hit[:, :, 0]]
    np.testing.assert_allclose(norms, RADIUS, atol=1e-9)


def test_canonical_map_is_view_independent():
    """The same surface point has the same canonical value in two views that see it."""
    cams = Cameras.orbit([0.0, 30.0], 0.0, radius=1.7417, dtype=torch.float64)
    H = W = 64
    depth, hit, points = sphere_depth(cams, H, W)
    ccm = canonical_coordinate_map(torch.from_numpy(depth), torch.from_numpy(hit * 1.0), cams)
    # the sphere point on the bisector (azimuth 15 degrees) is seen in both views
    target = RADIUS * np.array([np.sin(np.radians(15)), 0, np.cos(np.radians(15))])
    vals = []
    for v in range(2):
        dist = np.linalg.norm(points[0, v].reshape(3, -1).T - target, axis=1)
        dist[~hit[0, v, 0].reshape(-1)] = np.inf
        k = dist.argmin()
        assert dist[k] < 0.02
        vals.append(ccm[0, v].reshape(3, -1)[:, k].numpy())
    np.testing.assert_allclose(vals[0], vals[1], atol=0.01)


def numpy_official_position_map(acc_depth, c2w, K):
    """§5 of the official-code reference, evaluated literally in numpy."""
    B, V, _, H, W = acc_depth.shape
    out = np.zeros((B, V, 3, H, W))
    u, v = np.meshgrid(np.arange(W), np.arange(H), indexing="xy")
    for b in range(B):
        for f in range(V):
            D = acc_depth[b, f, 0]
            mask = D > 0
            x = (u - K[b, f, 0, 2]) * D / K[b, f, 0, 0]
            y = (v - K[b, f, 1, 2]) * D / K[b, f, 1, 1]
            p = np.stack([x, y, D, np.ones_like(D)], -1)  # (H, W, 4)
            world = (p @ c2w[b, f].T)[..., :3] * mask[..., None]
            out[b, f] = np.clip(world * 0.001 + 0.5, 0, 1).transpose(2, 0, 1)
    return out


def test_official_position_map_matches_reference_formula():
    cams = Cameras.official(dtype=torch.float64)
    H = W = 32
    depth, hit, _ = sphere_depth(cams, H, W)
    soft_alpha = hit * np.linspace(0.3, 1.0, W)[None, None, None, None, :]
    acc = depth * soft_alpha
    ours = official_position_map(torch.from_numpy(acc), cams)
    ref = numpy_official_position_map(acc, cams.c2w.numpy(), cams.intrinsics.numpy())
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12)
    assert np.all(ours.numpy()[np.broadcast_to(~hit, ours.shape)] == 0.5)


def test_official_position_map_ranges_at_512_view0():
    """The numeric check stated in the reference: view 0, sphere r=0.4, 512 px."""
    cams = Cameras.official(dtype=torch.float64).select_views([0])
    depth, hit, _ = sphere_depth(cams, 512, 512)
    pm = official_position_map(torch.from_numpy(depth * hit), cams).numpy()[0, 0]
    m = hit[0, 0, 0]
    assert pm[0][m].min() == pytest.approx(0.60, abs=0.01) and pm[0][m].max() == pytest.approx(1.0, abs=0.01)
    assert pm[1][m].max() == pytest.approx(0.40, abs=0.01)
    assert 0.50005 <= pm[2][m].min() and pm[2][m].max() <= 0.50045  # "0.5001-0.5004", rounded


def test_feedback_maps_dispatch_and_zero_maps():
    cams = Cameras.official(dtype=torch.float64)
    H = W = 16
    depth, hit, _ = sphere_depth(cams, H, W)
    alpha = torch.from_numpy(hit * 1.0)
    rgb = torch.rand(1, 8, 3, H, W, dtype=torch.float64)
    render = RenderOutput(rgb=rgb, alpha=alpha, depth=torch.from_numpy(depth))
    maps = feedback_maps(render, cams, ["rgb", "ccm", "alpha"], MapsConfig())
    assert maps["rgb"] is rgb
    assert maps["ccm"].shape == (1, 8, 3, H, W)
    assert torch.equal(maps["alpha"][:, :, 1:2], alpha)
    official = feedback_maps(render, cams, ["ccm"], MapsConfig(ccm="official"))["ccm"]
    # without accumulated depth it is rebuilt as depth * alpha
    torch.testing.assert_close(official, official_position_map(render.depth * alpha, cams))
    with pytest.raises(ValueError, match="unknown feedback map kind"):
        feedback_maps(render, cams, ["normals"], MapsConfig())
    z = zero_maps(["rgb", "ccm"], (2, 8, 3, 4, 4))
    assert set(z) == {"rgb", "ccm"} and all(t.abs().sum() == 0 for t in z.values())


def test_soft_alpha_up_to_the_threshold_is_background_through_the_dispatch():
    """Pixels on the surface whose alpha lies in (0, alpha_threshold] get ccm_background; the
    recipe's bound, background and threshold all reach the canonical map via feedback_maps."""
    cams = Cameras.official(dtype=torch.float64)
    H = W = 16
    depth, hit, points = sphere_depth(cams, H, W)
    levels = np.array([0.05, 0.2, 0.375, 0.4, 0.45, 0.8, 1.0])  # threshold 0.375 (exact in binary)
    alpha = hit * levels[np.arange(H * W).reshape(H, W) % len(levels)]
    config = MapsConfig(bound=0.6, ccm_background=0.2, alpha_threshold=0.375)
    render = RenderOutput(rgb=torch.zeros(1, 8, 3, H, W, dtype=torch.float64), alpha=torch.from_numpy(alpha), depth=torch.from_numpy(depth))
    ccm = feedback_maps(render, cams, ["ccm"], config)["ccm"].numpy()
    soft = (alpha > 0) & (alpha <= 0.375)
    assert soft.sum() > 50 and (alpha > 0.375).sum() > 50 and ((alpha > 0.375) & (alpha < 0.5)).sum() > 20
    soft3 = np.broadcast_to(soft, ccm.shape)
    assert np.all(ccm[soft3] == 0.2), (
        f"canonical map: {int((ccm[soft3] != 0.2).sum())} channel values of surface pixels with alpha in (0, alpha_threshold] "
        "are not ccm_background (alpha_threshold ignored?)"
    )
    fg = np.broadcast_to(alpha > 0.375, ccm.shape)
    expected = np.clip((points / 0.6 + 1) / 2, 0, 1)  # bound 0.6
    np.testing.assert_allclose(ccm[fg], expected[fg], atol=1e-9, err_msg="foreground must be world xyz mapped from [-bound, bound]")
    assert np.all(ccm[np.broadcast_to(alpha == 0, ccm.shape)] == 0.2)


def test_maps_of_a_rendered_sphere_equal_hand_computed_values():
    """A sphere of radius 0.4 and colour c at the origin, rendered by the toy sphere
    representation into the official orbit: at each image centre (odd size, so a pixel centre
    lies on the optical axis) the surface point facing the camera is R (sin az, 0, cos az);
    the corners miss the sphere; along the centre row the sphere covers the pixels within the
    silhouette half-angle asin(R / d). All expected values are worked out by hand below."""
    from toys import SphereCloud

    cams = Cameras.official()
    H = W = 33
    c = torch.tensor([[0.9, 0.3, 0.1]])
    render = SphereCloud(c, torch.tensor([RADIUS]), softness=0.002).render(cams, H, W, background=0.7)
    maps = feedback_maps(render, cams, ["rgb", "ccm", "alpha"], MapsConfig(bound=0.5, ccm_background=0.1, rgb_background=0.7))
    rgb, ccm = maps["rgb"][0], maps["ccm"][0]
    d = 1.7416968
    for v, az in [(0, 0.0), (1, 45.0), (2, 90.0), (4, 180.0), (6, 270.0)]:
        s, co = np.sin(np.radians(az)), np.cos(np.radians(az))
        # the surface point facing the camera, (p / bound + 1) / 2 with bound 0.5
        np.testing.assert_allclose(ccm[v, :, 16, 16].numpy(), [(0.4 * s / 0.5 + 1) / 2, 0.5, (0.4 * co / 0.5 + 1) / 2], atol=1e-5)
        np.testing.assert_allclose(rgb[v, :, 16, 16].numpy(), [0.9, 0.3, 0.1], atol=1e-5)
        assert render.depth[0, v, 0, 16, 16].item() == pytest.approx(d - 0.4, abs=1e-5)  # camera z of that point
        for i, j in [(0, 0), (0, 32), (32, 0), (32, 32)]:  # corners: background
            np.testing.assert_allclose(rgb[v, :, i, j].numpy(), 0.7, atol=1e-6)
            np.testing.assert_allclose(ccm[v, :, i, j].numpy(), 0.1, atol=0)
    # silhouette along the centre row of view 0: |x_cam| / z < tan(asin(R / d)) at the pixel centre
    fx = 0.5 / np.tan(np.radians(39.59775) / 2)
    offsets = np.abs((np.arange(W) + 0.5) / W - 0.5) / fx
    inside = offsets < np.tan(np.arcsin(RADIUS / d))
    assert 5 < inside.sum() < W
    covered = (render.alpha[0, 0, 0, 16] > 0.5).numpy()
    np.testing.assert_array_equal(covered, inside)
    # each covered pixel's canonical value decodes to a point on the sphere (|p| = R)
    points = ccm[0, :, 16].numpy().T[inside] * 2 * 0.5 - 0.5
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), RADIUS, atol=1e-4)
