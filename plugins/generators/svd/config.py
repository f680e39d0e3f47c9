"""Configuration of the SVD multi-view generator (torch-free: imported by the entry module).

The config describes the whole module: the three diffusers/transformers sub-model configs
(UNet, temporal VAE, CLIP image encoder) as the keyword arguments their constructors take,
plus the Ouroboros3D additions (Plücker camera MLPs, feedback placement) and the
conditioning constants. The class defaults are the full-size reference model
(``stabilityai/stable-video-diffusion-img2vid`` + the official Plücker MLPs) in paper mode;
presets switch to the official compatibility mode or to tiny sizes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ouroboros_core.components import FeedbackSlot, GeneratorConfig

#: UNet of stabilityai/stable-video-diffusion-img2vid (unet/config.json, shape-relevant keys).
SVD_UNET: dict[str, Any] = {
    "sample_size": 96,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ],
    "up_block_types": [
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    ],
    "block_out_channels": [320, 640, 1280, 1280],
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "num_attention_heads": [5, 10, 20, 20],
    "num_frames": 14,
}

#: Temporal-decoder VAE of SVD img2vid (vae/config.json).
SVD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 768,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}

#: CLIP ViT-H/14 image encoder of SVD img2vid (image_encoder/config.json).
SVD_CLIP: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 1024,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}

#: CLIP's pixel normalisation (SVD's feature_extractor/preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SVD_HUB_ID = "stabilityai/stable-video-diffusion-img2vid"

def harmonic_dim(num_frequencies: int, input_dim: int = 6) -> int:
    """Width of the Plücker MLP input: sin and cos per frequency plus the raw 6-D input
    (78 for the official 6 frequencies)."""
    return input_dim * (2 * num_frequencies + 1)


class SVDGeneratorConfig(GeneratorConfig):
    """Everything that defines an SVD multi-view generator.

    Views are SVD video frames: ``num_views`` frames of ``image_size``² pixels.
    """

    # ------------------------------------------------------------------ sub-models
    #: keyword arguments of diffusers' UNetSpatioTemporalConditionModel
    unet: dict[str, Any] = Field(default_factory=lambda: dict(SVD_UNET))
    #: "kl-temporal": diffusers' AutoencoderKLTemporalDecoder (configured by ``vae``);
    #: "identity": pixel-space diffusion (latents are the images in [-1, 1]);
    #: "pixel-shuffle": pixel space folded into channels (``pixel_unshuffle`` by
    #: ``pixel_shuffle_factor``: 3·f² channels at 1/f of the size), lossless and parameter-free,
    #: so the UNet runs at a smaller resolution (a patchified pixel-space model)
    autoencoder: Literal["kl-temporal", "identity", "pixel-shuffle"] = "kl-temporal"
    pixel_shuffle_factor: int = Field(2, ge=1)
    #: keyword arguments of AutoencoderKLTemporalDecoder (ignored for "identity")
    vae: dict[str, Any] = Field(default_factory=lambda: dict(SVD_VAE))
    #: "clip": CLIP image embedding for cross-attention + concatenated image latent (SVD);
    #: "concat": only the concatenated image latent (cross-attention sees zeros);
    #: "tokens": the concatenated latent, and its pixels as cross-attention tokens (a learned
    #: projection + position embedding; see image_tokens.py): CLIP's global path for models
    #: without CLIP
    image_conditioning: Literal["clip", "concat", "tokens"] = "clip"
    #: keyword arguments of transformers' CLIPVisionConfig (used by "clip" only)
    image_encoder: dict[str, Any] = Field(default_factory=lambda: dict(SVD_CLIP))
    clip_mean: tuple[float, float, float] = CLIP_MEAN
    clip_std: tuple[float, float, float] = CLIP_STD

    # ------------------------------------------------------------------ conditioning
    #: added time ids [fps id, motion bucket id, noise augmentation] (official: 6, 127, 0.02)
    fps_id: float = 6.0
    motion_bucket_id: float = 127.0
    #: std of the Gaussian noise added to the condition image in [-1, 1] at inference
    noise_aug_strength: float = Field(0.02, ge=0)
    #: per-view linear classifier-free-guidance ramp from view 0 to the last view
    guidance_min: float = 1.0
    guidance_max: float = 3.0
    #: training augmentation: sigma_c ~ logN(mean, std²) per sample (official: -3.0, 0.5)
    train_noise_aug_log_mean: float = -3.0
    train_noise_aug_log_std: float = Field(0.5, ge=0)
    #: training conditioning dropout p: with r ~ U(0,1) per sample, CLIP is dropped when
    #: r < 2p and the image latent when p <= r < 3p (official p = 0.1)
    cond_dropout: float = Field(0.1, ge=0, le=1 / 3)
    #: VAE latents while training (module in train mode), for the diffusion target and the
    #: condition latent: "sample" draws from the posterior (the official trainer's
    #: ``latent_dist.sample()``), "mode" takes its mode; inference always uses the mode
    train_latents: Literal["sample", "mode"] = "sample"

    # ------------------------------------------------------------------ Ouroboros3D additions
    #: add Plücker camera features before every down, mid and up block
    plucker: bool = True
    #: "official": the official ray computation (transposed grid, E^T, no translation) added
    #: in place, so the stored skip tensors carry it too; "paper": correct rays
    #: (ouroboros_core.cameras.plucker_rays), out-of-place add, zero-initialised MLP outputs
    rays: Literal["official", "paper"] = "paper"
    #: harmonic frequencies 1, 2, ..., 2^(n-1) (no pi); 6 gives the official 78-D input
    plucker_frequencies: int = Field(6, ge=0)
    #: where feedback features enter the UNet (see injection.py):
    #: "official": inside down blocks 0..n-2 before the downsampler, last scale on the mid
    #: output; "paper": after the last layer of every down block (before its last skip is
    #: stored); "none": the generator takes no feedback
    feedback_placement: Literal["official", "paper", "none"] = "paper"
    #: cross-attention context of the temporal (cross-view) transformer blocks when one UNet
    #: call holds several batch elements (the CFG pair [unconditional, conditional], or
    #: several objects): "correct": every element reads its own image embedding (diffusers
    #: >= 0.30); "official": diffusers 0.25.0's ordering, which the official code ran on,
    #: where flat row k of batch·(h·w) rows reads element k mod batch (see
    #: injection.OfficialTimeContext). Batch-1 calls are identical either way.
    cfg_time_context: Literal["official", "correct"] = "correct"

    # ------------------------------------------------------------------ weights
    #: diffusers folder or hub id (``unet/``, ``vae/``, ``image_encoder/``) loaded before a
    #: flat checkpoint that lacks the VAE/CLIP (e.g. the published ``mv_model_unet.pth``)
    base_weights: str | None = None
    #: diffusers weight variant of the base ("fp16" for SVD img2vid; None: full precision files)
    variant: str | None = "fp16"

    def weights_sources(self) -> list[str]:
        return [self.base_weights] if self.base_weights else []

    # ------------------------------------------------------------------ derived values
    @property
    def latent_channels(self) -> int:
        if self.autoencoder == "pixel-shuffle":
            return 3 * self.pixel_shuffle_factor**2
        return 3 if self.autoencoder == "identity" else int(self.vae.get("latent_channels", 4))

    @property
    def latent_stride(self) -> int:
        """Image pixels per latent pixel (8 for the SVD VAE, 1 in pixel space)."""
        if self.autoencoder == "identity":
            return 1
        if self.autoencoder == "pixel-shuffle":
            return self.pixel_shuffle_factor
        return 2 ** (len(self.vae.get("block_out_channels", [64])) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.latent_stride

    @property
    def block_channels(self) -> list[int]:
        return [int(c) for c in self.unet.get("block_out_channels", SVD_UNET["block_out_channels"])]

    @property
    def plucker_channels(self) -> dict[str, list[int]]:
        """Width of each Plücker MLP: the input channels of each down block, the mid block
        and each up block (full size: down 320/320/640/1280, mid 1280, up 1280/1280/1280/640)."""
        ch = self.block_channels
        down = [ch[0]] + ch[:-1]
        up = list(reversed(ch))
        up = [up[0]] + up[:-1]
        return {"down": down, "mid": [ch[-1]], "up": up}

    @property
    def scaling_factor(self) -> float:
        return 1.0 if self.autoencoder != "kl-temporal" else float(self.vae.get("scaling_factor", 0.18215))

    def decoder_mixes_views(self) -> bool:
        """SVD's temporal VAE decoder mixes the frames it decodes together."""
        return self.autoencoder == "kl-temporal"

    def feedback_slots(self) -> list[FeedbackSlot]:
        """One slot per UNet resolution: stride latent_stride·2^i with the block's channels
        (full size: 320@8, 640@16, 1280@32, 1280@64)."""
        if self.feedback_placement == "none":
            return []
        return [
            FeedbackSlot(name=f"scale{i}", channels=c, stride=self.latent_stride * 2**i)
            for i, c in enumerate(self.block_channels)
        ]

    @model_validator(mode="after")
    def _check_consistency(self) -> "SVDGeneratorConfig":
        """Catch config combinations that would only fail deep inside a forward pass."""
        lc = self.latent_channels
        in_ch = int(self.unet.get("in_channels", 8))
        out_ch = int(self.unet.get("out_channels", 4))
        if in_ch != 2 * lc or out_ch != lc:
            raise ValueError(
                f"unet.in_channels/out_channels must be {2 * lc}/{lc} for {lc} latent channels "
                f"(noisy latent + concatenated image latent), got {in_ch}/{out_ch}"
            )
        time_dim = int(self.unet.get("addition_time_embed_dim", 256))
        proj_dim = int(self.unet.get("projection_class_embeddings_input_dim", 768))
        if proj_dim != 3 * time_dim:
            raise ValueError(
                "unet.projection_class_embeddings_input_dim must be 3 x addition_time_embed_dim "
                f"(three added time ids), got {proj_dim} vs {time_dim}"
            )
        if self.image_conditioning == "clip":
            cross = int(self.unet.get("cross_attention_dim", 1024))
            clip_dim = int(self.image_encoder.get("projection_dim", 512))
            if cross != clip_dim:
                raise ValueError(
                    f"unet.cross_attention_dim ({cross}) must equal image_encoder.projection_dim ({clip_dim})"
                )
        factor = self.latent_stride * 2 ** (len(self.block_channels) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size must be a multiple of {factor} for this UNet/VAE, got {self.image_size}")
        return self


# ---------------------------------------------------------------------- presets
_TINY_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
    "block_out_channels": [32, 64],
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 24,
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "num_attention_heads": [2, 4],
    "num_frames": 8,
}
_TINY_VAE: dict[str, Any] = {
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
_TINY_CLIP: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
}
_OFFICIAL_MODES: dict[str, Any] = {"rays": "official", "feedback_placement": "official", "cfg_time_context": "official"}

PRESETS: dict[str, dict[str, Any]] = {
    # full-size SVD img2vid + Ouroboros3D additions, paper behaviour (= the class defaults)
    "default": {},
    # reproduces the official code, for the published mv_model_unet.pth
    "official": {**_OFFICIAL_MODES, "base_weights": SVD_HUB_ID},
    # tiny random models for CPU tests and the tiny recipe: 32² images, 4x4 latents (a recipe
    # may raise image_size to any multiple of 16)
    "tiny": {
        "image_size": 32,
        "unet": _TINY_UNET,
        "vae": _TINY_VAE,
        "image_encoder": _TINY_CLIP,
        "variant": None,
    },
    "tiny-official": {
        "image_size": 32,
        "unet": _TINY_UNET,
        "vae": _TINY_VAE,
        "image_encoder": _TINY_CLIP,
        "variant": None,
        **_OFFICIAL_MODES,
    },
    # the shipped trained tiny model (recipes/tiny.yaml): 32² pixels folded 2x2 into 12
    # channels, no CLIP, three UNet levels (16², 8², 4²), spatial + temporal (cross-view)
    # attention on the upper two
    "tiny32": {
        "image_size": 32,
        "autoencoder": "pixel-shuffle",
        "pixel_shuffle_factor": 2,
        "image_conditioning": "concat",
        "unet": {
            "sample_size": 16,
            "in_channels": 24,
            "out_channels": 12,
            "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
            "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
            "block_out_channels": [32, 64, 64],
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 24,
            "layers_per_block": 1,
            "cross_attention_dim": 32,
            "num_attention_heads": [1, 2, 2],
            "num_frames": 8,
        },
        "variant": None,
    },
    # tiny pixel-space model without CLIP: 16² images diffused directly
    "tiny-pixel": {
        "image_size": 16,
        "autoencoder": "identity",
        "image_conditioning": "concat",
        "unet": {**_TINY_UNET, "in_channels": 6, "out_channels": 3},
        "variant": None,
    },
}
