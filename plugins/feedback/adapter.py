"""T2I-Adapter-style feedback encoder (the official Ouroboros3D ``Adapter_XL`` structure).

``PixelUnshuffle(downscale)`` → ``conv_in`` (3x3) → ``len(channels)`` stages of
``num_res_blocks`` residual blocks; the first block of every later stage average-pools by 2
and, when the width changes, projects with a 1x1 ``in_conv``. A residual block is
``x + block2(relu(block1(x)))`` (3x3 then 1x1) with ``block2`` zero-initialised, so every
block starts as the identity. The output of each stage is one feature scale.

State-dict names are the official ones (``conv_in``, ``body.N.block1``, ``body.N.block2``,
``body.N.in_conv``); at 3 input channels, downscale 8 and channels 320/640/1280/1280 with 3
blocks per stage the encoder has 115,264,320 parameters. ``zero_init_outputs`` adds
zero-initialised 1x1 projections ``out_proj.{i}`` per scale (paper mode).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ouroboros_core.errors import InputError, WeightsError
from ouroboros_core.interfaces import FeedbackEncoder
from ouroboros_core.weights import load_file, resolve_weights

from .config import AdapterConfig

#: the published combined checkpoint (generator + both adapters)
OFFICIAL_FILENAME = "mv_model_unet.pth"


def build(config: AdapterConfig) -> "AdapterEncoder":
    """Factory named by the ``adapter`` ComponentSpec."""
    return AdapterEncoder(config)


class ResidualBlock(nn.Module):
    """Optional 2x average-pool and 1x1 width change, then ``x + block2(relu(block1(x)))``."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool):
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2) if downsample else None
        self.in_conv = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.block1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(out_channels, out_channels, 1)
        nn.init.zeros_(self.block2.weight)
        nn.init.zeros_(self.block2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(self.act(self.block1(x)))


class AdapterEncoder(FeedbackEncoder):
    """Feedback maps ``(B, V, C_in, H, W)`` → one ``(B, V, C_i, H / s_i, W / s_i)`` per scale."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        ch = config.channels
        self.unshuffle = nn.PixelUnshuffle(config.downscale)
        self.conv_in = nn.Conv2d(config.in_channels * config.downscale**2, ch[0], 3, padding=1)
        blocks = []
        for i, c in enumerate(ch):
            for j in range(config.num_res_blocks):
                first_of_later_stage = j == 0 and i > 0
                blocks.append(ResidualBlock(ch[i - 1] if first_of_later_stage else c, c, downsample=first_of_later_stage))
        self.body = nn.ModuleList(blocks)
        self.out_proj = None
        if config.zero_init_outputs:
            self.out_proj = nn.ModuleList(nn.Conv2d(c, c, 1) for c in ch)
            for conv in self.out_proj:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def forward(self, maps: torch.Tensor) -> list[torch.Tensor]:
        """Encode every view independently (views are folded into the batch)."""
        if maps.dim() != 5 or maps.shape[2] != self.config.in_channels:
            raise InputError(
                f"{self.config.map_kind} feedback maps must be (B, V, {self.config.in_channels}, H, W), got {tuple(maps.shape)}"
            )
        B, V, _, H, W = maps.shape
        factor = self.config.downscale * 2 ** (len(self.config.channels) - 1)
        if H % factor or W % factor:
            raise InputError(f"{self.config.map_kind} feedback maps of {H}x{W} are not divisible by {factor}")
        x = self.conv_in(self.unshuffle(maps.flatten(0, 1).to(self.conv_in.weight.dtype)))
        features = []
        n = self.config.num_res_blocks
        for i in range(len(self.config.channels)):
            for block in self.body[i * n : (i + 1) * n]:
                x = block(x)
            feat = self.out_proj[i](x) if self.out_proj is not None else x
            features.append(feat.reshape(B, V, *feat.shape[1:]))
        return features

    # ------------------------------------------------------------------ weights
    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keep this encoder's part of an official combined checkpoint, prefix stripped.

        A file with ``cond_encoder.*`` keys is the official layout: only the keys under
        :meth:`AdapterConfig.official_prefix` are kept (``cond_encoder.0.`` for rgb,
        ``cond_encoder.1.`` for ccm). Any other file is taken as this encoder's own keys.
        """
        if not any(k.startswith("cond_encoder.") for k in state_dict):
            return state_dict
        prefix = self.config.official_prefix()
        if prefix is None:
            raise WeightsError(
                f"the checkpoint holds official cond_encoder.* weights but map kind {self.config.map_kind!r} has no official slot",
                hint="set config.checkpoint_prefix (e.g. 'cond_encoder.0.')",
            )
        return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}

    def allowed_missing(self, state_dict: Any) -> set[str]:
        """Zero-initialised output projections may be absent (published adapters have none)."""
        if self.out_proj is None or any(k.startswith("out_proj.") for k in state_dict):
            return set()
        return {k for k in self.state_dict() if k.startswith("out_proj.")}

    def load_weights(self, source: str) -> None:
        """Strictly load a file (local, folder, or ``owner/name[:file]`` on the hub; the
        default file name is the published ``mv_model_unet.pth``)."""
        load_file(self, resolve_weights(source, default_filename=OFFICIAL_FILENAME))
