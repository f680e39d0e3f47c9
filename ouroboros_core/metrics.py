"""Image metrics for evaluation: PSNR, SSIM and LPIPS on images in [0, 1].

Every function takes images ``(..., C, H, W)`` (e.g. ``(B, V, 3, H, W)``) and returns one value
per image, shaped like the leading dimensions, so callers choose how to average.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, ``10 log10(range^2 / MSE)``."""
    mse = ((pred.float() - target.float()) ** 2).flatten(-3).mean(-1)
    return 10 * torch.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian window ``(size,)`` (the SSIM paper's 11-tap, sigma 1.5)."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return (w / w.sum()).to(dtype)


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004).

    Local statistics use a Gaussian window (11 taps, sigma 1.5) evaluated only where the window
    fits inside the image ("valid"), population (not sample) variances, constants
    ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``; the SSIM map is averaged over pixels and channels.
    """
    if pred.shape != target.shape:
        raise ValueError(f"ssim needs equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    lead = pred.shape[:-3]
    C, H, W = pred.shape[-3:]
    if H < window_size or W < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}x{window_size}, got {H}x{W}")
    x = pred.reshape(-1, C, H, W).double()
    y = target.reshape(-1, C, H, W).double()
    w = gaussian_window(window_size, sigma, torch.float64, x.device)
    kernel_h = w.view(1, 1, 1, -1).expand(C, 1, 1, window_size)
    kernel_v = w.view(1, 1, -1, 1).expand(C, 1, window_size, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable depthwise Gaussian, valid region
        return F.conv2d(F.conv2d(t, kernel_h, groups=C), kernel_v, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1).reshape(lead).to(pred.dtype if pred.is_floating_point() else torch.float32)


@functools.lru_cache(maxsize=4)
def _lpips_model(net: str, random_trunk: bool, device: str) -> torch.nn.Module:
    """The (frozen) LPIPS network, built once per (net, trunk, device).

    ``random_trunk`` skips the ImageNet backbone download (offline tests); the calibrated
    linear heads ship inside the ``lpips`` package either way.
    """
    try:
        import lpips
    except ImportError as err:  # optional dependency
        from .errors import UserError

        raise UserError("LPIPS needs the 'lpips' package", hint="pip install 'ouroboros3d[lpips]'") from err
    model = lpips.LPIPS(net=net, pnet_rand=random_trunk, verbose=False).to(device).eval()
    model.requires_grad_(False)
    return model


def lpips_model(net: str = "alex", random_trunk: bool = False, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A shared frozen LPIPS module (inputs in [-1, 1], or [0, 1] with ``normalize=True``)."""
    return _lpips_model(net, random_trunk, str(torch.device(device)))


def lpips(
    pred: torch.Tensor,
    target: torch.Tensor,
    net: str = "alex",
    random_trunk: bool = False,
) -> torch.Tensor:
    """LPIPS distance per image for images ``(..., 3, H, W)`` in [0, 1] (lower is closer)."""
    lead = pred.shape[:-3]
    model = lpips_model(net, random_trunk, pred.device)
    d = model(pred.reshape(-1, *pred.shape[-3:]).float(), target.reshape(-1, *target.shape[-3:]).float(), normalize=True)
    return d.reshape(lead)
