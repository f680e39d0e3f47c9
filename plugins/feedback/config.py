"""Configuration of the T2I-Adapter-style feedback encoder (torch-free)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ouroboros_core.components import FeedbackEncoderConfig, FeedbackSlot

#: the official checkpoint keeps the RGB adapter at cond_encoder.0 and the CCM one at cond_encoder.1
OFFICIAL_PREFIXES: dict[str, str] = {"rgb": "cond_encoder.0.", "ccm": "cond_encoder.1."}


class AdapterConfig(FeedbackEncoderConfig):
    """A feedback encoder for one map kind: PixelUnshuffle + conv + residual stages.

    Scale ``i`` has ``channels[i]`` channels at stride ``downscale · 2^i`` of the map, which
    must match the generator's feedback slots (full-size SVD: 320/640/1280/1280 at
    8/16/32/64).
    """

    map_kind: str = "rgb"
    #: channels of the input map (3 for RGB and CCM)
    in_channels: int = Field(3, ge=1)
    #: PixelUnshuffle factor = the generator's latent stride (8 for the SVD VAE, 1 in pixel space)
    downscale: int = Field(8, ge=1)
    channels: list[int] = Field(default_factory=lambda: [320, 640, 1280, 1280], min_length=1)
    #: residual blocks per scale (official: 3)
    num_res_blocks: int = Field(3, ge=1)
    #: paper mode: a zero-initialised 1x1 output projection per scale (``out_proj.{i}``), so
    #: the encoder contributes exactly nothing at initialisation; False is the official
    #: structure, whose features are non-zero from the start
    zero_init_outputs: bool = False
    #: key prefix of this encoder in a combined checkpoint such as the published
    #: mv_model_unet.pth; ``None``: ``cond_encoder.0.`` for rgb, ``cond_encoder.1.`` for ccm
    checkpoint_prefix: str | None = None

    def output_slots(self) -> list[FeedbackSlot]:
        return [FeedbackSlot(name=f"scale{i}", channels=c, stride=self.downscale * 2**i) for i, c in enumerate(self.channels)]

    def official_prefix(self) -> str | None:
        """Where this encoder's keys live in an official-format checkpoint."""
        return self.checkpoint_prefix or OFFICIAL_PREFIXES.get(self.map_kind)

    @model_validator(mode="after")
    def _check_prefix(self) -> "AdapterConfig":
        if self.checkpoint_prefix is not None and not self.checkpoint_prefix.endswith("."):
            raise ValueError(f"checkpoint_prefix must end with '.', got {self.checkpoint_prefix!r}")
        return self


_TINY: dict[str, Any] = {"channels": [32, 64], "num_res_blocks": 1}

PRESETS: dict[str, dict[str, Any]] = {
    # the published adapters' structure (T2I-Adapter-XL as configured by the official code)
    "default": {},
    "official": {"zero_init_outputs": False},
    # new training: the encoder starts as an exact no-op
    "paper": {"zero_init_outputs": True},
    # match the svd generator's tiny presets (slots 32@8, 64@16)
    "tiny": {**_TINY},
    "tiny-paper": {**_TINY, "zero_init_outputs": True},
    # match svd's tiny32 preset (slots 32@2, 64@4, 64@8), starting as an exact no-op
    "tiny32": {"channels": [32, 64, 64], "num_res_blocks": 1, "downscale": 2, "zero_init_outputs": True},
    # match svd's tiny-pixel preset (slots 32@1, 64@2)
    "tiny-pixel": {**_TINY, "downscale": 1},
}
