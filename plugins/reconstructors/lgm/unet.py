"""LGM's asymmetric U-Net with optional time conditioning (Ouroboros3D).

Parameter names and shapes match the published checkpoints exactly (LGM's
``model_fp16_fixrot.safetensors`` and Ouroboros3D's ``recon_model.pth``): attribute names
and registration order below are part of the weights format, so do not rename them.

Shapes: the U-Net works on ``(B*V, C, H, W)``, views of one object contiguous. Multi-view
attention folds the ``V`` views of each object back together, so ``V`` is whatever the caller
passes (``num_views``), never a constant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: LGM scales every residual sum by sqrt(1/2)
SKIP_SCALE = math.sqrt(0.5)


def timestep_embedding(t: torch.Tensor, channels: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``(B, channels)``: ``[cos(t w_k), sin(t w_k)]``, w_k = max_period^(-k/half).

    The same values as diffusers ``Timesteps(channels, flip_sin_to_cos=True,
    downscale_freq_shift=0)``, which the Ouroboros3D code uses. Computed in float32.
    """
    half = channels // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class ResnetBlock(nn.Module):
    """Pre-activation residual block; the time embedding is a per-channel bias after conv1."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, emb_channels: int | None):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-5)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        if emb_channels is not None:
            # zero-initialised so that adding time conditioning leaves a pretrained LGM unchanged
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
            nn.init.zeros_(self.emb_layers[1].weight)
            nn.init.zeros_(self.emb_layers[1].bias)
        else:
            self.emb_layers = None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb_layers is not None and emb is not None:
            h = h + self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.shortcut(x)) * SKIP_SCALE


class SelfAttention(nn.Module):
    """Multi-head self-attention: ``qkv`` (no bias) laid out [q|k|v] x heads x head_dim, ``proj``."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MVAttention(nn.Module):
    """Self-attention over every pixel of all views of one object (no positional encoding:
    the Plücker rays in the input carry position)."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-5)
        self.attn = SelfAttention(channels, heads)

    def forward(self, x: torch.Tensor, num_views: int) -> torch.Tensor:
        bv, c, h, w = x.shape
        b = bv // num_views
        # tokens ordered view, row, column
        tokens = self.norm(x).reshape(b, num_views, c, h, w).permute(0, 1, 3, 4, 2).reshape(b, num_views * h * w, c)
        out = self.attn(tokens).reshape(b, num_views, h, w, c).permute(0, 1, 4, 2, 3).reshape(bv, c, h, w)
        return (out + x) * SKIP_SCALE


def _attentions(enabled: bool, count: int, channels: int, heads: int, groups: int) -> nn.ModuleList:
    return nn.ModuleList([MVAttention(channels, heads, groups) for _ in range(count)] if enabled else [])


class DownBlock(nn.Module):
    """``layers`` ResNet blocks (each followed by attention when enabled), then an optional
    stride-2 conv. Every intermediate result is a skip for the up path."""

    def __init__(self, cin: int, cout: int, layers: int, downsample: bool, attention: bool, heads: int, groups: int, emb: int | None):
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups, emb) for i in range(layers)])
        self.attns = _attentions(attention, layers, cout, heads, groups)
        self.downsample = nn.Conv2d(cout, cout, 3, stride=2, padding=1) if downsample else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None, num_views: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, net in enumerate(self.nets):
            x = net(x, emb)
            if len(self.attns):
                x = self.attns[i](x, num_views)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """ResNet, attention, ResNet at the lowest resolution."""

    def __init__(self, channels: int, attention: bool, heads: int, groups: int, emb: int | None):
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(channels, channels, groups, emb) for _ in range(2)])
        self.attns = _attentions(attention, 1, channels, heads, groups)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None, num_views: int) -> torch.Tensor:
        x = self.nets[0](x, emb)
        if len(self.attns):
            x = self.attns[0](x, num_views)
        return self.nets[1](x, emb)


class UpBlock(nn.Module):
    """``layers`` ResNet blocks, each reading ``[current, newest skip]``; then an optional
    nearest x2 upsampling followed by a 3x3 conv."""

    def __init__(self, cin: int, skip_last: int, cout: int, layers: int, upsample: bool, attention: bool, heads: int, groups: int, emb: int | None):
        super().__init__()
        nets = []
        for i in range(layers):
            c_in = cin if i == 0 else cout
            c_skip = skip_last if i == layers - 1 else cout
            nets.append(ResnetBlock(c_in + c_skip, cout, groups, emb))
        self.nets = nn.ModuleList(nets)
        self.attns = _attentions(attention, layers, cout, heads, groups)
        self.upsample = nn.Conv2d(cout, cout, 3, padding=1) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor | None, num_views: int) -> torch.Tensor:
        for i, net in enumerate(self.nets):
            x = net(torch.cat([x, skips.pop()], dim=1), emb)
            if len(self.attns):
                x = self.attns[i](x, num_views)
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class UNet(nn.Module):
    """LGM's U-Net: ``(B*V, in, S, S)`` to ``(B*V, out, S', S')``; see ``LGMConfig`` for the
    channel/attention tuples. ``time_proj_channels=None`` builds plain LGM (no time layers)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        down_channels: tuple[int, ...],
        down_attention: tuple[bool, ...],
        mid_attention: bool,
        up_channels: tuple[int, ...],
        up_attention: tuple[bool, ...],
        layers_per_block: int,
        heads: int,
        groups: int,
        time_proj_channels: int | None,
        time_embed_channels: int,
    ):
        super().__init__()
        emb = time_embed_channels if time_proj_channels is not None else None
        self.time_proj_channels = time_proj_channels
        self.conv_in = nn.Conv2d(in_channels, down_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(
                down_channels[i - 1] if i > 0 else down_channels[0], cout, layers_per_block,
                downsample=i != len(down_channels) - 1, attention=down_attention[i], heads=heads, groups=groups, emb=emb,
            )
            for i, cout in enumerate(down_channels)
        )
        self.mid_block = MidBlock(down_channels[-1], mid_attention, heads, groups, emb)
        self.up_blocks = nn.ModuleList(
            UpBlock(
                up_channels[i - 1] if i > 0 else up_channels[0],
                down_channels[max(-2 - i, -len(down_channels))], cout, layers_per_block + 1,
                upsample=i != len(up_channels) - 1, attention=up_attention[i], heads=heads, groups=groups, emb=emb,
            )
            for i, cout in enumerate(up_channels)
        )
        self.norm_out = nn.GroupNorm(groups, up_channels[-1], eps=1e-5)
        self.conv_out = nn.Conv2d(up_channels[-1], out_channels, 3, padding=1)
        if emb is not None:
            self.time_embed = nn.Sequential(nn.Linear(time_proj_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        else:
            self.time_embed = None

    def forward(self, x: torch.Tensor, num_views: int, t: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B*V, in, H, W)``; ``t`` ``(B,)`` time values (ignored without time layers)."""
        emb = None
        if self.time_embed is not None:
            if t is None:
                raise ValueError("this U-Net is time-conditioned: pass t")
            weight = self.time_embed[0].weight
            emb = self.time_embed(timestep_embedding(t, self.time_proj_channels).to(weight.dtype))
            emb = emb.repeat_interleave(num_views, dim=0)  # one row per view, objects contiguous
        x = self.conv_in(x)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, emb, num_views)
            skips.extend(block_skips)
        x = self.mid_block(x, emb, num_views)
        for block in self.up_blocks:
            x = block(x, skips, emb, num_views)
        return self.conv_out(F.silu(self.norm_out(x)))
