"""gsplat (CUDA) and the pure-torch rasterizer render the same image for the same cloud.

Needs a CUDA device and the ``cuda`` extra (gsplat compiles its kernels at the first call, which
takes minutes); skipped elsewhere. Run it on a GPU machine with ``pytest -m cuda``.
"""

from __future__ import annotations

import pytest
import torch

from ouroboros_core.cameras import Cameras
from ouroboros_core.gaussians import GaussianCloud

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (gsplat backend)"),
]


def small_scene(raw: bool) -> GaussianCloud:
    """Two objects of 300 Gaussians in a 0.8-wide box, random rotations, sizes, opacities, colours."""
    g = torch.Generator().manual_seed(3)
    B, n = 2, 300
    quats = torch.nn.functional.normalize(torch.randn(B, n, 4, generator=g), dim=-1)
    if raw:  # un-normalised quaternions (LGM's official rotation mode): both build covariances
        quats = quats * (0.2 + torch.rand(B, n, 1, generator=g))
    return GaussianCloud(
        means=(torch.rand(B, n, 3, generator=g) - 0.5) * 0.8,
        quats=quats,
        scales=torch.rand(B, n, 3, generator=g) * 0.06 + 0.01,
        opacities=0.1 + 0.85 * torch.rand(B, n, generator=g),
        colors=torch.rand(B, n, 3, generator=g),
        raw_quaternions=raw,
    ).to(device="cuda")


@pytest.mark.parametrize("raw", [False, True])
def test_gsplat_and_torch_backends_render_the_same_image(raw):
    pytest.importorskip("gsplat", reason="gsplat is not installed (pip install 'ouroboros3d[cuda]')")
    cloud = small_scene(raw)
    cams = Cameras.orbit([0.0, 90.0, 200.0], [0.0, 20.0, -10.0], radius=1.74, fov_deg=40.0, device="cuda")
    H, W = 48, 64  # not square: catches a swapped width/height
    ref = cloud.render(cams, H, W, background=torch.tensor([1.0, 0.5, 0.0]), backend="torch")
    out = cloud.render(cams, H, W, background=torch.tensor([1.0, 0.5, 0.0]), backend="gsplat")
    assert out.rgb.shape == ref.rgb.shape == (2, 3, 3, H, W)
    assert 0.2 < ref.alpha.mean() < 0.9  # the scene covers part of every image
    for name in ("rgb", "alpha", "accumulated_depth"):
        diff = (getattr(out, name) - getattr(ref, name)).abs()
        assert diff.max() < 5e-3 and diff.mean() < 1e-4, f"{name}: max |gsplat - torch| {diff.max():.2e}, mean {diff.mean():.2e}"
    solid = ref.alpha > 0.5
    rel = ((out.depth - ref.depth).abs() / ref.depth.clamp_min(1e-6))[solid]
    assert rel.max() < 1e-3, f"expected depth: max relative difference {rel.max():.2e}"
