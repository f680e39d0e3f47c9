"""The paper's metric protocol (torchmetrics as the official system code calls it): PSNR of an
object from the MSE pooled over all its views, not the mean of per-view PSNRs."""

from __future__ import annotations

import math

import pytest
import torch

from ouroboros_core.evaluation import pooled_psnr
from ouroboros_core.metrics import psnr


def test_pooled_psnr_by_hand():
    # two views of 4x4 RGB pixels: view 0 is off by 0.1 everywhere (MSE 0.01, 20 dB), view 1 by
    # 0.2 (MSE 0.04, 13.98 dB). Pooled: MSE (0.01 + 0.04) / 2 = 0.025, PSNR 10 log10(1 / 0.025).
    target = torch.full((2, 3, 4, 4), 0.5)
    pred = target.clone()
    pred[0] += 0.1
    pred[1] -= 0.2
    assert pooled_psnr(pred, target) == pytest.approx(10 * math.log10(40.0), abs=1e-6)  # 16.0206 dB
    per_view = psnr(pred, target)
    assert per_view.tolist() == pytest.approx([20.0, 10 * math.log10(25.0)], abs=1e-4)
    # the mean of per-view PSNRs (16.99 dB) is a different, larger number
    assert float(per_view.mean()) - pooled_psnr(pred, target) == pytest.approx(0.9691, abs=1e-3)
    assert pooled_psnr(target, target) == math.inf
