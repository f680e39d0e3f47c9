"""Small components implementing the contracts, for the sampler and trainer tests.

- :class:`ToyGenerator`: pixel space (latent = image). Its x0 prediction is the exact
  denoiser of a Gaussian data distribution N(mean, std^2) per pixel, plus ``c_out(sigma)``
  times (a learnable offset + a learnable gain times the feedback features): feedback is
  observable in the output, and the learnable part is preconditioned like a real EDM network
  (lambda(sigma) c_out^2 = 1, so no noise level dominates the loss).
- :class:`ToyReconstructor`: a coloured sphere at the origin. Its colour is a learnable affine
  function of the input views' mean colour (plus a sigma-dependent term), its radius is
  learnable; it renders analytically with a soft silhouette so gradients reach the radius.
- :class:`ToyEncoder`: average-pool to each slot's stride, then a 1x1 convolution (written as
  a per-pixel ``nn.Linear``: tiny ``conv2d`` calls are pathologically slow on some CPU builds).
  It records the maps it sees when ``record`` is on.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ouroboros_core.cameras import Cameras, camera_rays
from ouroboros_core.edm import preconditioning
from ouroboros_core.components import FeedbackEncoderConfig, FeedbackSlot, GeneratorConfig, ReconstructorConfig
from ouroboros_core.interfaces import (
    FeedbackEncoder,
    GenerationContext,
    MultiViewGenerator,
    Reconstructor,
    RenderOutput,
    Representation,
)

SLOTS = (FeedbackSlot("full", 3, 1), FeedbackSlot("half", 3, 2))


class ToyGeneratorConfig(GeneratorConfig):
    num_views: int = 4
    image_size: int = 16
    data_mean: float = 0.5
    data_std: float = 0.25
    with_slots: bool = True

    def feedback_slots(self) -> list[FeedbackSlot]:
        return list(SLOTS) if self.with_slots else []


class ToyGenerator(MultiViewGenerator):
    """Pixel-space generator with an analytic denoiser (see module docstring)."""

    def __init__(self, config: ToyGeneratorConfig | None = None):
        super().__init__()
        self.config = config or ToyGeneratorConfig()
        self.sigma_data = self.config.data_std
        self.offset = nn.Parameter(torch.zeros(()))
        self.feedback_gain = nn.Parameter(torch.full((), 0.1))
        self.denoise_calls: list[dict] = []

    def prepare(self, image: torch.Tensor, cameras: Cameras, **kwargs) -> GenerationContext:
        B = image.shape[0]
        V, S = self.config.num_views, self.config.image_size
        return GenerationContext(B, cameras, (B, V, 3, S, S), {"image": image})

    def denoise(self, x, sigma, context, feedback=None):
        self.denoise_calls.append({"sigma": sigma.detach().clone(), "feedback": feedback is not None})
        m, s = self.config.data_mean, self.config.data_std
        sig = sigma.to(x.dtype).reshape(-1, 1, 1, 1, 1)
        correction = self.offset
        if feedback is not None:
            full, half = feedback
            B, V = half.shape[:2]
            up = F.interpolate(half.flatten(0, 1), scale_factor=2, mode="nearest").unflatten(0, (B, V))
            correction = correction + self.feedback_gain * (full + up)
        c_out = preconditioning(sig, s, "edm").c_out
        return m + s**2 / (s**2 + sig**2) * (x - m) + c_out * correction

    def encode(self, images):
        return images.clone()

    def decode(self, latents):
        return latents.clone()


class SphereCloud(Representation):
    """One coloured sphere per batch element, centred at the origin."""

    def __init__(self, color: torch.Tensor, radius: torch.Tensor, softness: float = 0.02):
        self.color = color  # (B, 3)
        self.radius = radius  # (B,)
        self.softness = softness

    @property
    def batch_size(self) -> int:
        return self.color.shape[0]

    def render(self, cameras: Cameras, height: int, width: int, background=1.0) -> RenderOutput:
        o, d = camera_rays(cameras, height, width)  # (B, V, H, W, 3)
        r = self.radius.reshape(-1, 1, 1, 1)
        t_closest = -(o * d).sum(-1)  # ray parameter of the point closest to the centre
        dist = (o + t_closest[..., None] * d).norm(dim=-1)
        alpha = torch.sigmoid((r - dist) / self.softness)
        half_chord = torch.sqrt((r**2 - dist**2).clamp_min(0))
        t_hit = t_closest - half_chord
        z_axis = cameras.c2w[..., :3, 2][:, :, None, None, :]  # camera forward in world
        depth = t_hit * (d * z_axis).sum(-1)  # camera-space z of the hit
        depth = torch.where(alpha > 1e-3, depth, torch.zeros_like(depth))
        color = self.color[:, None, :, None, None]
        rgb = color * alpha[:, :, None] + background * (1 - alpha[:, :, None])
        alpha = alpha[:, :, None]
        return RenderOutput(rgb=rgb, alpha=alpha, depth=depth[:, :, None], accumulated_depth=depth[:, :, None] * alpha)

    def save(self, path: str | Path, index: int = 0) -> Path:
        path = Path(path)
        path.write_text(f"{self.color[index].tolist()} {float(self.radius[index])}\n")
        return path


class ToyReconstructorConfig(ReconstructorConfig):
    input_views: list[int] | None = [0, 2]


class ToyReconstructor(Reconstructor):
    """Predicts a sphere from the views (see module docstring); records every call."""

    def __init__(self, config: ToyReconstructorConfig | None = None):
        super().__init__()
        self.config = config or ToyReconstructorConfig()
        self.color_gain = nn.Parameter(torch.ones(3) * 0.5)
        self.color_bias = nn.Parameter(torch.full((3,), 0.2))
        self.sigma_weight = nn.Parameter(torch.zeros(3))
        self.log_radius = nn.Parameter(torch.tensor(math.log(0.3)))
        self.calls: list[dict] = []

    def reconstruct(self, images, cameras, sigma=None):
        self.calls.append({"sigma": None if sigma is None else sigma.detach().clone(), "views": images.shape[1], "images": images.detach().clone()})
        mean_color = images.mean(dim=(1, 3, 4))  # (B, 3)
        t = torch.zeros(images.shape[0], device=images.device) if sigma is None else 0.25 * torch.log(sigma.to(images.device))
        color = self.color_gain * mean_color + self.color_bias + self.sigma_weight * t[:, None]
        radius = self.log_radius.exp().expand(images.shape[0])
        return SphereCloud(color, radius)


class ToyEncoderConfig(FeedbackEncoderConfig):
    map_kind: str = "rgb"

    def output_slots(self) -> list[FeedbackSlot]:
        return list(SLOTS)


class ToyEncoder(FeedbackEncoder):
    """Average-pool to each slot's stride, then a 1x1 convolution; records the maps it sees."""

    def __init__(self, config: ToyEncoderConfig | None = None, record: bool = False):
        super().__init__()
        self.config = config or ToyEncoderConfig()
        self.convs = nn.ModuleList(nn.Linear(3, s.channels) for s in self.config.output_slots())
        self.record = record
        self.seen: list[torch.Tensor] = []

    def forward(self, maps):
        if self.record:
            self.seen.append(maps.detach().clone())
        B, V = maps.shape[:2]
        flat = maps.flatten(0, 1)
        out = []
        for slot, conv in zip(self.config.output_slots(), self.convs):
            pooled = F.avg_pool2d(flat, slot.stride) if slot.stride > 1 else flat
            out.append(conv(pooled.movedim(1, -1)).movedim(-1, 1).unflatten(0, (B, V)))
        return out


def toy_cameras(batch_size: int = 1, num_views: int = 4) -> Cameras:
    """An orbit of ``num_views`` cameras around the origin."""
    return Cameras.orbit([360.0 * i / num_views for i in range(num_views)], 0.0, radius=1.7, fov_deg=40.0, batch_size=batch_size)


class GaussianToyReconstructor(Reconstructor):
    """A reconstructor producing a real :class:`~ouroboros_core.gaussians.GaussianCloud`.

    ``count`` learnable Gaussians (positions, log scales, opacity logits); their colour is a
    learnable affine function of the input views' mean colour, so gradients reach both the
    parameters and (through the renders) the images.
    """

    def __init__(self, config: ToyReconstructorConfig | None = None, count: int = 32):
        super().__init__()
        self.config = config or ToyReconstructorConfig()
        g = torch.Generator().manual_seed(0)
        self.means = nn.Parameter(0.3 * torch.nn.functional.normalize(torch.randn(count, 3, generator=g), dim=-1))
        self.log_scales = nn.Parameter(torch.full((count, 3), math.log(0.08)))
        self.opacity_logits = nn.Parameter(torch.full((count,), 2.0))
        self.color_gain = nn.Parameter(torch.ones(3))
        self.color_bias = nn.Parameter(torch.zeros(3))
        self.calls: list[dict] = []

    def reconstruct(self, images, cameras, sigma=None):
        from ouroboros_core.gaussians import GaussianCloud

        self.calls.append({"sigma": None if sigma is None else sigma.detach().clone(), "views": images.shape[1]})
        B, N = images.shape[0], self.means.shape[0]
        color = (self.color_gain * images.mean(dim=(1, 3, 4)) + self.color_bias).clamp(0, 1)  # (B, 3)
        quats = torch.zeros(B, N, 4, device=images.device)
        quats[..., 0] = 1
        return GaussianCloud(
            means=self.means.expand(B, N, 3),
            quats=quats,
            scales=self.log_scales.exp().expand(B, N, 3),
            opacities=torch.sigmoid(self.opacity_logits).expand(B, N),
            colors=color[:, None, :].expand(B, N, 3),
        )
