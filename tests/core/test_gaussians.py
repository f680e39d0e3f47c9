"""GaussianCloud: rendering through both backends, raw quaternions, batching, pruning."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch

from ouroboros_core.cameras import OFFICIAL_RADIUS, Cameras
from ouroboros_core.gaussians import GaussianCloud
from ouroboros_core.render_gsplat import gsplat_arguments
from ouroboros_core.render_torch import rasterize_gaussians


def sphere_shell(n: int = 1500, radius: float = 0.4, scale: float = 0.03, batch: int = 1) -> GaussianCloud:
    """Gaussians evenly spread on a sphere (Fibonacci lattice), coloured by position."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    p = torch.stack([torch.cos(theta) * torch.sin(phi), torch.cos(phi), torch.sin(theta) * torch.sin(phi)], -1).float() * radius
    ones = torch.ones(batch, n)
    return GaussianCloud(
        means=p.expand(batch, n, 3).clone(),
        quats=torch.tensor([1.0, 0, 0, 0]).expand(batch, n, 4).clone(),
        scales=torch.full((batch, n, 3), scale),
        opacities=0.9 * ones,
        colors=(p / (2 * radius) + 0.5).expand(batch, n, 3).clone(),
    )


def random_cloud(batch: int, n: int = 200, seed: int = 0, quat_scale: float = 1.0) -> GaussianCloud:
    g = torch.Generator().manual_seed(seed)
    return GaussianCloud(
        means=(torch.rand(batch, n, 3, generator=g) - 0.5) * 0.8,
        quats=torch.nn.functional.normalize(torch.randn(batch, n, 4, generator=g), dim=-1) * quat_scale,
        scales=torch.rand(batch, n, 3, generator=g) * 0.08 + 0.01,
        opacities=torch.rand(batch, n, generator=g),
        colors=torch.rand(batch, n, 3, generator=g),
    )


def test_official_orbit_render_of_a_sphere_is_plausible() -> None:
    size = 64
    out = sphere_shell().render(Cameras.official(), size, size, background=1.0)
    assert out.rgb.shape == (1, 8, 3, size, size) and out.alpha.shape == (1, 8, 1, size, size)
    assert out.depth.shape == out.accumulated_depth.shape == (1, 8, 1, size, size)
    c = size // 2
    assert (out.alpha[0, :, 0, c, c] > 0.99).all()
    corners = out.alpha[0, :, 0][:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.max() < 1e-6
    torch.testing.assert_close(out.rgb[0, :, :, 0, 0], torch.ones(8, 3))
    # the front of the shell is 0.4 closer than the centre; its Gaussians are 0.03 thick
    torch.testing.assert_close(out.depth[0, :, 0, c, c], torch.full((8,), OFFICIAL_RADIUS - 0.4), atol=0.03, rtol=0)
    # background depth is 0; the accumulated depth is alpha times the expected depth
    assert out.depth[0, :, 0, 0, 0].abs().max() == 0
    torch.testing.assert_close(out.accumulated_depth, out.alpha * out.depth, atol=1e-5, rtol=1e-5)
    # silhouette: a sphere of radius r at distance d covers a disc of radius f r / sqrt(d^2 - r^2)
    # pixels; the splats (sigma 0.03) widen it by less than 3 sigma
    f = size / (2 * math.tan(math.radians(39.59775) / 2))
    disc = lambda r: math.pi * (f * r / math.sqrt(OFFICIAL_RADIUS**2 - r**2)) ** 2  # noqa: E731
    covered = (out.alpha[0, :, 0] > 0.5).sum((-1, -2)).float()
    assert ((covered > disc(0.4)) & (covered < disc(0.4 + 3 * 0.03))).all(), covered


def test_batch_of_two_equals_two_single_renders() -> None:
    a, b = random_cloud(1, seed=1), random_cloud(1, seed=2)
    both = GaussianCloud(*(torch.cat([getattr(a, k), getattr(b, k)]) for k in ("means", "quats", "scales", "opacities", "colors")))
    cams = Cameras.cat([Cameras.official().select_views([0, 3]), Cameras.orbit([90.0, 180.0], 0.0, 1.5, 49.1)])
    out = both.render(cams, 24, 32, background=torch.tensor([0.2, 0.5, 0.8]))
    for i, single in enumerate((a, b)):
        ref = single.render(Cameras(cams.c2w[i : i + 1], cams.intrinsics[i : i + 1]), 24, 32, background=torch.tensor([0.2, 0.5, 0.8]))
        for name in ("rgb", "alpha", "depth", "accumulated_depth"):
            torch.testing.assert_close(getattr(out, name)[i], getattr(ref, name)[0])
    # a batch-1 camera set is shared by every object
    shared = both.render(Cameras.official().select_views([0]), 16, 16)
    torch.testing.assert_close(shared.rgb[1], b.render(Cameras.official().select_views([0]), 16, 16).rgb[0])


def test_raw_quaternions_reproduce_the_unnormalised_rasterizer() -> None:
    # quaternions of norm ~0.004 (LGM's pre-fix normalisation over 65k Gaussians): the raw
    # polynomial is then nearly the identity rotation
    cloud = random_cloud(1, quat_scale=0.004)
    cams = Cameras.official().select_views([0, 2])
    raw = GaussianCloud(cloud.means, cloud.quats, cloud.scales, cloud.opacities, cloud.colors, raw_quaternions=True)
    identity = GaussianCloud(cloud.means, torch.tensor([1.0, 0, 0, 0]).expand_as(cloud.quats), cloud.scales, cloud.opacities, cloud.colors)
    out_raw, out_normalised = raw.render(cams, 32, 32), cloud.render(cams, 32, 32)
    torch.testing.assert_close(out_raw.rgb, identity.render(cams, 32, 32).rgb, atol=1e-3, rtol=0)
    assert (out_raw.rgb - out_normalised.rgb).abs().max() > 0.05


def test_near_plane_culls_close_gaussians() -> None:
    cloud = random_cloud(1)
    cams = Cameras.official().select_views([0])
    # with a near plane beyond the whole object nothing is drawn
    assert cloud.render(cams, 16, 16, near_plane=OFFICIAL_RADIUS + 1).alpha.max() == 0
    far_cull = GaussianCloud(cloud.means, cloud.quats, cloud.scales, cloud.opacities, cloud.colors, near_plane=OFFICIAL_RADIUS + 1)
    assert far_cull.render(cams, 16, 16).alpha.max() == 0
    assert cloud.render(cams, 16, 16).alpha.max() > 0.5


def test_prune_keeps_per_element_and_renders_the_same() -> None:
    cloud = random_cloud(2, n=100)
    pruned = cloud.prune(0.3)
    for i in range(2):
        kept = cloud.opacities[i][cloud.opacities[i] >= 0.3]
        assert torch.equal(pruned.opacities[i][: len(kept)], kept)
        assert (pruned.opacities[i][len(kept) :] == 0).all()
    assert pruned.num_gaussians == int((cloud.opacities >= 0.3).sum(1).max())
    # removing Gaussians with opacity below 0.3 changes the image only where they were
    cams = Cameras.official().select_views([1])
    manual = GaussianCloud(cloud.means, cloud.quats, cloud.scales, torch.where(cloud.opacities >= 0.3, cloud.opacities, 0), cloud.colors)
    torch.testing.assert_close(pruned.render(cams, 16, 16).rgb, manual.render(cams, 16, 16).rgb)


def test_to_detach_select() -> None:
    cloud = random_cloud(2)
    cloud.means.requires_grad_(True)
    assert not cloud.detach().means.requires_grad and cloud.detach().means.data_ptr() == cloud.means.data_ptr()
    assert cloud.to(dtype=torch.float64).scales.dtype == torch.float64
    half = cloud.to(dtype=torch.bfloat16).render(Cameras.official().select_views([0]), 8, 8)
    assert half.rgb.dtype == torch.float32
    last = cloud.select(-1)
    assert last.batch_size == 1 and torch.equal(last.colors[0], cloud.colors[1])
    with pytest.raises(ValueError, match="quats"):
        GaussianCloud(cloud.means, cloud.quats[:, :5], cloud.scales, cloud.opacities, cloud.colors)


def test_render_is_differentiable() -> None:
    cloud = random_cloud(1)
    for name in ("means", "scales", "opacities", "colors", "quats"):
        getattr(cloud, name).requires_grad_(True)
    out = cloud.render(Cameras.official().select_views([0, 4]), 16, 16)
    (out.rgb.sum() + out.depth.sum()).backward()
    for name in ("means", "scales", "opacities", "colors", "quats"):
        grad = getattr(cloud, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


@pytest.mark.parametrize("raw", [False, True])
def test_render_under_a_callers_bf16_autocast_stays_float32(raw: bool) -> None:
    # a trainer with mixed_precision=bf16 renders its reconstructions inside torch.autocast:
    # the rasterizer's matmuls must not drop to bf16 (conics are too coarse there, and
    # index_add refused the mixed dtypes before rendering opted out of autocast)
    base = random_cloud(1)
    cloud = GaussianCloud(base.means, base.quats, base.scales, base.opacities, base.colors, raw_quaternions=raw)
    cams = Cameras.official().select_views([0, 3])
    reference = cloud.render(cams, 16, 16)
    cloud.colors.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cloud.render(cams, 16, 16)
    assert out.rgb.dtype == torch.float32
    torch.testing.assert_close(out.rgb, reference.rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.alpha, reference.alpha, atol=1e-6, rtol=0)
    out.rgb.sum().backward()
    assert torch.isfinite(cloud.colors.grad).all() and cloud.colors.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- gsplat adapter
def test_gsplat_arguments_use_covars_instead_of_quaternions() -> None:
    cloud = random_cloud(1)
    cams = Cameras.official()
    args = (cloud.means, cloud.quats, cloud.scales, cloud.opacities, cloud.colors, cams.w2c, cams.pixel_intrinsics(8, 8), 8, 8)
    plain = gsplat_arguments(*args, near_plane=0.2)
    assert plain["quats"] is cloud.quats and plain["covars"] is None
    assert plain["render_mode"] == "RGB+D" and plain["rasterize_mode"] == "classic" and plain["eps2d"] == 0.3
    assert plain["near_plane"] == 0.2 and plain["sh_degree"] is None
    raw = gsplat_arguments(*args, covars=cloud.covariances())
    assert raw["quats"] is None and raw["scales"] is None and raw["covars"].shape == (1, 200, 3, 3)


@pytest.fixture
def fake_gsplat(monkeypatch):
    """A stand-in ``gsplat`` module: checks the arguments the way gsplat.rasterization does
    and answers in gsplat's layout (depth appended as the last channel in "RGB+D" mode)."""
    calls = []

    def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, *, near_plane, far_plane,
                      eps2d, backgrounds, covars, sh_degree, packed, rasterize_mode, render_mode):
        batch, N, C = means.shape[:-2], means.shape[-2], viewmats.shape[-3]
        assert opacities.shape == batch + (N,) and viewmats.shape == batch + (C, 4, 4) and Ks.shape == batch + (C, 3, 3)
        assert colors.shape == batch + (N, 3) and backgrounds.shape == batch + (C, 3)
        assert (covars is None) == (quats is not None)
        assert render_mode == "RGB+D"
        calls.append({"covars": covars is not None, "near_plane": near_plane})
        rgb, alpha, depth = rasterize_gaussians(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane, eps2d, backgrounds, covars
        )
        return torch.cat([rgb, depth], -1), alpha, {}

    monkeypatch.setitem(sys.modules, "gsplat", types.SimpleNamespace(rasterization=rasterization))
    return calls


@pytest.mark.parametrize("raw", [False, True])
def test_gsplat_backend_layout_matches_torch_backend(fake_gsplat, raw: bool) -> None:
    cloud = random_cloud(2, quat_scale=0.5 if raw else 1.0)
    cloud = GaussianCloud(cloud.means, cloud.quats, cloud.scales, cloud.opacities, cloud.colors, raw_quaternions=raw, near_plane=0.2)
    cams = Cameras.official(batch_size=2).select_views([0, 1, 5])
    bg = torch.rand(2, 3, 3)
    via_gsplat = cloud.render(cams, 20, 28, background=bg, backend="gsplat")
    via_torch = cloud.render(cams, 20, 28, background=bg, backend="torch")
    assert fake_gsplat == [{"covars": raw, "near_plane": 0.2}]
    for name in ("rgb", "alpha", "depth", "accumulated_depth"):
        torch.testing.assert_close(getattr(via_gsplat, name), getattr(via_torch, name))


def test_auto_backend_is_torch_on_cpu(fake_gsplat) -> None:
    random_cloud(1).render(Cameras.official().select_views([0]), 8, 8)
    assert fake_gsplat == []
    with pytest.raises(ValueError, match="unknown backend"):
        random_cloud(1).render(Cameras.official(), 8, 8, backend="cuda")


def test_alpha_max_travels_with_the_cloud_and_the_torch_backend_honours_it(fake_gsplat) -> None:
    cloud = random_cloud(1, n=60, seed=3)
    cloud = GaussianCloud(cloud.means, cloud.quats, cloud.scales, torch.ones_like(cloud.opacities), cloud.colors, alpha_max=0.99)
    assert cloud.to(dtype=torch.float64).alpha_max == 0.99 and cloud.prune(0.5).alpha_max == 0.99
    cams = Cameras.official().select_views([0, 3])
    out = cloud.render(cams, 24, 24, backend="torch")
    rgb, alpha, _ = rasterize_gaussians(
        cloud.means, cloud.quats, cloud.scales, cloud.opacities, cloud.colors, cams.w2c, cams.pixel_intrinsics(24, 24),
        24, 24, backgrounds=torch.ones(1, 2, 3), alpha_max=0.99,
    )
    torch.testing.assert_close(out.rgb, rgb.permute(0, 1, 4, 2, 3))
    gsplat_default = GaussianCloud(cloud.means, cloud.quats, cloud.scales, cloud.opacities, cloud.colors)
    assert gsplat_default.alpha_max == 0.999
    assert (gsplat_default.render(cams, 24, 24, backend="torch").rgb - out.rgb).abs().max() > 1e-4
    # gsplat has its clamp compiled in: asking it for another one warns
    with pytest.warns(UserWarning, match="gsplat clamps each splat's alpha at 0.999"):
        cloud.render(cams, 24, 24, backend="gsplat")
