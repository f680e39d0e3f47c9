"""The reconstruction loss of the joint trainer: colour (L1 or MSE) + LPIPS + optional alpha.

The official Ouroboros3D run uses L1 + LPIPS(AlexNet) at 1:1 and no alpha term; the original
LGM uses MSE + LPIPS(VGG) + an alpha MSE. Both are a :class:`LossConfig` away.
"""

from __future__ import annotations

import torch
from torch import nn

from .recipe import LossConfig


class ReconstructionLoss(nn.Module):
    """Compares renders of a reconstruction with the ground-truth views.

    Images ``(B, V, 3, H, W)`` in [0, 1]; alphas ``(B, V, 1, H, W)``. Every term is a mean over
    all views and pixels. LPIPS is built only when its weight is non-zero, so configurations
    without it never import the ``lpips`` package.
    """

    def __init__(self, config: LossConfig):
        super().__init__()
        self.config = config
        self.lpips: nn.Module | None = None
        if config.lpips_weight > 0:
            import lpips  # heavy optional import, only when the loss uses it

            self.lpips = lpips.LPIPS(net=config.lpips_net, pnet_rand=config.lpips_random_trunk, verbose=False).eval()
            self.lpips.requires_grad_(False)

    def train(self, mode: bool = True) -> "ReconstructionLoss":
        """LPIPS stays in eval mode (no dropout) whatever the trainer's mode."""
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()
        return self

    def forward(
        self,
        pred_rgb: torch.Tensor,
        target_rgb: torch.Tensor,
        pred_alpha: torch.Tensor | None = None,
        target_alpha: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The weighted total under ``"total"`` plus each unweighted term."""
        cfg = self.config
        pred_rgb, target_rgb = pred_rgb.float(), target_rgb.float()
        mean = torch.mean
        if cfg.balance_foreground:
            if target_alpha is None:
                raise ValueError("balance_foreground needs the ground-truth alpha")
            mean = balanced_mean(target_alpha.float())
        error = (pred_rgb - target_rgb).abs() if cfg.color == "l1" else (pred_rgb - target_rgb) ** 2
        color = mean(error)
        terms = {"color": color}
        total = cfg.color_weight * color
        if self.lpips is not None:
            flat_pred = pred_rgb.reshape(-1, *pred_rgb.shape[-3:])
            flat_target = target_rgb.reshape(-1, *target_rgb.shape[-3:])
            terms["lpips"] = self.lpips(flat_pred, flat_target, normalize=True).mean()
            total = total + cfg.lpips_weight * terms["lpips"]
        if cfg.alpha_weight > 0:
            if pred_alpha is None or target_alpha is None:
                raise ValueError("alpha_weight > 0 needs both the rendered and the ground-truth alpha")
            terms["alpha"] = mean((pred_alpha.float() - target_alpha.float()) ** 2)
            total = total + cfg.alpha_weight * terms["alpha"]
        terms["total"] = total
        return terms


def balanced_mean(target_alpha: torch.Tensor, threshold: float = 0.5):
    """A mean over ``(B, V, C, H, W)`` errors that weighs, per view, the object pixels
    (``target_alpha > threshold``) and the background pixels half each (a view without object
    pixels is all background)."""
    fg = (target_alpha > threshold).float()  # (B, V, 1, H, W)

    def mean(error: torch.Tensor) -> torch.Tensor:
        per_pixel = error.mean(2, keepdim=True)
        n_fg = fg.sum((-2, -1), keepdim=True)
        n_bg = (1 - fg).sum((-2, -1), keepdim=True)
        fg_mean = (per_pixel * fg).sum((-2, -1), keepdim=True) / n_fg.clamp_min(1)
        bg_mean = (per_pixel * (1 - fg)).sum((-2, -1), keepdim=True) / n_bg.clamp_min(1)
        both = (n_fg > 0) & (n_bg > 0)
        return torch.where(both, 0.5 * (fg_mean + bg_mean), fg_mean + bg_mean).mean()

    return mean
