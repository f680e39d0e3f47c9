"""Config and presets of the LGM reconstructor (torch-free: imported when plugins are listed).

The architecture fields are LGM's own options (``core/options.py`` of 3DTopia/LGM); the rest
choose between the official Ouroboros3D behaviour and the paper's:

- ``time_input``: how the noise level of the input views reaches the network.
  ``"official"``: LGM sees ``c_noise = 0.25 ln sigma`` (SVD's continuous timestep) and clean
  input is ``t = 0``, which is the same value as ``sigma = 1`` (what the published
  ``recon_model.pth`` was trained with). ``"paper"``: the same layers, but ``sigma`` is clamped
  to ``sigma_range`` (the range the model was trained on) and clean input gets its own token,
  ``t = clean_time``, a value outside ``0.25 ln sigma_range``, so "clean" can never be
  confused with a noise level; it sits below the range, on the small-sigma side, so an
  untrained model treats it like very little noise. ``"none"``: plain LGM, no time layers.
- ``rotation``: ``"official"`` reproduces the pre-fix LGM activation that the published
  ``recon_model.pth`` and LGM's ``model_fp16.safetensors`` were trained with: quaternions are
  L2-normalised across *all Gaussians* (dim 1 of ``(B, N, 4)``) and then used un-normalised
  by the renderer. ``"per_gaussian"`` normalises each quaternion (LGM's fix, the
  ``model_fp16_fixrot.safetensors`` weights).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from ouroboros_core.components import ReconstructorConfig

#: the official Ouroboros3D choice: views 0/2/4/6 of the 8-view orbit (azimuth 0/90/180/270)
OFFICIAL_INPUT_VIEWS = [0, 2, 4, 6]


class LGMConfig(ReconstructorConfig):
    """Everything that defines an LGM reconstructor (the module is a function of this)."""

    input_views: list[int] | None = Field(default_factory=lambda: list(OFFICIAL_INPUT_VIEWS))
    #: side of the square images the U-Net reads (views are resized with ``antialias``)
    input_size: int = Field(256, ge=8)
    #: antialiased (area-aware) bilinear downsampling; the official code resizes without it
    antialias: bool = True

    down_channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 1024)
    down_attention: tuple[bool, ...] = (False, False, False, True, True, True)
    mid_attention: bool = True
    up_channels: tuple[int, ...] = (1024, 1024, 512, 256, 128)
    up_attention: tuple[bool, ...] = (True, True, True, False, False)
    layers_per_block: int = Field(2, ge=1)
    attention_heads: int = Field(16, ge=1)
    norm_groups: int = Field(32, ge=1)

    time_input: Literal["official", "paper", "none"] = "paper"
    #: sinusoidal embedding width and the MLP width after it (Ouroboros3D: 128 and 512)
    time_proj_channels: int = Field(128, ge=2)
    time_embed_channels: int = Field(512, ge=1)
    #: paper mode: sigmas are clamped to this (trained) range before c_noise = 0.25 ln sigma
    sigma_range: tuple[float, float] = (0.002, 700.0)
    #: paper mode: the time value of clean input; must lie outside 0.25 ln sigma_range
    clean_time: float = -4.0

    rotation: Literal["official", "per_gaussian"] = "per_gaussian"
    #: positions are clamped to [-position_bound, position_bound]^3
    position_bound: float = Field(1.0, gt=0)
    #: "xyz": the network regresses world positions (LGM); "ray": each Gaussian sits on the
    #: ray of its splat pixel, at depth ``|camera centre| + out`` (pixel-aligned, as Splatter
    #: Image does), which a small model trained from scratch learns far faster
    position: Literal["xyz", "ray"] = "xyz"
    #: Gaussians below this opacity are dropped when writing a .ply (LGM: 0.005)
    ply_opacity_threshold: float = Field(0.005, ge=0, le=1)
    #: renderers cull Gaussians closer to the camera than this (LGM's rasterizer: z <= 0.2)
    near_plane: float = Field(0.2, gt=0)
    #: clamp of each splat's alpha at a pixel: LGM (and the official Ouroboros3D code) render
    #: with a fork of the original 3DGS rasterizer, min(0.99, ...) in its forward.cu; gsplat
    #: has 0.999 compiled in (see ouroboros_core.gaussians)
    alpha_max: float = Field(0.99, gt=0, le=1)

    @property
    def splat_size(self) -> int:
        """Side of each view's Gaussian grid: the U-Net's output resolution."""
        return self.input_size // 2 ** (len(self.down_channels) - 1) * 2 ** (len(self.up_channels) - 1)

    @property
    def time_conditioned(self) -> bool:
        return self.time_input != "none"

    @model_validator(mode="after")
    def _check_architecture(self) -> "LGMConfig":
        down, up = self.down_channels, self.up_channels
        if len(self.down_attention) != len(down):
            raise ValueError(f"down_attention needs {len(down)} entries (one per down_channels), got {len(self.down_attention)}")
        if len(self.up_attention) != len(up):
            raise ValueError(f"up_attention needs {len(up)} entries (one per up_channels), got {len(self.up_attention)}")
        if not 1 <= len(up) <= len(down):
            raise ValueError("up_channels needs between 1 and len(down_channels) entries")
        mirrored = tuple(reversed(down))[: len(up)]
        if tuple(up) != mirrored:
            raise ValueError(f"up_channels must mirror down_channels (the skips are concatenated): expected {mirrored}, got {tuple(up)}")
        if self.input_size % 2 ** (len(down) - 1):
            raise ValueError(f"input_size {self.input_size} must be divisible by 2^{len(down) - 1} (one halving per down level)")
        bad = sorted({c for c in (*down, *up) if c % self.norm_groups})
        if bad:
            raise ValueError(f"channels {bad} are not divisible by norm_groups={self.norm_groups}")
        attn_channels = [c for c, a in zip(down, self.down_attention) if a] + [c for c, a in zip(up, self.up_attention) if a]
        if self.mid_attention:
            attn_channels.append(down[-1])
        bad = sorted({c for c in attn_channels if c % self.attention_heads})
        if bad:
            raise ValueError(f"attention channels {bad} are not divisible by attention_heads={self.attention_heads}")
        if self.time_proj_channels % 2:
            raise ValueError("time_proj_channels must be even (cos and sin halves)")
        low, high = self.sigma_range
        if not 0 < low < high:
            raise ValueError(f"sigma_range must satisfy 0 < low < high, got {self.sigma_range}")
        if 0.25 * math.log(low) <= self.clean_time <= 0.25 * math.log(high):
            raise ValueError(
                f"clean_time {self.clean_time} lies inside the noisy range "
                f"[{0.25 * math.log(low):.3f}, {0.25 * math.log(high):.3f}] = 0.25 ln sigma_range; pick a value outside it"
            )
        if self.input_views is not None and len(self.input_views) < 1:
            raise ValueError("input_views must name at least one view (or be null for all)")
        return self


_BIG: dict[str, Any] = {
    "input_size": 256,
    "down_channels": (64, 128, 256, 512, 1024, 1024),
    "down_attention": (False, False, False, True, True, True),
    "mid_attention": True,
    "up_channels": (1024, 1024, 512, 256, 128),
    "up_attention": (True, True, True, False, False),
}

#: LGM's own camera setup (its training renders and default inference cameras): radius and
#: vertical field of view in degrees (see model.lgm_cameras)
LGM_RADIUS = 1.5
LGM_FOVY_DEG = 49.1

#: Presets (a recipe's ``config`` is applied on top). LGM's own configs are plain LGM
#: (``time_input: none``, fixed rotation): add ``time_input`` to condition them on time.
PRESETS: dict[str, dict[str, Any]] = {
    # LGM big, the layout of model_fp16_fixrot.safetensors: 415,042,848 parameters
    "big": {**_BIG, "time_input": "none", "rotation": "per_gaussian"},
    # the official Ouroboros3D reconstructor, the layout of recon_model.pth: 424,039,200 parameters
    "official": {**_BIG, "time_input": "official", "rotation": "official", "antialias": False},
    # LGM's "small" (= its defaults and "lrm"): 64x64 splats, 412,958,240 parameters
    "small": {
        **_BIG,
        "up_channels": (1024, 1024, 512, 256),
        "up_attention": (True, True, True, False),
        "time_input": "none",
        "rotation": "per_gaussian",
    },
    # LGM's own "tiny" config (59,743,360 parameters); its extra up_attention entry is dropped
    "lgm-tiny": {
        "input_size": 256,
        "down_channels": (32, 64, 128, 256, 512),
        "down_attention": (False, False, False, False, True),
        "mid_attention": True,
        "up_channels": (512, 256, 128),
        "up_attention": (True, False, False),
        "time_input": "none",
        "rotation": "per_gaussian",
    },
    # CPU tests: 64x64 input, 32x32 splats, about 377k parameters
    "tiny": {
        "alpha_max": 0.999,  # our own tiny models train and render with gsplat's clamp
        "input_size": 64,
        "down_channels": (16, 32, 32),
        "down_attention": (False, False, True),
        "mid_attention": True,
        "up_channels": (32, 32),
        "up_attention": (True, False),
        "attention_heads": 4,
        "norm_groups": 8,
        "time_proj_channels": 32,
        "time_embed_channels": 64,
        "time_input": "paper",
        "rotation": "per_gaussian",
    },
}
# the shipped trained tiny model (recipes/tiny.yaml): the "tiny" layout, twice as wide, at 32x32
# input (16x16 splats per view), Gaussians placed on their pixel rays
PRESETS["tiny32"] = {
    **PRESETS["tiny"],
    "input_size": 32,
    "down_channels": (32, 64, 128),
    "up_channels": (128, 64),
    "position": "ray",
}
