"""The condition image as cross-attention tokens, for SVD generators without CLIP.

SVD hands the condition image to the UNet twice: as a latent concatenated to every frame, and
as a CLIP embedding that every cross-attention layer reads. The concatenated latent is
pixel-aligned: it helps the frame that shows the input view and tells the others where the
object is, but a convolution cannot carry a colour from where it sits in the input to where
it sits in another view. CLIP is the path that can. A model trained from scratch without CLIP
(the tiny presets) loses it; measured on the shipped tiny model, the generator then ignored its
input's colours (README, "The tiny model"). :class:`ImageTokens` is that path at toy scale: each
pixel of the condition latent becomes one token (a learned linear map of its channels plus a
learned position embedding), so cross-attention can fetch any part of the input from any
view.
"""

from __future__ import annotations

import torch
from torch import nn


class ImageTokens(nn.Module):
    """``(B, C, h, w)`` condition latent → ``(B, h·w, dim)`` cross-attention tokens."""

    def __init__(self, channels: int, size: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(channels, dim)
        self.position = nn.Parameter(torch.randn(1, size * size, dim) * 0.02)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(latent.flatten(2).transpose(1, 2))
        if tokens.shape[1] != self.position.shape[1]:
            raise ValueError(f"condition latent has {tokens.shape[1]} pixels, the position embedding {self.position.shape[1]}")
        return tokens + self.position
