"""Metrics and the reconstruction loss against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ouroboros_core.losses import ReconstructionLoss
from ouroboros_core.metrics import lpips, psnr, ssim
from ouroboros_core.recipe import LossConfig


def test_psnr_known_value():
    target = torch.zeros(2, 3, 8, 8)
    pred = torch.full_like(target, 0.1)  # MSE = 0.01 -> 20 dB
    pred[1] = 0.01  # MSE = 1e-4 -> 40 dB
    assert torch.allclose(psnr(pred, target), torch.tensor([20.0, 40.0]))
    assert psnr(pred * 255, target, data_range=255.0)[0].item() == pytest.approx(20.0, abs=1e-4)


def numpy_ssim(x: np.ndarray, y: np.ndarray, L: float = 1.0) -> float:
    """Brute-force SSIM: explicit 11x11 Gaussian-weighted windows at every valid position."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w2 = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                a, b = x[c, i : i + 11, j : j + 11], y[c, i : i + 11, j : j + 11]
                ma, mb = (w2 * a).sum(), (w2 * b).sum()
                va, vb = (w2 * (a - ma) ** 2).sum(), (w2 * (b - mb) ** 2).sum()
                cov = (w2 * (a - ma) * (b - mb)).sum()
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_against_bruteforce_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 18, generator=g)
    y = (x + 0.2 * torch.randn(2, 3, 16, 18, generator=g)).clamp(0, 1)
    ours = ssim(x, y)
    assert ours.shape == (2,)
    for k in range(2):
        assert ours[k].item() == pytest.approx(numpy_ssim(x[k].numpy().astype(np.float64), y[k].numpy().astype(np.float64)), abs=1e-6)


def test_ssim_identity_symmetry_and_shapes():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 4, 3, 12, 12, generator=g)
    y = torch.rand(2, 4, 3, 12, 12, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(2, 4))
    assert torch.allclose(ssim(x, y), ssim(y, x))
    assert (ssim(x, y) < 0.5).all()  # independent noise images are dissimilar
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(x[..., :8, :8], y[..., :8, :8])


def test_lpips_random_trunk_offline():
    pytest.importorskip("lpips")
    pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 3, 64, 64, generator=g)
    y = torch.rand(2, 3, 3, 64, 64, generator=g)
    d_same = lpips(x, x, random_trunk=True)
    d_diff = lpips(x, y, random_trunk=True)
    assert d_same.shape == (2, 3)
    assert torch.allclose(d_same, torch.zeros(2, 3), atol=1e-6)
    assert (d_diff > 1e-4).all()


def test_reconstruction_loss_terms_match_direct_computation():
    g = torch.Generator().manual_seed(3)
    pred, target = torch.rand(2, 4, 3, 8, 8, generator=g), torch.rand(2, 4, 3, 8, 8, generator=g)
    pa, ta = torch.rand(2, 4, 1, 8, 8, generator=g), torch.rand(2, 4, 1, 8, 8, generator=g)
    l1 = ReconstructionLoss(LossConfig(color="l1", color_weight=2.0, lpips_weight=0.0, alpha_weight=0.5))
    out = l1(pred, target, pa, ta)
    assert l1.lpips is None and "lpips" not in out
    assert out["color"].item() == pytest.approx((pred - target).abs().mean().item(), rel=1e-6)
    assert out["alpha"].item() == pytest.approx(((pa - ta) ** 2).mean().item(), rel=1e-6)
    assert out["total"].item() == pytest.approx(2 * out["color"].item() + 0.5 * out["alpha"].item(), rel=1e-6)
    mse = ReconstructionLoss(LossConfig(color="mse", lpips_weight=0.0))
    assert mse(pred, target)["total"].item() == pytest.approx(((pred - target) ** 2).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        l1(pred, target)


def test_balanced_loss_weighs_object_and_background_pixels_half_each():
    # one view: a 2x2 object in a 4x4 image; another: no object at all
    target = torch.ones(1, 2, 3, 4, 4)
    ta = torch.zeros(1, 2, 1, 4, 4)
    ta[0, 0, :, 1:3, 1:3] = 1.0
    pred = torch.ones(1, 2, 3, 4, 4)
    pred[0, 0, :, 1:3, 1:3] = 0.0  # the object pixels are wrong by 1 (rendering "nothing")
    pred[0, 1, 0, 0, 0] = 0.4  # one background pixel of the empty view is off by 0.6 in red
    pa = torch.zeros(1, 2, 1, 4, 4)
    loss = ReconstructionLoss(LossConfig(color="l1", lpips_weight=0.0, alpha_weight=1.0, balance_foreground=True))
    out = loss(pred, target, pa, ta)
    # view 0: 1/2 (object mean 1 + background mean 0); view 1: all background, 0.6 / 3 / 16
    assert out["color"].item() == pytest.approx((0.5 * 1.0 + 0.6 / 3 / 16) / 2, rel=1e-6)
    assert out["alpha"].item() == pytest.approx((0.5 * 1.0 + 0.0) / 2, rel=1e-6)
    plain = ReconstructionLoss(LossConfig(color="l1", lpips_weight=0.0, alpha_weight=1.0))(pred, target, pa, ta)
    assert plain["color"].item() == pytest.approx((4 * 3 + 0.6) / (2 * 3 * 16), rel=1e-6)  # 8x smaller for the object
    with pytest.raises(ValueError, match="ground-truth alpha"):
        ReconstructionLoss(LossConfig(lpips_weight=0.0, balance_foreground=True))(pred, target)


def test_reconstruction_loss_lpips_term_equals_metric():
    pytest.importorskip("lpips")
    pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(4)
    pred, target = torch.rand(1, 2, 3, 64, 64, generator=g), torch.rand(1, 2, 3, 64, 64, generator=g)
    torch.manual_seed(0)  # the random trunk is drawn from the global RNG: same seed, same trunk
    loss = ReconstructionLoss(LossConfig(lpips_weight=0.7, lpips_random_trunk=True, color_weight=0.0))
    out = loss(pred, target)
    torch.manual_seed(0)
    from ouroboros_core.metrics import _lpips_model

    _lpips_model.cache_clear()
    expected = lpips(pred, target, random_trunk=True).mean()
    assert out["lpips"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["total"].item() == pytest.approx(0.7 * expected.item(), rel=1e-5)
    # gradients reach the prediction through LPIPS, none reach the frozen network
    pred.requires_grad_(True)
    loss(pred, target)["total"].backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.lpips.parameters())
    assert math.isfinite(out["total"].item())
