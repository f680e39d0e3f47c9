"""The contracts every component implements. The sampler and trainer are written only
against these classes, so any generator/reconstructor/encoder pair can be combined.

Conventions (shared by every component; the camera conventions live in ``cameras.py``):

- Images crossing an interface are float ``(B, V, 3, H, W)`` in [0, 1]; alpha is separate,
  ``(B, V, 1, H, W)``.
- Noise levels are EDM sigmas ``(B,)`` everywhere. A component that wants another time input
  (``c_noise = 0.25 ln sigma`` for SVD) computes it itself.
- Feedback features are a list with one tensor per generator feedback slot, each
  ``(B, V, C_slot, H / stride, W / stride)``. Features of several encoders are summed
  slot by slot before they reach the generator.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cameras import Cameras
from .components import FeedbackSlot


@dataclass
class RenderOutput:
    """What a representation renders for a batch of cameras.

    rgb: ``(B, V, 3, H, W)`` composited on the background; alpha: ``(B, V, 1, H, W)``;
    depth: ``(B, V, 1, H, W)`` *expected* camera-space z (normalised by alpha, 0 where alpha
    is 0). ``accumulated_depth`` is the un-normalised sum of weights times z, the signal the
    official code's rasterizer returns.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    accumulated_depth: torch.Tensor | None = None


class Representation(abc.ABC):
    """A 3D result that renders into any cameras. Batched: one object per batch element."""

    #: the render outputs this representation provides
    renders: frozenset[str] = frozenset({"rgb", "alpha", "depth"})
    #: the file format ``generate`` saves it in
    file_suffix: str = ".ply"

    @abc.abstractmethod
    def render(
        self,
        cameras: Cameras,
        height: int,
        width: int,
        background: float | torch.Tensor = 1.0,
    ) -> RenderOutput:
        """Render every camera of ``cameras`` (batch B, V views)."""

    @abc.abstractmethod
    def save(self, path: str | Path, index: int = 0) -> Path:
        """Write batch element ``index``; the format is chosen by the file extension."""

    @property
    @abc.abstractmethod
    def batch_size(self) -> int: ...

    def tensors(self) -> dict[str, torch.Tensor]:
        """The floating-point data by name (``"vertices.0"`` for lists), which the sampler
        checks for NaN/Inf after every reconstruction. The default collects every tensor
        attribute and every list of tensors."""
        found: dict[str, torch.Tensor] = {}
        for name, value in vars(self).items():
            items = enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)]
            for i, item in items:
                if isinstance(item, torch.Tensor) and item.is_floating_point():
                    found[name if i is None else f"{name}.{i}"] = item
        return found

    def is_empty(self, index: int = 0) -> bool:
        """Whether batch element ``index`` holds nothing ``save`` would write (then ``generate``
        writes no 3D file and says so). Default: never."""
        return False


@dataclass
class GenerationContext:
    """What ``MultiViewGenerator.prepare`` returns: conditioning for one batch.

    Generators keep their own tensors in ``data``; the sampler only reads ``batch_size``,
    ``cameras`` and ``latent_shape``.
    """

    batch_size: int
    cameras: Cameras
    latent_shape: tuple[int, ...]  # (B, V, C, h, w)
    data: dict[str, Any]


class MultiViewGenerator(nn.Module, abc.ABC):
    """A multi-view diffusion model in EDM form.

    ``denoise`` returns the x0 prediction (preconditioned, guidance applied) so that the
    sampler and trainer never see a model's parameterisation.
    """

    config: Any
    #: EDM sigma_data of the latent space (1.0 for SVD's v-parameterisation)
    sigma_data: float = 1.0

    @property
    def num_views(self) -> int:
        return self.config.num_views

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def feedback_slots(self) -> list[FeedbackSlot]:
        return self.config.feedback_slots()

    @abc.abstractmethod
    def prepare(
        self,
        image: torch.Tensor,
        cameras: Cameras,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> GenerationContext:
        """Conditioning for a batch. ``image`` is ``(B, 3, H, W)`` in [0, 1] on white.

        Any randomness (noise augmentation of the condition) must come from ``generator`` so
        that the same seed gives the same outputs."""

    def initial_noise(self, context: GenerationContext, generator: torch.Generator | None = None) -> torch.Tensor:
        """Unit-variance noise of the latent shape; the sampler scales it to sigma_max."""
        p = next(self.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        dtype = p.dtype if p is not None else torch.float32
        noise = torch.randn(context.latent_shape, generator=generator, device=generator.device if generator is not None else device, dtype=torch.float32)
        return noise.to(device=device, dtype=dtype)

    @abc.abstractmethod
    def denoise(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: GenerationContext,
        feedback: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x0 prediction for noisy latents ``x`` ``(B, V, C, h, w)`` at ``sigma`` ``(B,)``."""

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, V, 3, H, W)`` in [0, 1] to latents ``(B, V, C, h, w)``."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, V', C, h, w)`` to images ``(B, V', 3, H, W)`` in [0, 1] (not clamped)."""

    def training_context(self, images: torch.Tensor, cameras: Cameras, generator: torch.Generator | None = None) -> GenerationContext:
        """Conditioning for a training batch (condition = view 0, with the model's training
        augmentation and conditioning dropout). Defaults to ``prepare(images[:, 0])``."""
        return self.prepare(images[:, 0], cameras)


class Reconstructor(nn.Module, abc.ABC):
    """Feed-forward 3D reconstruction from (some of) the generated views."""

    config: Any

    @property
    def input_views(self) -> list[int] | None:
        """Indices of the generator views it reads (``None``: all)."""
        return self.config.input_views

    @property
    def renders(self) -> frozenset[str]:
        return type(self.config).renders

    @abc.abstractmethod
    def reconstruct(
        self,
        images: torch.Tensor,
        cameras: Cameras,
        sigma: torch.Tensor | None = None,
    ) -> Representation:
        """``images`` ``(B, V_in, 3, H, W)`` in [0, 1] seen by ``cameras`` (B, V_in).

        ``sigma`` ``(B,)`` is the noise level of the x0 estimate the images came from;
        ``None`` means clean input (ground truth or final views).
        """


class FeedbackEncoder(nn.Module, abc.ABC):
    """Turns one kind of feedback map into features for the generator's slots."""

    config: Any

    @property
    def map_kind(self) -> str:
        return self.config.map_kind

    @abc.abstractmethod
    def forward(self, maps: torch.Tensor) -> list[torch.Tensor]:
        """``maps`` ``(B, V, 3, H, W)`` in [0, 1] to one ``(B, V, C, h, w)`` tensor per slot."""


def encode_feedback(encoders: "list[FeedbackEncoder]", maps: dict[str, torch.Tensor]) -> list[torch.Tensor] | None:
    """Every encoder's features for its map kind, summed slot by slot (``None`` without encoders)."""
    total: list[torch.Tensor] | None = None
    for encoder in encoders:
        feats = encoder(maps[encoder.map_kind])
        total = list(feats) if total is None else [a + b for a, b in zip(total, feats)]
    return total
