"""The SVD multi-view generator: diffusers' spatio-temporal UNet + temporal VAE + CLIP.

Views are SVD video frames. Composition only: the diffusers/transformers models are used
as they are, and the Ouroboros3D additions (Plücker camera features, feedback features)
enter through hooks (see :mod:`.injection`). The noise math is core's EDM v-prediction
preconditioning (:func:`ouroboros_core.edm.preconditioning`).

State-dict layout (what :meth:`SVDGenerator.state_dict` holds)::

    unet.*            diffusers UNetSpatioTemporalConditionModel names
    vae.*             AutoencoderKLTemporalDecoder (absent for the identity autoencoder)
    image_encoder.*   CLIPVisionModelWithProjection (absent without CLIP)
    image_tokens.*    ImageTokens (image_conditioning: tokens only)
    down_plucker.{i}.embed.{0,2}.*, mid_plucker.embed.*, up_plucker.{i}.embed.*

``unet.*`` and the Plücker keys are named as in the official ``mv_model_unet.pth``; its
``cond_encoder.{0,1}.*`` part belongs to the feedback encoders (RGB, CCM) and is dropped
here (see :mod:`.weights`).

Precision: CLIP and the VAE encoder never run under autocast (the official script encodes
the condition in fp32 before it enters fp16 autocast), and a VAE encoder cast to fp16 is
upcast to fp32 for the call when the VAE's config sets ``force_upcast`` (as diffusers' SVD
pipeline does); the UNet, the Plücker MLPs and the VAE decoder follow the caller's autocast.

Known numerical difference from the official code: the UNet gets ``c_noise`` in float32 and
diffusers casts its sinusoidal embedding to the UNet dtype afterwards, whereas the official
forward cast ``t`` to the sample dtype first; identical in fp32 and under autocast (fp32
weights, so the sample is fp32 in both), slightly different with modules cast to fp16.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ouroboros_core.cameras import Cameras
from ouroboros_core.edm import preconditioning
from ouroboros_core.errors import InputError, RecipeError
from ouroboros_core.interfaces import GenerationContext, MultiViewGenerator
from ouroboros_core.precision import no_autocast

from . import weights as svd_weights
from .camera import build_plucker_mlps, harmonic_encoding, plucker_field
from .config import SVDGeneratorConfig, harmonic_dim
from .image_tokens import ImageTokens
from .injection import UNetInjector, install_official_time_context


def build(config: SVDGeneratorConfig) -> "SVDGenerator":
    """Factory named by the ``svd`` ComponentSpec."""
    return SVDGenerator(config)


def _construct(cls: type, kwargs: dict[str, Any], key: str) -> Any:
    """``cls(**kwargs)`` with unknown keys reported against the recipe key path."""
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        raise RecipeError(
            f"unknown {cls.__name__} argument(s) {', '.join(unknown)}",
            where=f"config.{key}",
            hint=f"use constructor arguments of {cls.__name__}",
        )
    return cls(**kwargs)


class SVDGenerator(MultiViewGenerator):
    """Stable Video Diffusion as an N-view generator (see module docstring)."""

    sigma_data = 1.0

    def __init__(self, config: SVDGeneratorConfig):
        super().__init__()
        from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

        self.config = config
        self.unet = _construct(UNetSpatioTemporalConditionModel, config.unet, "unet")
        self.vae = None
        if config.autoencoder == "kl-temporal":
            self.vae = _construct(AutoencoderKLTemporalDecoder, config.vae, "vae")
        self.image_encoder = None
        if config.image_conditioning == "clip":
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

            self.image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**config.image_encoder))
        self.image_tokens = None
        if config.image_conditioning == "tokens":
            size = config.image_size // config.latent_stride
            self.image_tokens = ImageTokens(config.latent_channels, size, int(config.unet.get("cross_attention_dim", 1024)))
        if config.plucker:
            self.down_plucker, self.mid_plucker, self.up_plucker = build_plucker_mlps(
                config.plucker_channels,
                harmonic_dim(config.plucker_frequencies),
                zero_init_output=config.rays == "paper",
            )
        # the VAE and CLIP are frozen, as in the official training (only the UNet, the Plücker
        # MLPs and the feedback encoders learn); the trainer never trains a frozen parameter
        for frozen in (self.vae, self.image_encoder):
            if frozen is not None:
                frozen.requires_grad_(False)
        self.register_buffer("clip_mean", torch.tensor(config.clip_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("clip_std", torch.tensor(config.clip_std).view(1, 3, 1, 1), persistent=False)
        self._injector = UNetInjector(self.unet, config.feedback_placement, camera_inplace=config.rays == "official")
        if config.cfg_time_context == "official":
            self._injector.handles += install_official_time_context(self.unet)

    # ------------------------------------------------------------------ helpers
    @property
    def _device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    @property
    def _dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    def _randn(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        """Noise drawn on the generator's device, so a seeded CPU generator is device-independent."""
        dev = generator.device if generator is not None else self._device
        return torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).to(self._device)

    def _rand(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        dev = generator.device if generator is not None else self._device
        return torch.rand(shape, generator=generator, device=dev, dtype=torch.float32).to(self._device)

    def _condition_pixels(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] → [-1, 1] at ``image_size`` (bilinear, as the official code)."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise InputError(f"condition image must be (B, 3, H, W), got {tuple(image.shape)}")
        x = image.to(self._device, torch.float32) * 2 - 1
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x

    def _clip_embeds(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding ``(B, 1, D)`` of ``x`` in [-1, 1]; zeros without CLIP."""
        B = x.shape[0]
        if self.image_encoder is None:
            dim = int(self.config.unet.get("cross_attention_dim", 1024))
            return torch.zeros(B, 1, dim, device=self._device, dtype=self._dtype)
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
            _resize_with_antialiasing,
        )

        size = self.image_encoder.config.image_size
        with no_autocast(self._device):  # CLIP computes in its weights' dtype (see module docstring)
            pixels = _resize_with_antialiasing(x, (size, size))
            pixels = ((pixels + 1) / 2 - self.clip_mean) / self.clip_std
            enc_dtype = self.image_encoder.visual_projection.weight.dtype
            embeds = self.image_encoder(pixel_values=pixels.to(enc_dtype)).image_embeds
        return embeds.unsqueeze(1).to(self._dtype)

    @contextlib.contextmanager
    def _vae_encoder(self) -> Iterator[torch.dtype]:
        """The VAE encoder ready to run, yielding the dtype its input must have: autocast off,
        and an fp16 encoder (with ``quant_conv``) upcast to fp32 for the call when the VAE's
        config sets ``force_upcast`` (diffusers: the VAE must run in fp32), exactly where
        diffusers' SVD pipeline upcasts it (it decodes in fp16). SVD img2vid's VAE sets it."""
        parts = (self.vae.encoder, self.vae.quant_conv)
        stored = self.vae.encoder.conv_in.weight.dtype
        upcast = stored == torch.float16 and bool(self.vae.config.force_upcast)
        with no_autocast(self._device):
            if upcast:
                for part in parts:
                    part.float()
            try:
                yield torch.float32 if upcast else stored
            finally:
                if upcast:
                    for part in parts:
                        part.to(stored)

    def _vae_mode(self, x: torch.Tensor) -> torch.Tensor:
        """Unscaled latent (distribution mode) of ``x`` ``(N, 3, H, W)`` in [-1, 1] — SVD's
        conditioning latent; the pixels themselves for the identity autoencoder, folded into
        channels for the pixel-shuffle one."""
        if self.config.autoencoder == "pixel-shuffle":
            return F.pixel_unshuffle(x, self.config.pixel_shuffle_factor)
        if self.vae is None:
            return x
        with self._vae_encoder() as dtype:
            return self.vae.encode(x.to(dtype)).latent_dist.mode().float()

    def _vae_latent(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The VAE latent of ``x`` (unscaled): a posterior sample while training with
        ``train_latents: sample`` (drawn with ``generator``, else the global RNG), the mode
        otherwise (and always for the pixel-space autoencoders)."""
        if self.vae is None or not self.training or self.config.train_latents == "mode":
            return self._vae_mode(x)
        with self._vae_encoder() as dtype:
            return self.vae.encode(x.to(dtype)).latent_dist.sample(generator).float()

    def _camera_features(self, cameras: Cameras, h: int, w: int) -> list[torch.Tensor] | None:
        """Harmonic Plücker features at every UNet resolution, ``[(B, V, F, h/2^l, w/2^l)]``.

        Computed once per resolution per prepared batch, in fp32 even under a trainer's
        autocast (the official ``encode_plucker`` casts to fp32 too); the MLPs run at every
        denoise call.
        """
        if not self.config.plucker:
            return None
        levels = []
        with no_autocast(self._device):
            for level in range(len(self.config.block_channels)):
                rays = plucker_field(cameras, h >> level, w >> level, self.config.rays)
                levels.append(harmonic_encoding(rays, self.config.plucker_frequencies, dim=2))
        return levels

    def _check_cameras(self, cameras: Cameras, batch_size: int) -> Cameras:
        if cameras.batch_size not in (1, batch_size):
            raise InputError(f"cameras have batch {cameras.batch_size} but the images have batch {batch_size}")
        return cameras.repeat(batch_size).to(self._device, torch.float32)

    def _guidance(self, num_views: int, low: float, high: float) -> torch.Tensor | None:
        """Per-view linear ramp ``(V,)``; ``None`` when every scale is 1 (no unconditional pass)."""
        if low == 1.0 and high == 1.0:
            return None
        return torch.linspace(low, high, num_views, device=self._device, dtype=torch.float32)

    def _context(
        self,
        cameras: Cameras,
        embeds: torch.Tensor,
        cond_latent: torch.Tensor,
        noise_aug: torch.Tensor,
        guidance: torch.Tensor | None,
        token_latent: torch.Tensor | None = None,
    ) -> GenerationContext:
        B, V = embeds.shape[0], cameras.num_views
        C, h, w = cond_latent.shape[1:]
        time_ids = torch.stack(
            [
                torch.full_like(noise_aug, self.config.fps_id),
                torch.full_like(noise_aug, self.config.motion_bucket_id),
                noise_aug,
            ],
            -1,
        )
        data = {
            "image_embeds": embeds,
            "cond_latent": cond_latent,
            "added_time_ids": time_ids,
            "guidance": guidance,
            "camera_features": self._camera_features(cameras, h, w),
            # turned into tokens at every denoise call, where the projection gets its gradient
            "token_latent": token_latent if self.image_tokens is not None else None,
        }
        return GenerationContext(batch_size=B, cameras=cameras, latent_shape=(B, V, C, h, w), data=data)

    # ------------------------------------------------------------------ MultiViewGenerator
    @torch.no_grad()
    def prepare(
        self,
        image: torch.Tensor,
        cameras: Cameras,
        generator: torch.Generator | None = None,
        noise_aug_strength: float | None = None,
        guidance: tuple[float, float] | None = None,
    ) -> GenerationContext:
        """Conditioning for ``image`` ``(B, 3, H, W)`` in [0, 1] on white, seen by ``cameras``.

        CLIP sees the clean image; the concatenated latent is the (unscaled) VAE mode of the
        image plus ``N(0, 1) · noise_aug_strength`` in [-1, 1]. ``guidance`` (min, max)
        overrides the config's per-view ramp for this batch.
        """
        x = self._condition_pixels(image)
        B = x.shape[0]
        cameras = self._check_cameras(cameras, B)
        strength = self.config.noise_aug_strength if noise_aug_strength is None else float(noise_aug_strength)
        embeds = self._clip_embeds(x)
        noisy = x + strength * self._randn(tuple(x.shape), generator)
        cond_latent = self._vae_mode(noisy)
        low, high = guidance if guidance is not None else (self.config.guidance_min, self.config.guidance_max)
        ramp = self._guidance(cameras.num_views, float(low), float(high))
        noise_aug = torch.full((B,), strength, device=self._device)
        return self._context(cameras, embeds, cond_latent, noise_aug, ramp, token_latent=cond_latent)

    @torch.no_grad()
    def training_context(
        self, images: torch.Tensor, cameras: Cameras, generator: torch.Generator | None = None
    ) -> GenerationContext:
        """Conditioning for a training batch ``(B, V, 3, H, W)``: view 0 is the condition.

        Per sample: ``sigma_c ~ logN(train_noise_aug_log_mean, std²)`` noise on the
        condition (it is also the sample's noise-augmentation time id); CLIP and the latent
        both see the augmented image (the latent is a posterior sample drawn with
        ``generator`` when the module trains with ``train_latents: sample``); with ``r ~ U(0, 1)`` and ``p = cond_dropout``, CLIP is
        zeroed when ``r < 2p`` and the latent when ``p <= r < 3p``. No guidance. CLIP and the
        VAE are not trained, so this runs without gradients.
        """
        x = self._condition_pixels(images[:, 0])
        B = x.shape[0]
        cameras = self._check_cameras(cameras, B)
        cfg = self.config
        sigma_c = torch.exp(cfg.train_noise_aug_log_mean + cfg.train_noise_aug_log_std * self._randn((B,), generator))
        noisy = x + sigma_c.view(B, 1, 1, 1) * self._randn(tuple(x.shape), generator)
        embeds = self._clip_embeds(noisy)
        cond_latent = self._vae_latent(noisy, generator)
        r = self._rand((B,), generator)
        p = cfg.cond_dropout
        keep_clip = (r >= 2 * p).to(embeds.dtype).view(B, 1, 1)
        keep_latent = ~((r >= p) & (r < 3 * p))
        embeds = embeds * keep_clip
        # the image tokens stand in for CLIP, so they are dropped with it
        token_latent = cond_latent * keep_clip.to(cond_latent.dtype).view(B, 1, 1, 1)
        cond_latent = cond_latent * keep_latent.to(cond_latent.dtype).view(B, 1, 1, 1)
        return self._context(cameras, embeds, cond_latent, sigma_c, None, token_latent=token_latent)

    def denoise(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: GenerationContext,
        feedback: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Guided x0 for ``x`` ``(B, V, C, h, w)`` at EDM ``sigma`` ``(B,)`` (or a scalar).

        ``x0 = c_skip x + c_out F(c_in x ⊕ cond latent, 0.25 ln sigma)`` (v-prediction).
        With guidance, one batched pass holds [unconditional, conditional] (CLIP embedding
        and image latent zeroed; same cameras and feedback) and
        ``x0 = x0_u + g_v (x0_c - x0_u)`` with the per-view ramp ``g``.
        """
        data = context.data
        B, V = x.shape[:2]
        if tuple(x.shape) != tuple(context.latent_shape):
            raise ValueError(f"x has shape {tuple(x.shape)} but the context expects {tuple(context.latent_shape)}")
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float64).reshape(-1).expand(B)
        pc = preconditioning(sigma, self.sigma_data, "v")
        c_skip, c_out, c_in = (c.to(torch.float32).view(B, 1, 1, 1, 1) for c in (pc.c_skip, pc.c_out, pc.c_in))
        c_noise = pc.c_noise.to(torch.float32)

        guidance = data["guidance"]
        branches = 1 if guidance is None else 2
        dtype = self._dtype
        x_in = (c_in * x.float()).to(dtype)
        cond_lat = data["cond_latent"].to(dtype)[:, None].expand(B, V, *data["cond_latent"].shape[1:])
        sample = torch.cat([x_in, cond_lat], 2)
        embeds, time_ids = data["image_embeds"].to(dtype), data["added_time_ids"]
        if data["token_latent"] is not None:
            embeds = self.image_tokens(data["token_latent"].to(self.image_tokens.proj.weight.dtype)).to(dtype)
        if branches == 2:
            sample = torch.cat([torch.cat([x_in, torch.zeros_like(cond_lat)], 2), sample])
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
            time_ids, c_noise = time_ids.repeat(2, 1), c_noise.repeat(2)

        with self._injector.inject(self._injections(data, feedback, B, V, branches)):
            out = self.unet(sample, c_noise, encoder_hidden_states=embeds, added_time_ids=time_ids.to(dtype), return_dict=False)[0]
        out = out.float()
        if branches == 2:
            out_u, out_c = out.chunk(2)
            out = out_u + guidance.view(1, V, 1, 1, 1) * (out_c - out_u)
        return (c_skip * x.float() + c_out * out).to(x.dtype)

    def _injections(
        self, data: dict[str, Any], feedback: list[torch.Tensor] | None, B: int, V: int, branches: int
    ) -> dict[str, torch.Tensor]:
        """Tensors for every hook site, shaped ``(branches·B·V, C, h, w)``."""
        tensors: dict[str, torch.Tensor] = {}
        levels = data["camera_features"]
        if levels is not None:
            n = len(levels)
            mlp_dtype = self.mid_plucker.embed[0].weight.dtype
            for i, mlp in enumerate(self.down_plucker):
                tensors[f"camera.down{i}"] = mlp(levels[i].to(mlp_dtype))
            tensors["camera.mid"] = self.mid_plucker(levels[-1].to(mlp_dtype))
            for i, mlp in enumerate(self.up_plucker):
                tensors[f"camera.up{i}"] = mlp(levels[n - 1 - i].to(mlp_dtype))
        if feedback is not None:
            slots = self.feedback_slots
            if len(feedback) != len(slots):
                raise ValueError(f"feedback has {len(feedback)} tensors but the generator has {len(slots)} slots")
            for k, (feat, slot) in enumerate(zip(feedback, slots)):
                if feat.dim() != 5 or tuple(feat.shape[:3]) != (B, V, slot.channels):
                    raise ValueError(
                        f"feedback slot {slot.name} expects (B={B}, V={V}, C={slot.channels}, h, w), got {tuple(feat.shape)}"
                    )
                tensors[f"feedback{k}"] = feat.flatten(0, 1)
        if branches > 1:
            tensors = {k: torch.cat([t] * branches) for k, t in tensors.items()}
        return tensors

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, V, 3, H, W)`` in [0, 1] → latents ``(B, V, C, h, w)``: VAE mode × scaling factor
        (a posterior sample in train mode with ``train_latents: sample``; global RNG)."""
        B, V = images.shape[:2]
        x = images.flatten(0, 1).to(self._device, torch.float32) * 2 - 1
        z = self._vae_latent(x) * self.config.scaling_factor
        return z.reshape(B, V, *z.shape[1:])

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, V', C, h, w)`` → ``(B, V', 3, H, W)`` in [0, 1], not clamped.

        The temporal decoder sees the V' frames of one object together (``num_frames=V'``).
        """
        B, V = latents.shape[:2]
        if self.config.autoencoder == "pixel-shuffle":
            pixels = F.pixel_shuffle(latents.float().flatten(0, 1), self.config.pixel_shuffle_factor)
            return (pixels.reshape(B, V, *pixels.shape[1:]) + 1) / 2
        if self.vae is None:
            return (latents.float() + 1) / 2
        vae_dtype = self.vae.decoder.conv_in.weight.dtype
        frames = []
        for b in range(B):
            z = latents[b].to(self._device, vae_dtype) / self.config.scaling_factor
            frames.append(self.vae.decode(z, num_frames=V).sample.float())
        return (torch.stack(frames) + 1) / 2

    # ------------------------------------------------------------------ weights
    def convert_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a checkpoint's keys to this module's (see :func:`.weights.to_generator_keys`)."""
        return svd_weights.to_generator_keys(state_dict)

    def allowed_missing(self, state_dict: Any) -> set[str]:
        """VAE / CLIP keys may be absent when the file holds none of them (they come from the base)."""
        return svd_weights.base_keys_missing(self.state_dict().keys(), state_dict.keys())

    def compile_targets(self) -> list[nn.Module]:
        """What ``compile: true`` compiles: the UNet and the VAE (the hot loops); the hooks
        on the UNet blocks stay in place."""
        return [m for m in (self.unet, self.vae) if m is not None]

    def load_weights(self, source: str) -> None:
        """Load weights from a diffusers base (folder or hub id), or a checkpoint file.

        See :func:`.weights.load_generator_weights` for the accepted sources.
        """
        svd_weights.load_generator_weights(self, source)

    def save_pretrained(self, folder: str) -> None:
        """Write a folder that :meth:`load_weights` reads back (diffusers layout + ``camera.safetensors``)."""
        svd_weights.save_generator(self, folder)
